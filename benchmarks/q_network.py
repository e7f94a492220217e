"""Where q's time goes at the converged comparison's sizes: its network over
the target (the BiLSTM, or ``--inference-network transformer``'s one
self-attention layer) and its scores against the annotations, forward plus
backward, median ms.

    python benchmarks/q_network.py --json benchmarks/results/q-network.json

The MLP score is timed three ways: the formula in one (B, N, T, A) tensor,
``AttentionScorer`` (pieces of query rows, v as a matrix-vector product),
and the pieces with v as a Linear of output size 1; then the bilinear
(``general``) score, q's ``--inference-score general``.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools.experiments import median_ms, write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=15)
    parser.add_argument("--embed", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128, help="q's BiLSTM units per direction")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json")
    opts = parser.parse_args(argv)

    import torch
    from fairseq.data import Dictionary

    from fairseq_varattn.models.inference_network import InferenceNetwork, TransformerInferenceNetwork
    from fairseq_varattn.modules.scorer import AttentionScorer

    torch.manual_seed(0)
    bsz, n, t, width = opts.batch, opts.tgt_len, opts.src_len, 2 * opts.hidden
    d = Dictionary()
    for i in range(8000):
        d.add_symbol(f"w{i}")
    q = InferenceNetwork(d, opts.embed, opts.hidden, width, score="mlp", dropout=0.3)
    q_attn = TransformerInferenceNetwork(d, opts.embed, width, heads=4, score="general", dropout=0.3)
    target = torch.randint(d.nspecial, len(d), (bsz, n))
    enc = torch.randn(bsz, t, width)
    g = torch.randn(bsz, n, width)
    mlp = AttentionScorer(width, width, kind="mlp")
    general = AttentionScorer(width, width, kind="general")

    def one_tensor():
        hidden = torch.tanh(mlp.query_proj(g).unsqueeze(2) + mlp.key_proj(enc).unsqueeze(1))
        return mlp.v(hidden).squeeze(-1)

    def pieces_linear():
        projected, prepared = mlp.query_proj(g), mlp.key_proj(enc)
        rows = max(1, (1 << 21) // prepared.numel())
        parts = [
            mlp.v(torch.tanh(p.unsqueeze(2) + prepared.unsqueeze(1))).squeeze(-1) for p in projected.split(rows, 1)
        ]
        return torch.cat(parts, 1)

    parts = {
        "BiLSTM over the target": lambda: q.encode_target(target),
        "self-attention layer over the target": lambda: q_attn.encode_target(target),
        "mlp score, one tensor": one_tensor,
        "mlp score, pieces, v as a Linear": pieces_linear,
        "mlp score, AttentionScorer": lambda: mlp(g, mlp.prepare(enc)),
        "general score, AttentionScorer": lambda: general(g, general.prepare(enc)),
    }
    results = {}
    for name, forward in parts.items():
        results[name] = round(median_ms(lambda: forward().sum().backward(), opts.repeats), 1)
    print(f"forward + backward, median ms of {opts.repeats} (B={bsz}, N={n}, T={t}, A={width})")
    print("| part | ms |\n|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms} |")
    if opts.json:
        fields = {"threads": torch.get_num_threads(), "ms_forward_backward": results}
        write_result(opts.json, "benchmarks/q_network.py", argv if argv is not None else sys.argv[1:], fields, REPO)


if __name__ == "__main__":
    main()

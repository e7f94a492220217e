"""What one beam-search step of the factored layer's mixture costs, part by
part, against the memory traffic it cannot avoid: the two products with
exp(b) (the normalisers' z = E p^T and the mixture c E, docs/design.md,
"Generation") in each layout torch offers, the same products a few
sentences at a time, one read of exp(b) (the bandwidth bound), and the
passes over the (rows, V) logits that soft attention's log-softmax is
measured against.

    python benchmarks/mixture_products.py --threads 1 --json benchmarks/results/mixture-products.json

Sizes default to the converged comparison's beam search as
``benchmarks/speed.py --generate`` measures it: 64 sentences of
15 source tokens, beam 5, vocabulary 8004.  Synthetic tensors: only shapes
matter here.  Runs under the default allocator: every tensor at these sizes
is below 32 MB, the most glibc's dynamic mmap threshold rises to once the
warm-up call has freed them, so the timed calls reuse heap pages.
"""

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from varattn_tools.experiments import median_ms, write_result  # noqa: E402


def chunked(E, p, c, out, step):
    def run():
        for first in range(0, E.size(0), step):
            part = slice(first, first + step)
            torch.bmm(E[part], p[part].transpose(1, 2))
            torch.bmm(c[part], E[part], out=out[part])

    return run


def measure(sentences, src_len, vocab, beam, repeats):
    g = torch.Generator().manual_seed(0)
    E = torch.rand(sentences, src_len, vocab, generator=g)  # exp(b - row max), one per sentence
    Et = E.transpose(1, 2).contiguous()
    p = torch.rand(sentences, beam, vocab, generator=g)  # the hypotheses' softmax(a)
    c = torch.rand(sentences, beam, src_len, generator=g)  # the mixture's coefficients
    out = torch.empty(sentences, beam, vocab)
    logits = torch.randn(sentences * beam, vocab, generator=g)
    positive = torch.rand(sentences * beam, vocab, generator=g) + 0.1
    features = torch.randn(sentences * src_len, 128, generator=g)  # g(x~) at the converged sizes' 128 dims
    weight = torch.randn(vocab, 128, generator=g)
    b = features @ weight.t()
    parts = {
        "b = g(x~) W^T, once a batch": lambda: features @ weight.t(),
        "exp(b - row max), once a batch": lambda: (b - b.amax(-1, keepdim=True)).exp_(),
        "read exp(b) once (sum)": lambda: E.sum(),
        "z = E p^T (the code's layout)": lambda: torch.bmm(E, p.transpose(1, 2)),
        "z = p E^T, E stored (V, T)": lambda: torch.bmm(p, Et),
        "z, E stored (V, T), transposed view": lambda: torch.bmm(Et.transpose(1, 2), p.transpose(1, 2)),
        "mixture c E (the code's layout)": lambda: torch.bmm(c, E, out=out),
        "mixture, E stored (V, T), transposed view": lambda: torch.bmm(c, Et.transpose(1, 2), out=out),
        "mixture as E^T c^T, E stored (V, T)": lambda: torch.bmm(Et, c.transpose(1, 2)),
        "both products, whole batch": chunked(E, p, c, out, sentences),
        "both products, 1 sentence at a time": chunked(E, p, c, out, 1),
        "both products, 2 sentences at a time": chunked(E, p, c, out, 2),
        "both products, 8 sentences at a time": chunked(E, p, c, out, 8),
        "softmax over (rows, V)": lambda: torch.softmax(logits, -1),
        "log_softmax over (rows, V) (soft attention)": lambda: torch.log_softmax(logits, -1),
        "log over (rows, V)": lambda: positive.log(),
        "add over (rows, V)": lambda: positive.add(logits),
        "max over (rows, V)": lambda: logits.amax(-1),
    }
    ms = {name: round(median_ms(fn, repeats, warmup=1), 2) for name, fn in parts.items()}
    return ms, E.numel() * E.element_size()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=15)
    parser.add_argument("--vocab", type=int, default=8004)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--note", default="", help="how the machine was shared, for the JSON")
    parser.add_argument("--json", help="write the timings here")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    ms, e_bytes = measure(opts.sentences, opts.src_len, opts.vocab, opts.beam, opts.repeats)
    print(
        f"{opts.sentences} sentences, T = {opts.src_len}, V = {opts.vocab}, beam {opts.beam}, "
        f"{opts.threads} thread(s); exp(b) is {e_bytes / 1e6:.1f} MB"
    )
    print("| part | ms (median) |")
    print("|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value} |")
    if opts.json:
        fields = {
            "torch": torch.__version__,
            "sizes": {k: getattr(opts, k) for k in ("sentences", "src_len", "vocab", "beam", "threads", "repeats")},
            "exp_b_bytes": e_bytes,
            "ms": ms,
            "note": opts.note,
        }
        write_result(opts.json, "benchmarks/mixture_products.py", sys.argv[1:], fields, REPO)


if __name__ == "__main__":
    main()

"""The shortlist layer's vocabulary-sized work per batch at the converged
comparison's sizes, median ms: logsumexp_v a_jv as ``torch.logsumexp`` and as
``vocabulary_partition`` (one fused softmax and two maxima), and logsumexp's
gradient softmax(a) g recomputed as exp(a - lse) g or read from the saved
softmax (``_softmax_times``).

    python benchmarks/vocab_partition.py --json benchmarks/results/vocab-partition.json

Run it under the training scripts' malloc settings (MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2000000000): with glibc's default, each new
(B, N, V) tensor is a fresh mmap and page faults dominate.
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
    parser.add_argument("--vocab", type=int, default=8004)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    opts = parser.parse_args(argv)

    import torch

    from fairseq_varattn.modules.shortlist_output import _softmax_times, vocabulary_partition

    torch.manual_seed(0)
    a = torch.randn(opts.batch, opts.tgt_len, opts.vocab) * 3
    g = torch.randn(opts.batch, opts.tgt_len, 1)
    lse, softmax = vocabulary_partition(a)
    parts = {
        "forward: torch.logsumexp": lambda: torch.logsumexp(a, -1, keepdim=True),
        "forward: vocabulary_partition (softmax, two maxima)": lambda: vocabulary_partition(a),
        "backward: exp(a - lse) g": lambda: _softmax_times(a, lse, None, g),
        "backward: saved softmax times g": lambda: _softmax_times(a, lse, softmax, g),
    }
    results = {name: round(median_ms(fn, opts.repeats), 1) for name, fn in parts.items()}
    malloc = {k: os.environ[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ}
    print(
        f"median ms of {opts.repeats} (B={opts.batch}, N={opts.tgt_len}, V={opts.vocab}, malloc {malloc or 'default'})"
    )
    print("| part | ms |\n|---|---|")
    for name, ms in results.items():
        print(f"| {name} | {ms} |")
    if opts.json:
        fields = {"threads": torch.get_num_threads(), "malloc": malloc, "ms": results}
        write_result(
            opts.json, "benchmarks/vocab_partition.py", argv if argv is not None else sys.argv[1:], fields, REPO
        )


if __name__ == "__main__":
    main()

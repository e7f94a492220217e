"""Is a BLEU difference significant?  sacreBLEU's paired bootstrap
resampling (Koehn 2004) of systems against a baseline, on the same test
sentences.  (Not its approximate randomisation: there a system that differs
from the baseline in one sentence of 150 came out at p = 0.002, since ties
with the observed difference do not count.)

    python -m varattn_tools.significance REFERENCES BASELINE SYSTEM [SYSTEM ...]

REFERENCES may be gzip-compressed; every file has one detokenised sentence a
line, in the same order.  Prints each system's BLEU, its difference from the
baseline and the p-value of that difference (sacreBLEU's: from the share of
resampled test sets on which the difference is not in the observed direction).
A system whose translations are the baseline's, sentence for sentence, gets
p = 1: sacreBLEU gives it its smallest p (1 / (resamples + 1)), since no
resample's difference exceeds the observed zero, and a table would call two
equal systems significantly different.
"""

import argparse
import gzip
from typing import Dict, List, Sequence

RESAMPLES = 1000


def read_lines(path: str) -> List[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def paired_bleu(
    references: Sequence[str], baseline: Sequence[str], systems: Dict[str, Sequence[str]], trials: int = RESAMPLES
) -> Dict[str, dict]:
    """{name: {"bleu", "baseline_bleu", "delta", "p_value"}} for each system against ``baseline``."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    for name, hyps in [("baseline", baseline), *systems.items()]:
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} sentences for {len(references)} references")
    named = [("baseline", list(baseline)), *((n, list(h)) for n, h in systems.items())]
    test = PairedTest(
        named, {"BLEU": BLEU(references=[list(references)])}, references=None, test_type="bs", n_samples=trials
    )
    _, scores = test()
    results = scores["BLEU"]
    base = results[0].score
    return {
        name: {
            "bleu": r.score,
            "baseline_bleu": base,
            "delta": r.score - base,
            "p_value": 1.0 if hyps == named[0][1] else r.p_value,
        }
        for (name, hyps), r in zip(named[1:], results[1:])
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("references")
    parser.add_argument("baseline")
    parser.add_argument("systems", nargs="+")
    parser.add_argument("--trials", type=int, default=RESAMPLES)
    opts = parser.parse_args(argv)
    out = paired_bleu(
        read_lines(opts.references),
        read_lines(opts.baseline),
        {path: read_lines(path) for path in opts.systems},
        opts.trials,
    )
    print(f"baseline {opts.baseline}: BLEU {next(iter(out.values()))['baseline_bleu']:.2f}")
    for path, r in out.items():
        print(f"{path}: BLEU {r['bleu']:.2f} ({r['delta']:+.2f}), p = {r['p_value']:.4f}")


if __name__ == "__main__":
    main()

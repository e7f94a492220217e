"""Copy the results tables the experiment scripts wrote into README.md.

    python scripts/readme_results.py          # rewrite every <!-- results:NAME --> block
    python scripts/readme_results.py --check  # exit 1 if README.md is out of date

Each block ``<!-- results:NAME --> ... <!-- /results:NAME -->`` of README.md
(and examples/translation/README.md) is replaced by the file ``SOURCES[NAME]``,
which the named script writes; blocks without a source are left alone.
"""

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join("examples", "translation", "results")
SOURCES = {
    "converge": os.path.join(RESULTS, "converge.md"),  # converge.py table
    "headline": os.path.join(RESULTS, "converge-headline.md"),  # converge.py table
    "headline-transformer": os.path.join(RESULTS, "converge-transformer-headline.md"),  # ... --family transformer
    "demo": os.path.join(RESULTS, "demo.md"),  # scripts/demo.sh (its runs/demo/result.md)
    "converge-transformer": os.path.join(RESULTS, "converge-transformer.md"),  # --family transformer
    "screen": os.path.join(RESULTS, "screen.md"),  # screen.py table
    "transformer-4epochs": os.path.join(RESULTS, "transformer-4epochs", "table.md"),  # budget.py table
    "transformer-diagnosis": os.path.join(RESULTS, "transformer-diagnosis.md"),  # diagnose.py
    "ablate": os.path.join(RESULTS, "ablate.md"),  # ablate.py
    "ablate-iwslt": os.path.join(RESULTS, "ablate-iwslt.md"),  # ablate.py --preset iwslt
    # ablate.py --only ...dirichlet... --out runs/ablate-dirichlet --results (this file)
    "ablate-dirichlet": os.path.join(RESULTS, "ablate-dirichlet.md"),
    # ablate.py --only rws-factored,... --out runs/ablate-rws --results (this file)
    "ablate-rws": os.path.join(RESULTS, "ablate-rws.md"),
    "output-layers": os.path.join(RESULTS, "output-layers.md"),  # reproduce.py --output-layers joint,factored
    "speed": os.path.join("benchmarks", "results.md"),  # benchmarks/speed.py
    "word-alignment": os.path.join("benchmarks", "results", "word-alignment.md"),  # benchmarks/word_alignment.py
    # the README's summary: the best pair of models so far (benchmarks/train_aligners.py, then word_alignment.py)
    "word-alignment-summary": os.path.join("benchmarks", "results", "word-alignment-lstm-final-summary.md"),
    "word-alignment-lstm": os.path.join("benchmarks", "results", "word-alignment-lstm-final.md"),
}
READMES = ["README.md", os.path.join("examples", "translation", "README.md"), os.path.join("benchmarks", "README.md")]


def render(text):
    def block(match):
        name = match.group(1)
        source = os.path.join(REPO, SOURCES[name]) if name in SOURCES else None
        if source is None or not os.path.isfile(source):
            return match.group(0)
        with open(source, encoding="utf-8") as f:
            body = f.read().strip()
        return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"

    return re.sub(r"<!-- results:([\w-]+) -->.*?<!-- /results:\1 -->", block, text, flags=re.S)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    stale = []
    for name in READMES:
        path = os.path.join(REPO, name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render(text)
        if new != text:
            stale.append(name)
            if not opts.check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    if opts.check and stale:
        sys.exit(f"out of date: {', '.join(stale)} (run python scripts/readme_results.py)")
    print("updated: " + (", ".join(stale) if stale else "nothing"))


if __name__ == "__main__":
    main()

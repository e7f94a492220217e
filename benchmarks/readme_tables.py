"""Copies benchmarks/results.md (what speed.py, profile_step.py and epoch.py
append with --markdown) into benchmarks/README.md between its
``<!-- results:speed -->`` markers, so that every number there comes from
the committed artifact.

    python benchmarks/readme_tables.py           # rewrite the README's block
    python benchmarks/readme_tables.py --check   # exit 1 if the block differs
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- results:speed -->", "<!-- /results:speed -->"


def render(readme: str, results: str) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{results.strip()}\n{END}{tail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--readme", default=os.path.join(HERE, "README.md"))
    parser.add_argument("--results", default=os.path.join(HERE, "results.md"))
    opts = parser.parse_args()
    with open(opts.readme) as f:
        readme = f.read()
    with open(opts.results) as f:
        new = render(readme, f.read())
    if opts.check:
        if new != readme:
            sys.exit(f"{opts.readme} is not what {opts.results} renders: run python benchmarks/readme_tables.py")
        return
    with open(opts.readme, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()

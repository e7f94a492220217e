"""The demo's result as a committed artifact: ``OUT/result.json`` (settings,
commit, machine, numbers) and ``OUT/result.md`` (the README's table), read
from the demo's own outputs (train.log, bleu.txt, the model directory)."""

import argparse
import json
import os
import platform
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools.experiments import git_commit  # noqa: E402
from varattn_tools.fairseq_log import validations  # noqa: E402


def markdown(result) -> str:
    extra = f" `{result['extra_train_args']}`" if result.get("extra_train_args") else ""
    lines = [
        f"`bash scripts/demo.sh` on {result['date']} ({result['commit']}), {result['machine']}:",
        "",
        "| model | epochs | best valid PPL | test_2016_flickr sacreBLEU | wall time (with installation) |",
        "|---|---|---|---|---|",
        f"| `varattn_lstm` soft attention, 128-d, 256-unit decoder{extra} | {result['epochs']} | "
        f"{result['best_valid_ppl']:.2f} | {result['test_bleu']:.1f} | {result['wall_seconds']} s |",
        "",
        f"`{result['sacrebleu']}`",
    ]
    if result.get("interactive"):
        lines += ["", "```", *result["interactive"], "```"]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="the demo's output folder: writes OUT/result.json and OUT/result.md")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--extra-train-args", default="")
    parser.add_argument(
        "--render", help='a committed result JSON (with a hand-added "note"): its table, written beside it as .md'
    )
    opts = parser.parse_args()
    if opts.render:
        with open(opts.render) as f:
            result = json.load(f)
        table = markdown(result)
        with open(os.path.splitext(opts.render)[0] + ".md", "w") as f:
            f.write(table)
        print(table)
        return
    if not (opts.out and opts.epochs and opts.seconds is not None):
        parser.error("give --out, --epochs and --seconds (or --render)")
    with open(os.path.join(opts.out, "train.log"), encoding="utf-8") as f:
        valid = validations(f.read())
    best_ppl = min(s.values["ppl"] for s in valid.values())
    with open(os.path.join(opts.out, "bleu.txt"), encoding="utf-8") as f:
        bleu_line = f.read().strip().splitlines()[-1]
    bleu = float(re.search(r"= ([0-9.]+)", bleu_line).group(1))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(REPO, mark_changes=True),
        "command": "bash scripts/demo.sh",
        "epochs": opts.epochs,
        "extra_train_args": opts.extra_train_args,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "best_valid_ppl": best_ppl,
        "test_bleu": bleu,
        "sacrebleu": bleu_line,
        "wall_seconds": opts.seconds,
    }
    interactive = os.path.join(opts.out, "interactive.txt")
    if os.path.isfile(interactive):
        with open(interactive, encoding="utf-8") as f:
            result["interactive"] = f.read().splitlines()
    with open(os.path.join(opts.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(os.path.join(opts.out, "result.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

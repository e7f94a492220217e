"""Training throughput of whole epochs: fairseq-train, one epoch of a
converged-comparison row on the prepared Multi30k, wall clock and fairseq's
own words per second, rows back to back on the same machine.

    python benchmarks/epoch.py --rows soft,elbo-enum          # runs/multi30k/bin (converge.py prepares it)
    python benchmarks/epoch.py --rows soft,elbo-enum --max-update 50 --data DIR   # a shorter check

Rows are varattn_tools/rows.py's (``varattn-options --row NAME``), trained
from scratch with seed 1, no validation and no checkpoints, under the malloc
settings of the experiment scripts.  ``--repeats`` runs the rows in turn
that many times; the median is reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


from varattn_tools import rows as row_names  # noqa: E402
from varattn_tools.experiments import append_markdown, cpu_env, git_commit  # noqa: E402


def train_epoch(row, data, extra, threads):
    """(seconds of wall clock, fairseq's train wps, updates) of one epoch of ``row``."""
    with tempfile.TemporaryDirectory() as save_dir:
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "fairseq-train"),
            data,
            "--user-dir",
            os.path.join(REPO, "fairseq_varattn"),
            *row_names.train_options(row),
            "--max-epoch",
            "1",
            "--seed",
            "1",
            "--disable-validation",
            "--no-save",
            "--save-dir",
            save_dir,
            "--log-format",
            "json",
            "--log-interval",
            "1000000",
            *extra,
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_env(threads))
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    stats = None
    for line in (proc.stdout + proc.stderr).splitlines():
        start_of_json = line.find("{")
        if "| train |" in line and start_of_json >= 0:
            stats = json.loads(line[start_of_json:])
    if stats is None:
        raise RuntimeError(f"no end-of-epoch train line in the log of {row}")
    wps = float(stats["train_wps"])
    if wps <= 0:
        raise RuntimeError(f"fairseq timed no words for {row} ({stats['train_num_updates']} updates): train longer")
    return wall, wps, int(stats["train_num_updates"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="soft,elbo-enum", help="rows of varattn_tools/rows.py")
    parser.add_argument("--data", default=os.path.join(REPO, "runs", "multi30k", "bin"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per run (default: torch's)")
    parser.add_argument("--max-update", type=int, default=0, help="stop each epoch after this many updates")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--markdown", help="also append the table here")
    opts = parser.parse_args()
    names = [n for n in opts.rows.split(",") if n]
    for n in names:
        row_names.check(n)
    if not os.path.exists(os.path.join(opts.data, "dict.en.txt")):
        parser.error(f"{opts.data} holds no prepared data (dict.en.txt): run converge.py prepare first")
    extra = ["--max-update", str(opts.max_update)] if opts.max_update else []
    runs = {n: [] for n in names}
    # The first fairseq-train of a session reads the binarised data from a
    # cold page cache: it ran 1.3-1.5x slower than the same row repeated, and
    # it is always the first row, the baseline.  One short untimed run warms it.
    train_epoch(names[0], opts.data, ["--max-update", "5"], opts.threads)
    for r in range(opts.repeats):
        for n in names:
            runs[n].append(train_epoch(n, opts.data, extra, opts.threads))
            wall, wps, updates = runs[n][-1]
            print(f"  {n}: {wall:.0f} s, {wps:.0f} words/s, {updates} updates", file=sys.stderr, flush=True)
    ref = names[0]
    median = {
        n: (statistics.median(w for w, _, _ in v), statistics.median(x for _, x, _ in v)) for n, v in runs.items()
    }
    lines = [
        f"one epoch of fairseq-train per row ({opts.data}{', ' + ' '.join(extra) if extra else ''}), "
        f"median of {opts.repeats}, commit {git_commit(REPO, mark_changes=True)}",
        f"| row | wall s | words/s | speed vs {ref} |",
        "|---|---|---|---|",
    ]
    for n in names:
        wall, wps = median[n]
        lines.append(f"| {n} | {wall:.0f} | {wps:.0f} | {wps / median[ref][1]:.2f} |")
    print("\n".join(lines))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"options": vars(opts), "commit": git_commit(REPO, mark_changes=True), "runs": runs}, f, indent=2)
    if opts.markdown:
        append_markdown(opts.markdown, lines)


if __name__ == "__main__":
    main()

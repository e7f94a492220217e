"""Train a row of the converged comparison in both directions, for word alignment.

    python benchmarks/train_aligners.py --row marginal --direction de-en
    python benchmarks/train_aligners.py --row marginal --direction en-de
    python benchmarks/train_aligners.py --row marginal --status

Alignment by agreement (``varattn-word-align --reverse-model``,
``benchmarks/word_alignment.py --model NAME=DE_EN:EN_DE``) needs a model of
each direction.  This trains ``--row``'s options (``varattn_tools/rows.py``,
the converged comparison's preset and early stopping) on the prepared
Multi30k with ``--source-lang``/``--target-lang`` set by ``--direction``,
into ``--work/ROW-DIRECTION-seedS``, resumable (``varattn_tools.resume_train``:
early stopping's counter survives a resume).  A finished run writes
``benchmarks/results/aligners/ROW-DIRECTION-seedS.json``: its command,
commit, epochs, why it stopped, the best validation and the training time
summed over resumes.
"""

import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools import fairseq_log  # noqa: E402
from varattn_tools.experiments import cpu_env, git_commit, machine, resume_train_command, run  # noqa: E402
from varattn_tools.resume_train import training_seconds  # noqa: E402
from varattn_tools.rows import train_options  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results", "aligners")
DIRECTIONS = {"de-en": ("de", "en"), "en-de": ("en", "de")}


def command(opts, work):
    src, tgt = DIRECTIONS[opts.direction]
    options = [*train_options(opts.row), "--source-lang", src, "--target-lang", tgt]
    return resume_train_command(opts.data, os.path.join(REPO, "fairseq_varattn"), options, opts.seed, work)


def record(opts, name, work, cmd, text):
    valid = fairseq_log.validations(text)
    best = fairseq_log.best_epoch(text)
    row = {
        "row": opts.row,
        "direction": opts.direction,
        "seed": opts.seed,
        "train_cmd": " ".join(["fairseq-train", *cmd[cmd.index("--") + 1 :]]),
        "commit": git_commit(REPO),
        "epochs_run": max(valid),
        "best_epoch": best,
        "valid_ppl_training": valid[best].values["ppl"],
        "stopped_by": fairseq_log.training_status(text),
        "train_seconds": training_seconds(text),
        "checkpoint": os.path.join(work, "checkpoint_best.pt"),
        "date": str(datetime.date.today()),
        "machine": machine(),
        "threads": opts.threads,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(row, f, indent=1)
        f.write("\n")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", default="marginal", help="a row of varattn_tools/rows.py")
    parser.add_argument("--direction", choices=list(DIRECTIONS), default="de-en")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--data", default="runs/multi30k/bin", help="converge.py's prepared Multi30k (both dictionaries)"
    )
    parser.add_argument("--work", default="runs/aligners")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--status", action="store_true", help="say where the run stands; train nothing")
    opts = parser.parse_args(argv)
    try:
        train_options(opts.row)
    except KeyError as e:
        parser.error(str(e))
    for lang in DIRECTIONS[opts.direction]:
        if not os.path.isfile(os.path.join(opts.data, f"dict.{lang}.txt")):
            parser.error(f"{opts.data} has no dict.{lang}.txt: prepare it with converge.py run (or varattn-prepare)")
    name = f"{opts.row}-{opts.direction}-seed{opts.seed}"
    work = os.path.join(opts.work, name)
    log = os.path.join(work, "train.log")
    text = open(log).read() if os.path.isfile(log) else ""
    if opts.status:
        valid = fairseq_log.validations(text)
        state = {"training": "training or interrupted", "patience": "finished (patience)", "cap": "finished (cap)"}
        state = state[fairseq_log.training_status(text)] if text else "not started"
        last = f", epoch {max(valid)}, valid PPL {valid[max(valid)].values['ppl']}" if valid else ""
        print(f"{name}: {state}{last} (in {work})")
        return
    os.makedirs(work, exist_ok=True)
    cmd = command(opts, work)
    if fairseq_log.training_status(text) == "training":
        print(f"== {name}: training in {work} (resumes from checkpoint_last.pt)", flush=True)
        text = run(cmd, log, cpu_env(opts.threads), append=True)
    row = record(opts, name, work, cmd, text)
    print(
        f"== {name}: {row['stopped_by']} after epoch {row['epochs_run']}, best {row['best_epoch']} "
        f"(valid PPL {row['valid_ppl_training']}), {row['train_seconds'] / 3600:.1f} h",
        flush=True,
    )


if __name__ == "__main__":
    main()

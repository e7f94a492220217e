"""``fairseq-train`` whose early stopping survives a resume.

    python -m varattn_tools.resume_train --log SAVE_DIR/train.log -- DATA --user-dir ... --patience 3

fairseq keeps ``--patience``'s counter (the best validation value and the
epochs since it) in attributes of ``fairseq_cli.train.should_stop_early``,
not in checkpoints: a run resumed from ``checkpoint_last.pt`` starts
counting again, and may train up to ``--patience`` epochs more than an
uninterrupted run.  This reads the counter back from the run's own training
log (its validation lines, in order) and sets it before fairseq starts, so
a resumed run stops where an uninterrupted one would.  Without a log (a
fresh run) it is fairseq-train.
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

from varattn_tools.fairseq_log import lines, validations


def patience_state(text: str, key: str = "ppl", maximize: bool = False) -> Optional[Tuple[float, int]]:
    """(best value, validations since it) as fairseq's ``should_stop_early``
    would hold them after the log's validations, or None before the first.

    A tie does not count as an improvement (fairseq's strict comparison), and
    an epoch validated twice (a resume that repeated it) counts once, at its
    last line."""
    by_epoch = {e: v for e, s in validations(text).items() if isinstance(v := s.values.get(key), float)}
    best, runs = None, 0
    for epoch in sorted(by_epoch):
        value = by_epoch[epoch]
        if best is None or (value > best if maximize else value < best):
            best, runs = value, 0
        else:
            runs += 1
    return None if best is None else (best, runs)


def _starts_invocation(line) -> bool:
    """fairseq-train logs its config first ("{'_name': ...}"): a new invocation."""
    return line.logger == "fairseq_cli.train" and line.message.startswith("{'_name'")


def training_seconds(text: str) -> float:
    """Seconds the log's training invocations ran, summed: from each start
    of fairseq-train to its last logged line, so the time between an
    interruption and the resume does not count."""
    total, first, previous = 0.0, None, None
    for line in lines(text):
        if _starts_invocation(line):
            if first is not None:
                total += (previous - first).total_seconds()
            first = line.time
        previous = line.time
    if first is not None:
        total += (previous - first).total_seconds()
    return total


# what main prints first, so that a log says which code trained each part of a run
_COMMIT_LINE = re.compile(r"resume_train: fairseq_varattn at commit (\S+)")
_EPOCH_BEGINS = re.compile(r"begin training epoch (\d+)")


def invocations(text: str) -> List[Dict[str, object]]:
    """Each fairseq-train invocation in a training log, in order: when it
    started, the first epoch it began (None if it began none) and the commit
    resume_train printed before it (None in logs from before that line)."""
    out, commit = [], None
    for raw in text.splitlines():
        if m := _COMMIT_LINE.match(raw):
            commit = m.group(1)
            continue
        parsed = next(lines(raw), None)
        if parsed is None:
            continue
        if _starts_invocation(parsed):
            out.append({"start": parsed.time.strftime("%Y-%m-%d %H:%M"), "first_epoch": None, "commit": commit})
            commit = None
        elif out and out[-1]["first_epoch"] is None and (m := _EPOCH_BEGINS.search(parsed.message)):
            out[-1]["first_epoch"] = int(m.group(1))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="the run's training log so far (missing or empty: a fresh run)")
    parser.add_argument("--metric", default="ppl", help="fairseq's --best-checkpoint-metric")
    parser.add_argument("--maximize", action="store_true", help="fairseq's --maximize-best-checkpoint-metric")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then fairseq-train's arguments")
    opts = parser.parse_args(argv)
    train_args = opts.train_args[1:] if opts.train_args[:1] == ["--"] else opts.train_args
    try:
        with open(opts.log, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    from fairseq_cli import train

    from varattn_tools.experiments import git_commit

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"resume_train: fairseq_varattn at commit {git_commit(repo, mark_changes=True)}", flush=True)
    state = patience_state(text, opts.metric, opts.maximize)
    if state is not None:
        train.should_stop_early.best, train.should_stop_early.num_runs = state
        print(
            f"resume_train: early stopping resumes at best {opts.metric} {state[0]}, "
            f"{state[1]} validation(s) without improvement",
            flush=True,
        )
    sys.argv = ["fairseq-train", *train_args]
    train.cli_main()


if __name__ == "__main__":
    main()

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
import sys
from typing import Optional, Tuple

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


def training_seconds(text: str) -> float:
    """Seconds the log's training invocations ran, summed: from each start
    of fairseq-train to its last logged line, so the time between an
    interruption and the resume does not count."""
    total, first, previous = 0.0, None, None
    for line in lines(text):
        # fairseq-train logs its config first ("{'_name': ...}"): a new invocation
        if line.logger == "fairseq_cli.train" and line.message.startswith("{'_name'"):
            if first is not None:
                total += (previous - first).total_seconds()
            first = line.time
        previous = line.time
    if first is not None:
        total += (previous - first).total_seconds()
    return total


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

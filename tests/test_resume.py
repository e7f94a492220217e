"""Early stopping across a resume (varattn_tools.resume_train): the counter read
back from a training log is the one fairseq itself would hold."""

import random
from types import SimpleNamespace

import pytest
from fairseq_cli import train as fairseq_train
from helpers import example_module

from varattn_tools.resume_train import invocations, patience_state, training_seconds


def _valid_line(epoch, ppl):
    return (
        f"2026-12-01 10:{epoch % 60:02d}:00 | INFO | valid | epoch {epoch:03d} | valid on 'valid' subset | "
        f"loss 3.1 | nll_loss 2.3 | ppl {ppl} | wps 900 | wpb 2000 | bsz 100 | num_updates {epoch * 10}"
    )


def _fairseq_counter(values, patience=1000):
    """Feed ``values`` to fairseq's own should_stop_early; return its state."""
    cfg = SimpleNamespace(checkpoint=SimpleNamespace(patience=patience, maximize_best_checkpoint_metric=False))
    for attr in ("best", "num_runs"):
        if hasattr(fairseq_train.should_stop_early, attr):
            delattr(fairseq_train.should_stop_early, attr)
    try:
        for v in values:
            fairseq_train.should_stop_early(cfg, v)
        return fairseq_train.should_stop_early.best, fairseq_train.should_stop_early.num_runs
    finally:
        for attr in ("best", "num_runs"):
            if hasattr(fairseq_train.should_stop_early, attr):
                delattr(fairseq_train.should_stop_early, attr)


def test_patience_state_is_what_fairseqs_counter_holds_after_the_same_validations():
    rng = random.Random(0)
    for _ in range(200):
        # rounded like fairseq's ppl, so ties happen (a tie is no improvement)
        values = [round(rng.choice([5.0, 5.1, 5.2]) + rng.randint(0, 3) * 0.01, 2) for _ in range(rng.randint(1, 12))]
        log = "\n".join(_valid_line(e, v) for e, v in enumerate(values, start=1))
        assert patience_state(log) == _fairseq_counter(values), values


def test_patience_state_counts_a_revalidated_epoch_once_and_none_before_the_first():
    assert patience_state("no validation yet") is None
    # epoch 3 validated, interrupted, resumed and validated again with another value
    log = "\n".join(
        [_valid_line(1, 6.0), _valid_line(2, 5.0), _valid_line(3, 5.5), _valid_line(3, 5.4), _valid_line(4, 5.2)]
    )
    assert patience_state(log) == (5.0, 2)


def test_training_seconds_sums_each_invocation_and_skips_the_gap_between_them():
    start = "{} | INFO | fairseq_cli.train | {{'_name': None, 'common': {{}}}}"
    log = "\n".join(
        [
            start.format("2026-12-01 10:00:00"),
            "2026-12-01 10:05:00 | INFO | train_inner | epoch 001: ...",
            "2026-12-01 10:10:00 | INFO | valid | epoch 001 | valid on 'valid' subset | ppl 9.0",
            # killed; resumed two hours later
            start.format("2026-12-01 12:10:00"),
            "2026-12-01 12:13:30 | INFO | fairseq_cli.train | done training in 210.0 seconds",
        ]
    )
    assert training_seconds(log) == pytest.approx(600 + 210)
    assert training_seconds("") == 0.0


def _resumed_log():
    """Three invocations: an old one without resume_train's commit line, one
    killed before it began an epoch, and one that trained on."""
    start = "{} | INFO | fairseq_cli.train | {{'_name': None, 'common': {{}}}}"
    begin = "{} | INFO | fairseq.trainer | begin training epoch {}"
    return "\n".join(
        [
            start.format("2026-12-01 10:00:00"),
            begin.format("2026-12-01 10:00:05", 1),
            begin.format("2026-12-01 10:20:00", 2),
            "resume_train: fairseq_varattn at commit abc1234",
            start.format("2026-12-01 12:00:00"),
            "resume_train: fairseq_varattn at commit def5678+changes",
            "resume_train: early stopping resumes at best ppl 9.0, 0 validation(s) without improvement",
            start.format("2026-12-01 14:00:00"),
            begin.format("2026-12-01 14:00:04", 2),
            begin.format("2026-12-01 14:30:00", 3),
        ]
    )


def test_invocations_say_when_each_part_started_from_which_epoch_with_which_code():
    assert invocations(_resumed_log()) == [
        {"start": "2026-12-01 10:00", "first_epoch": 1, "commit": None},
        {"start": "2026-12-01 12:00", "first_epoch": None, "commit": "abc1234"},
        {"start": "2026-12-01 14:00", "first_epoch": 2, "commit": "def5678+changes"},
    ]
    assert invocations("") == []


def test_run_notes_tell_a_resumed_run_from_one_trained_in_one_go():
    """converge.py's notes for a result without a hand-written one: the parts
    that trained epochs, with their epochs and commits."""
    example_module("converge")  # puts examples/translation on the path, as the script does for itself
    import converge_tables as tables

    row = {"epochs_run": 4, "invocations": invocations(_resumed_log())}
    history = tables.training_history(row)
    assert "2 parts" in history, history
    assert "epochs 1-1 from 2026-12-01 10:00, commit not logged" in history
    assert "epochs 2-4 from 2026-12-01 14:00, commit def5678+changes" in history
    once = {"epochs_run": 2, "invocations": [{"start": "2026-12-01 10:00", "first_epoch": 1, "commit": "abc1234"}]}
    assert tables.training_history(once) == "trained in one go with commit abc1234."
    assert "no record of resumes" in tables.training_history({"epochs_run": 3})


def test_a_resumed_run_stops_where_an_uninterrupted_one_would(tmp_path, monkeypatch):
    """resume_train sets fairseq's counter from the log before fairseq runs."""
    seen = {}

    def fake_cli_main():
        seen["state"] = (fairseq_train.should_stop_early.best, fairseq_train.should_stop_early.num_runs)

    monkeypatch.setattr(fairseq_train, "cli_main", fake_cli_main)
    log = tmp_path / "train.log"
    log.write_text("\n".join(_valid_line(e, v) for e, v in enumerate([7.0, 6.0, 6.5, 6.2], start=1)))
    from varattn_tools import resume_train

    try:
        resume_train.main(["--log", str(log), "--", "DATA", "--patience", "3"])
        assert seen["state"] == (6.0, 2)
        # with one more validation without improvement fairseq now stops, as it would have uninterrupted
        cfg = SimpleNamespace(checkpoint=SimpleNamespace(patience=3, maximize_best_checkpoint_metric=False))
        assert fairseq_train.should_stop_early(cfg, 6.1)
    finally:
        for attr in ("best", "num_runs"):
            if hasattr(fairseq_train.should_stop_early, attr):
                delattr(fairseq_train.should_stop_early, attr)

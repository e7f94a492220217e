"""varattn_tools.fairseq_log reads what fairseq writes, in both log formats:
one run logged as text, the same run logged as JSON after a resume, read
back to the same numbers."""

import datetime
import os

import pytest
from helpers import REPO, run_cli

from varattn_tools import fairseq_log
from varattn_tools.resume_train import patience_state, training_seconds

TIMING = {"wps", "ups", "wall", "train_wall", "gb_free"}


def _train(data_dir, save, epochs, log_format):
    proc = run_cli(
        [
            "fairseq_cli.train",
            data_dir,
            "--user-dir",
            os.path.join(REPO, "fairseq_varattn"),
            "--arch",
            "varattn_lstm_tiny",
            "--criterion",
            "varattn_marginal",
            "--attention",
            "categorical",
            "--optimizer",
            "adam",
            "--lr",
            "0.005",
            "--train-subset",
            "test",
            "--max-tokens",
            "800",
            "--max-epoch",
            str(epochs),
            "--seed",
            "2",
            "--num-workers",
            "0",
            "--log-interval",
            "2",
            "--log-format",
            log_format,
            "--required-batch-size-multiple",
            "1",
            "--no-epoch-checkpoints",
            "--save-dir",
            save,
        ]
    )
    with open(os.path.join(save, "train.log"), "a") as f:
        f.write(proc.stdout + proc.stderr)


def _without_timing(values):
    return {k: v for k, v in values.items() if k not in TIMING}


@pytest.fixture(scope="module")
def logs(data_dir, tmp_path_factory):
    """One 2-epoch run (trained on the small test split) logged as text, the
    same run logged as JSON, and a log of text for epoch 1 then JSON after a
    resume for epoch 2 (a run resumed since the scripts moved to JSON)."""
    found = {}
    for name in ("simple", "json", "mixed"):
        save = str(tmp_path_factory.mktemp(name))
        if name == "mixed":
            _train(data_dir, save, 1, "simple")
        _train(data_dir, save, 2, "json" if name != "simple" else "simple")
        found[name] = open(os.path.join(save, "train.log")).read()
    return found


def test_a_run_logged_as_text_and_as_json_reads_back_the_same(logs):
    text, json_log = logs["simple"], logs["json"]
    assert all(line.message.startswith("{") for line in fairseq_log.lines(json_log) if line.logger == "valid")
    for log in (text, json_log):
        assert sorted(fairseq_log.validations(log)) == [1, 2]
    for epoch in (1, 2):
        a, b = (fairseq_log.validations(log)[epoch].values for log in (text, json_log))
        assert "entropy_p" in a and "num_updates" in a and isinstance(a["ppl"], float)
        assert _without_timing(a) == _without_timing(b), epoch
    # every --log-interval line and each epoch's average, in both formats
    inner = [[s.values["loss"] for s in fairseq_log.stats(log, "train_inner")] for log in (text, json_log)]
    assert len(inner[0]) >= 3 and inner[0] == inner[1]
    epochs = [
        [(s.epoch, _without_timing(s.values)) for s in fairseq_log.stats(log, "train")] for log in (text, json_log)
    ]
    assert [e for e, _ in epochs[0]] == [1, 2] and epochs[0] == epochs[1]
    assert fairseq_log.best_checkpoint_epochs(text) == fairseq_log.best_checkpoint_epochs(json_log) != []
    # early stopping's counter resumes from either
    assert patience_state(text) == patience_state(json_log) != None  # noqa: E711


def test_a_resumed_log_of_both_formats_reads_as_one_run(logs):
    mixed = logs["mixed"]
    assert '| valid | {"epoch": 2, "valid_loss"' in mixed
    assert "| valid | epoch 001 | valid on 'valid' subset |" in mixed
    valid = fairseq_log.validations(mixed)
    assert sorted(valid) == [1, 2]
    assert _without_timing(valid[1].values) == _without_timing(fairseq_log.validations(logs["simple"])[1].values)
    assert valid[2].values.keys() == fairseq_log.validations(logs["json"])[2].values.keys()
    assert [s.epoch for s in fairseq_log.stats(mixed, "train")] == [1, 2]


def test_training_time_sums_each_invocation(logs):
    mixed = logs["mixed"]
    starts = [
        line.time for line in fairseq_log.messages(mixed, "fairseq_cli.train") if line.message.startswith("{'_name'")
    ]
    assert len(starts) == 2
    stamps = [line.time for line in fairseq_log.lines(mixed)]
    whole = (stamps[-1] - stamps[0]).total_seconds()
    assert 0 < training_seconds(mixed) <= whole


def test_lines_of_both_formats_and_what_is_not_a_statistic():
    log = "\n".join(
        [
            "2026-12-06 19:14:35 | INFO | fairseq_cli.train | {'_name': None, 'common': {'log_format': 'json'}}",
            "2026-12-06 19:14:35 | INFO | fairseq.trainer | begin training epoch 12",
            "2026-12-06 19:27:42 | INFO | train_inner | epoch 012:     18 / 182 loss=7.113, nll_loss=7.1, "
            "ppl=138.44, num_updates=200, lr=0.00035",
            "2026-12-06 19:28:00 | INFO | train_inner | "
            '{"epoch": 12, "update": 11.2, "loss": "6.5", "num_updates": "300", "marginal_warmup": "1"}',
            "a warning that is not fairseq's | with | pipes | in it",
            "2026-12-06 19:30:00 | INFO | valid | epoch 012 | valid on 'valid' subset | loss 2.491 | ppl 5.62 "
            "| num_updates 2002 | best_ppl 5.62",
            '2026-12-06 19:31:00 | INFO | test | {"test_loss": "11.519", "test_nll_loss": "11.518", '
            '"test_bsz": "1000"}',
            "2026-12-06 19:32:00 | INFO | fairseq.checkpoint_utils | Saved checkpoint /x/checkpoint_best.pt "
            "(epoch 12 @ 2002 updates, score 2.491) (writing took 0.05 seconds)",
            "2026-12-06 19:32:01 | INFO | fairseq.checkpoint_utils | Saved checkpoint /x/checkpoint_last.pt "
            "(epoch 12 @ 2002 updates, score 2.491) (writing took 0.05 seconds)",
        ]
    )
    inner = list(fairseq_log.stats(log, "train_inner"))
    assert [(s.epoch, s.values["loss"], s.values["num_updates"]) for s in inner] == [
        (12, 7.113, 200.0),
        (12, 6.5, 300.0),
    ]
    assert inner[0].values == {"loss": 7.113, "nll_loss": 7.1, "ppl": 138.44, "num_updates": 200.0, "lr": 0.00035}
    assert inner[1].values["marginal_warmup"] == 1.0 and "update" not in inner[1].values
    [valid] = fairseq_log.validations(log).values()
    assert valid.epoch == 12 and valid.values["ppl"] == 5.62 and valid.time == datetime.datetime(2026, 12, 6, 19, 30)
    assert "subset" not in " ".join(valid.values)
    test = fairseq_log.last(log, "test")
    assert test.epoch is None and test.values == {"loss": 11.519, "nll_loss": 11.518, "bsz": 1000.0}
    assert fairseq_log.last(log, "valid").values["best_ppl"] == 5.62
    assert fairseq_log.best_checkpoint_epochs(log) == [12]
    assert [s.tag for s in fairseq_log.stats(log)] == ["train_inner", "train_inner", "valid", "test"]

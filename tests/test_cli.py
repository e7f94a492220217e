"""Through fairseq's own command lines, on a slice of the shipped Multi30k corpus."""

import os
import re
import subprocess

import pytest
import torch

from helpers import PYTHON, REPO, run_cli

USER_DIR = os.path.join(REPO, "fairseq_varattn")
TINY = ["--arch", "varattn_lstm_tiny", "--optimizer", "adam", "--lr", "0.005", "--clip-norm", "5",
        "--max-tokens", "1500", "--seed", "3", "--num-workers", "0", "--log-interval", "5",
        "--log-format", "simple"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi30k")
    run_cli(["fairseq_varattn.prepare_data", "--raw-dir", os.path.join(REPO, "data", "multi30k"),
             "--out", out, "--train-limit", "2000", "--vocab-size", "800", "--workers", "1"])
    return str(out / "bin")


def train(data_dir, save_dir, extra, max_update=30):
    proc = run_cli(["fairseq_cli.train", data_dir, "--user-dir", USER_DIR, *TINY,
                    "--save-dir", save_dir, "--max-update", str(max_update),
                    "--no-epoch-checkpoints", *extra])
    return proc.stdout + proc.stderr


def losses(log, key="loss"):
    return [float(x) for x in re.findall(rf"\| train_inner \|.*? {key}=([0-9.]+)", log)]


def generate(data_dir, ckpt, extra=()):
    proc = run_cli(["fairseq_cli.generate", data_dir, "--user-dir", USER_DIR, "--path", ckpt,
                    "--gen-subset", "valid", "--beam", "5", "--batch-size", "64",
                    "--post-process", "sentencepiece", "--scoring", "sacrebleu", *extra])
    out = proc.stdout + proc.stderr
    match = re.search(r"BLEU = ([0-9.]+)", out)
    assert match, out[-2000:]
    return float(match.group(1)), out


def test_prepare_data_writes_binaries_and_reports_filtering(data_dir):
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            assert os.path.exists(os.path.join(data_dir, f"{split}.de-en.{lang}.bin"))
    with open(os.path.join(os.path.dirname(data_dir), "spm", "valid.en"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 1014 and lines[0].startswith("\u2581")  # sentencepiece pieces


def test_soft_train_generate_bleu_and_reload(data_dir, tmp_path):
    save = str(tmp_path / "soft")
    log = train(data_dir, save, ["--criterion", "cross_entropy", "--max-epoch", "2"], max_update=60)
    train_losses = losses(log)
    assert len(train_losses) >= 4 and train_losses[-1] < train_losses[0] - 1.0, train_losses
    valid = re.findall(r"\| valid on 'valid' subset \| loss ([0-9.]+)", log)
    assert valid, log[-3000:]
    ckpt = os.path.join(save, "checkpoint_last.pt")

    # Checkpoint -> reload -> same validation loss, under torch's default
    # weights_only=True loading (fairseq calls torch.load without the flag).
    proc = run_cli(["fairseq_cli.validate", data_dir, "--user-dir", USER_DIR, "--path", ckpt,
                    "--task", "translation", "--max-tokens", "1500", "--valid-subset", "valid"])
    reloaded = re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", proc.stdout + proc.stderr)
    assert reloaded and float(reloaded[-1]) == pytest.approx(float(valid[-1]), abs=1e-3)

    bleu, out = generate(data_dir, ckpt, ["--print-alignment"])
    assert 0.0 <= bleu <= 100.0
    assert re.search(r"^A-\d+\t\d+-\d+", out, re.M), "no alignment lines printed"


def test_checkpoint_loads_with_weights_only_and_needs_the_safe_globals(data_dir, tmp_path):
    save = str(tmp_path / "cat")
    train(data_dir, save, ["--attention", "categorical", "--inference-network", "birnn",
                           "--criterion", "varattn_elbo", "--disable-validation"], max_update=2)
    ckpt = os.path.join(save, "checkpoint_last.pt")
    code = "import torch,sys; torch.load(sys.argv[1]); print('loaded')"
    bare = subprocess.run([PYTHON, "-c", code, ckpt], capture_output=True, text=True)
    assert bare.returncode != 0 and "weights_only" in bare.stderr, "list would be unnecessary"
    with_plugin = subprocess.run([PYTHON, "-c", "import fairseq_varattn;" + code, ckpt],
                                 capture_output=True, text=True, cwd=REPO)
    assert with_plugin.returncode == 0 and "loaded" in with_plugin.stdout, with_plugin.stderr[-2000:]
    state = torch.load(ckpt)  # this process imported the plugin via helpers
    assert state["cfg"]["model"].arch == "varattn_lstm_tiny"


def test_missing_data_dir_is_a_clear_error(tmp_path):
    proc = run_cli(["fairseq_cli.train", str(tmp_path / "nope"), "--user-dir", USER_DIR, *TINY,
                    "--source-lang", "de", "--target-lang", "en", "--criterion", "cross_entropy"],
                   check=False)
    assert proc.returncode != 0
    assert "No such file" in proc.stderr and "dict.de.txt" in proc.stderr


def test_unknown_attention_value_is_a_clear_error(data_dir, tmp_path):
    proc = run_cli(["fairseq_cli.train", data_dir, "--user-dir", USER_DIR, *TINY,
                    "--attention", "sparse", "--criterion", "cross_entropy"], check=False)
    assert proc.returncode != 0
    assert "--attention: invalid choice: 'sparse'" in proc.stderr


def test_prepare_data_rejects_a_missing_split(tmp_path):
    (tmp_path / "train.de").write_text("ein Hund\n")
    (tmp_path / "train.en").write_text("a dog\n")
    proc = run_cli(["fairseq_varattn.prepare_data", "--raw-dir", tmp_path, "--out", tmp_path / "o"],
                   check=False)
    assert proc.returncode != 0 and "no val.de or val.de.gz" in proc.stderr

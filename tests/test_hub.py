"""The Python interface (fairseq_varattn.hub) and fairseq-interactive on raw text,
against the batch paths they must agree with, on a model trained on real sentences."""

import gzip
import os
import re
import shutil
import subprocess

import pytest
import torch
from helpers import PYTHON, REPO, run_cli

from fairseq_varattn import alignments, hub

USER_DIR = os.path.join(REPO, "fairseq_varattn")
TRAIN = ["--user-dir", USER_DIR, "--arch", "varattn_lstm_tiny", "--optimizer", "adam", "--lr", "0.005",
         "--clip-norm", "5", "--max-tokens", "1500", "--seed", "3", "--num-workers", "0",
         "--required-batch-size-multiple", "1", "--disable-validation", "--no-epoch-checkpoints"]
SENTENCES = 8


def raw_test(lang, n=SENTENCES):
    with gzip.open(os.path.join(REPO, "data", "multi30k", f"test_2016_flickr.{lang}.gz"), "rt",
                   encoding="utf-8") as f:
        return f.read().splitlines()[:n]


def model_dir(data_dir, tmp_path_factory, name, options, updates):
    """A fairseq model directory: checkpoint, dictionaries, sentencepiece.bpe.model."""
    out = tmp_path_factory.mktemp(name)
    run_cli(["fairseq_cli.train", data_dir, *TRAIN, *options, "--max-update", str(updates), "--save-dir", out])
    shutil.copy(out / "checkpoint_last.pt", out / "checkpoint_best.pt")
    for lang in ("de", "en"):
        shutil.copy(os.path.join(data_dir, f"dict.{lang}.txt"), out)
    shutil.copy(os.path.join(os.path.dirname(data_dir), "spm.model"), out / "sentencepiece.bpe.model")
    return str(out)


@pytest.fixture(scope="module")
def variational(data_dir, tmp_path_factory):
    # enough updates that the alignment is no longer uniform (checked below)
    return model_dir(data_dir, tmp_path_factory, "elbo", ["--attention", "categorical", "--inference-network",
                                                          "birnn", "--criterion", "varattn_elbo"], 150)


@pytest.fixture(scope="module")
def soft(data_dir, tmp_path_factory):
    return model_dir(data_dir, tmp_path_factory, "soft", ["--criterion", "cross_entropy"], 20)


def test_translate_is_fairseq_generate_on_the_same_sentences(variational, data_dir):
    model = hub.from_pretrained(variational)
    got = model.translate(raw_test("de"), beam=5)
    proc = run_cli(["fairseq_cli.generate", data_dir, "--user-dir", USER_DIR, "--path",
                    os.path.join(variational, "checkpoint_best.pt"), "--gen-subset", "test", "--beam", "5",
                    "--batch-size", "16", "--post-process", "sentencepiece", "--required-batch-size-multiple", "1"])
    generated = dict(re.findall(r"^D-(\d+)\t\S+\t(.*)$", proc.stdout, re.M))
    assert got == [generated[str(i)] for i in range(SENTENCES)]


def test_align_equals_the_alignment_tool_on_the_binarised_test_set(variational, data_dir):
    """Raw text through the hub and the binarised test split through the batch
    path of varattn-align give the same matrices, for every kind."""
    from fairseq import checkpoint_utils

    from varattn_tools.align import alignments_of

    model = hub.from_pretrained(variational)
    assert model.alignment_kinds() == ["attention", "q", "posterior"]
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [os.path.join(variational, "checkpoint_best.pt")], arg_overrides={"data": data_dir})
    batch = alignments_of(models[0].eval(), task, "test", SENTENCES)
    labels = {"attention": "categorical prior p(z|x)", "q": "posterior q(z|x,y)",
              "posterior": "exact posterior p(z|x,y)"}
    sharp = 0
    for sid, (src, tgt) in enumerate(zip(raw_test("de"), raw_test("en"))):
        rec = batch[sid]
        for kind in model.alignment_kinds():
            got = model.align(src, tgt, kind=kind)
            assert got.source == src.split() and got.target == tgt.split()
            pieces = rec["panels"][labels[kind]]
            pieces = pieces / pieces.sum(1, keepdim=True)
            want = alignments.word_matrix(pieces, alignments.word_ids(rec["tgt"]), alignments.word_ids(rec["src"]))
            torch.testing.assert_close(got.weights, want, atol=1e-4, rtol=1e-4)
            assert torch.allclose(got.weights.sum(1), torch.ones(len(got.target)), atol=1e-5)
            sharp += float(got.weights.max(1).values.mean() > 2.0 / len(got.source))
    assert sharp > SENTENCES  # trained: most alignments are far from uniform


def test_align_output_and_defaults(variational):
    model = hub.from_pretrained(variational)
    pairs = model.align(raw_test("de", 3), raw_test("en", 3))
    assert [p.kind for p in pairs] == ["posterior"] * 3  # the default for categorical attention
    links = pairs[0].links()
    assert [j for _, j in links] == list(range(len(pairs[0].target)))  # one link per target word
    assert pairs[0].pharaoh() == " ".join(f"{i}-{j}" for i, j in links)
    assert all(0 <= i < len(pairs[0].source) for i, _ in links)


def test_from_pretrained_on_the_model_class_and_errors(variational, soft, tmp_path):
    from fairseq_varattn.models.varattn_lstm import VarAttnLSTMModel

    model = VarAttnLSTMModel.from_pretrained(soft)
    assert isinstance(model, hub.VarAttnHubInterface)
    assert model.alignment_kinds() == ["attention"]
    assert model.align("Ein Hund .", "A dog .").kind == "attention"
    with pytest.raises(ValueError, match="has no posterior alignment: it has attention"):
        model.align("Ein Hund .", "A dog .", kind="posterior")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.from_pretrained(str(tmp_path / "nope"))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(variational, "checkpoint_best.pt"), bare)
    with pytest.raises(FileNotFoundError, match="no fairseq dictionaries"):
        hub.from_pretrained(str(bare))


def test_interactive_on_raw_text_prints_translations_and_alignments(variational):
    """The README's fairseq-interactive command: raw German in, detokenised
    English and A- lines out, the same translations as the hub."""
    ckpt = os.path.join(variational, "checkpoint_best.pt")
    src = raw_test("de", 3)
    proc = subprocess.run([PYTHON, "-m", "fairseq_cli.interactive", variational, "--user-dir", USER_DIR,
                           "--path", ckpt, "--beam", "5", "--source-lang", "de", "--target-lang", "en",
                           "--bpe", "sentencepiece", "--sentencepiece-model",
                           os.path.join(variational, "sentencepiece.bpe.model"), "--print-alignment"],
                          input="\n".join(src) + "\n", capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    detok = re.findall(r"^D-\d+\t\S+\t(.*)$", proc.stdout, re.M)
    assert detok == hub.from_pretrained(variational).translate(src, beam=5)
    assert len(re.findall(r"^A-\d+\t(\d+-\d+ ?)+$", proc.stdout, re.M)) == 3

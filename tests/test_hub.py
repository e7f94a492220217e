"""The Python interface (fairseq_varattn.hub) and fairseq-interactive on raw text,
against the batch paths they must agree with, on a model trained on real sentences."""

import gzip
import os
import re
import shutil
import subprocess

import pytest
import torch
from helpers import PYTHON, REPO, TINY_TRAIN, USER_DIR, run_cli

from fairseq_varattn import alignments, hub

TRAIN = ["--user-dir", USER_DIR, *TINY_TRAIN, "--disable-validation", "--no-epoch-checkpoints"]
SENTENCES = 8
# one worker trains the module's two models and runs its tests (scripts/test.sh: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("hub_models")


def raw_test(lang, n=SENTENCES):
    with gzip.open(os.path.join(REPO, "data", "multi30k", f"test_2016_flickr.{lang}.gz"), "rt", encoding="utf-8") as f:
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


ELBO = ["--attention", "categorical", "--inference-network", "birnn", "--criterion", "varattn_elbo"]


@pytest.fixture(scope="module")
def variational(data_dir, tmp_path_factory):
    # enough updates that the alignment is no longer uniform (checked below)
    return model_dir(
        data_dir,
        tmp_path_factory,
        "elbo",
        ELBO,
        150,
    )


@pytest.fixture(scope="module")
def reverse(data_dir, tmp_path_factory):
    """The variational model's options trained English to German."""
    return model_dir(
        data_dir,
        tmp_path_factory,
        "elbo-ende",
        [*ELBO, "--source-lang", "en", "--target-lang", "de"],
        150,
    )


@pytest.fixture(scope="module")
def soft(data_dir, tmp_path_factory):
    return model_dir(data_dir, tmp_path_factory, "soft", ["--criterion", "cross_entropy"], 20)


def test_translate_is_fairseq_generate_on_the_same_sentences(variational, data_dir):
    model = hub.from_pretrained(variational)
    got = model.translate(raw_test("de"), beam=5)
    proc = run_cli(
        [
            "fairseq_cli.generate",
            data_dir,
            "--user-dir",
            USER_DIR,
            "--path",
            os.path.join(variational, "checkpoint_best.pt"),
            "--gen-subset",
            "test",
            "--beam",
            "5",
            "--batch-size",
            "16",
            "--post-process",
            "sentencepiece",
            "--required-batch-size-multiple",
            "1",
        ]
    )
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
        [os.path.join(variational, "checkpoint_best.pt")], arg_overrides={"data": data_dir}
    )
    batch = alignments_of(models[0].eval(), task, "test", SENTENCES)
    labels = {
        "attention": "categorical prior p(z|x)",
        "q": "posterior q(z|x,y)",
        "posterior": "exact posterior p(z|x,y)",
    }
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
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "fairseq_cli.interactive",
            variational,
            "--user-dir",
            USER_DIR,
            "--path",
            ckpt,
            "--beam",
            "5",
            "--source-lang",
            "de",
            "--target-lang",
            "en",
            "--bpe",
            "sentencepiece",
            "--sentencepiece-model",
            os.path.join(variational, "sentencepiece.bpe.model"),
            "--print-alignment",
        ],
        input="\n".join(src) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    detok = re.findall(r"^D-\d+\t\S+\t(.*)$", proc.stdout, re.M)
    assert detok == hub.from_pretrained(variational).translate(src, beam=5)
    assert len(re.findall(r"^A-\d+\t(\d+-\d+ ?)+$", proc.stdout, re.M)) == 3


def test_batched_align_equals_one_pair_at_a_time(variational):
    model = hub.from_pretrained(variational)
    src, tgt = raw_test("de"), raw_test("en")
    batched = model.align(src, tgt, batch_size=32)  # left-padded sources, right-padded targets
    for s, t, got in zip(src, tgt, batched):
        torch.testing.assert_close(got.weights, model.align(s, t).weights, atol=1e-5, rtol=1e-5)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_word_align_command_writes_one_line_per_pair_in_order(variational, soft, data_dir, tmp_path):
    src, tgt = raw_test("de", 30), raw_test("en", 30)
    src[5] = ""  # an empty side: an empty line, nothing dropped
    args = [
        "varattn_tools.word_align",
        variational,
        "--source",
        _write(tmp_path / "src", src),
        "--target",
        _write(tmp_path / "tgt", tgt),
        "--batch-size",
        "7",
    ]
    proc = run_cli([*args, "--out", tmp_path / "hard"])
    assert "30/30" not in proc.stderr and "29/29 pairs aligned" in proc.stderr  # progress output
    lines = (tmp_path / "hard").read_text().splitlines()
    assert len(lines) == 30 and lines[5] == ""
    model = hub.from_pretrained(variational)
    for k in (0, 6, 29):
        assert lines[k] == model.align(src[k], tgt[k]).pharaoh()
    # a binarised split gives the same lines as its raw text
    run_cli(
        ["varattn_tools.word_align", variational, "--data", data_dir, "--subset", "test", "--out", tmp_path / "split"]
    )
    split = (tmp_path / "split").read_text().splitlines()
    assert len(split) == 100 and [x for k, x in enumerate(split[:30]) if k != 5] == lines[:5] + lines[6:]
    run_cli([*args, "--out", tmp_path / "soft", "--soft", "--kind", "q", "--min-weight", "0.05"])
    soft_lines = (tmp_path / "soft").read_text().splitlines()
    q = model.align(src[0], tgt[0], kind="q")
    weights = {}
    for item in soft_lines[0].split():
        link, weight = item.split(":")
        weights[tuple(map(int, link.split("-")))] = float(weight)
    assert all(w >= 0.05 for w in weights.values())
    for i, j in q.links():  # each target word's most probable source word is among its soft links
        assert weights[(i, j)] == pytest.approx(float(q.weights[j, i]), abs=1e-3)
    # errors a user can act on
    wrong_kind = run_cli(
        [
            "varattn_tools.word_align",
            soft,
            "--source",
            tmp_path / "src",
            "--target",
            tmp_path / "tgt",
            "--out",
            tmp_path / "x",
            "--kind",
            "posterior",
        ],
        check=False,
    )
    assert wrong_kind.returncode != 0 and "this checkpoint has attention" in wrong_kind.stderr
    short = run_cli([*args[:5], _write(tmp_path / "short", tgt[:10]), "--out", tmp_path / "x"], check=False)
    assert short.returncode != 0 and "has 30 lines but" in short.stderr
    other = tmp_path / "other-dicts"
    other.mkdir()
    for lang in ("de", "en"):
        symbols = open(os.path.join(variational, f"dict.{lang}.txt"), encoding="utf-8").read().splitlines()
        _write(other / f"dict.{lang}.txt", [symbols[1], symbols[0], *symbols[2:]])
    mismatch = run_cli([*args, "--out", tmp_path / "x", "--data", other], check=False)
    assert mismatch.returncode != 0 and "match the checkpoint's" in mismatch.stderr, mismatch.stderr[-1500:]


def test_word_alignment_benchmark_runs_eflomal_and_a_model(variational, tmp_path):
    pytest.importorskip("eflomal")  # installed by scripts/setup_venv.sh (the [bench] extra)
    out = tmp_path / "wa"
    proc = subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "benchmarks", "word_alignment.py"),
            "--train-lines",
            "500",
            "--test-lines",
            "27",
            "--model",
            f"elbo={variational}",
            "--data",
            variational,
            "--sentencepiece-model",
            os.path.join(variational, "sentencepiece.bpe.model"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["row"].split(" (")[0]: r for r in result["rows"]}
    assert set(rows) == {
        "eflomal, de→en",
        "eflomal, en→de",
        "eflomal, intersection",
        "eflomal, union",
        "eflomal, grow-diag-final-and",
        "elbo, attention, de→en",
        "elbo, q, de→en",
        "elbo, posterior, de→en",
    }
    assert result["gold_sentences"] == 102
    for r in rows.values():
        assert 0 <= r["aer_low"] <= r["aer"] <= r["aer_high"] <= 1
    # the intersection is the most precise, the union has the best recall
    assert rows["eflomal, intersection"]["precision"] >= rows["eflomal, union"]["precision"]
    assert rows["eflomal, union"]["recall"] >= rows["eflomal, grow-diag-final-and"]["recall"]
    # a statistical aligner on 500 pairs already aligns better than chance
    assert rows["eflomal, grow-diag-final-and"]["aer"] < 0.5
    # every model row is tested against eflomal's grow-diag-final-and, paired over sentences
    for name, r in rows.items():
        assert ("p_vs_eflomal" in r) == (not name.startswith("eflomal")), name
    gap = rows["elbo, posterior, de→en"]["aer"] - rows["eflomal, grow-diag-final-and"]["aer"]
    assert gap > 0.2 and rows["elbo, posterior, de→en"]["p_vs_eflomal"] < 0.01, (gap, rows["elbo, posterior, de→en"])
    assert "| p (vs eflomal's grow-diag-final-and) |" in out.with_name("wa-summary.md").read_text()


def test_agreement_is_the_renormalised_product_of_both_directions():
    """agreement(F, R)[j, i] is F[j, i] R[i, j] renormalised over i: the word
    that both directions support wins even where one direction prefers another."""
    forward = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])  # 3 target words over 2 source words
    reverse = torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.1, 0.2]])  # 2 source words over 3 target words
    got = alignments.agreement(forward, reverse)
    want = forward * reverse.t()
    torch.testing.assert_close(got, want / want.sum(1, keepdim=True))
    assert alignments.hard_links(got) == {(1, 0), (0, 1), (1, 2)}  # target word 0: forward alone says 0
    with pytest.raises(ValueError, match="align the same pair"):
        alignments.agreement(forward, reverse.t())


def test_word_align_combines_a_reverse_model_by_agreement(variational, reverse, tmp_path):
    src, tgt = raw_test("de", 12), raw_test("en", 12)
    args = ["varattn_tools.word_align", variational, "--source", _write(tmp_path / "src", src)]
    args += ["--target", _write(tmp_path / "tgt", tgt), "--reverse-model", reverse]
    run_cli([*args, "--out", tmp_path / "agreed"])
    lines = (tmp_path / "agreed").read_text().splitlines()
    forward, backward = hub.from_pretrained(variational), hub.from_pretrained(reverse)
    assert backward.alignment_kinds() == forward.alignment_kinds()
    differ = 0
    for k in range(len(src)):
        f, r = forward.align(src[k], tgt[k]), backward.align(tgt[k], src[k])
        combined = f.agreement(r)
        assert combined.kind == "posterior agreement" and combined.weights.shape == f.weights.shape
        torch.testing.assert_close(combined.weights.sum(1), torch.ones(len(f.target)))
        assert lines[k] == combined.pharaoh()
        differ += combined.pharaoh() != f.pharaoh()
    assert differ > 0, "the reverse direction changed no link: the test would not see it ignored"
    same = run_cli([*args[:-1], variational, "--out", tmp_path / "x"], check=False)
    assert same.returncode != 0 and "the reverse model must translate en->de" in same.stderr

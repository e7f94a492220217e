"""The comparison pipeline (examples/translation/reproduce.py) and the alignment tools."""

import argparse
import csv
import gzip
import json
import math
import os
import pathlib
import re
import subprocess

import pytest
import torch
from helpers import PYTHON, REPO, cli_env, example_module, run_cli

from varattn_tools.align import (
    EXACT_PANEL,
    Q_PANEL,
    alignment_error_rate,
    hard_links,
    parse_pharaoh,
    read_gold,
    summarise,
    word_ids,
    word_matrix,
)
from varattn_tools.variants import VARIANTS

GOLD = os.path.join(REPO, "examples", "translation", "gold", "test_2016_flickr.de-en.pharaoh")


def test_pharaoh_parsing_separates_sure_and_possible_links():
    sure, possible = parse_pharaoh("0-0 2?1 3-2")
    assert sure == {(0, 0), (3, 2)}
    assert possible == {(0, 0), (2, 1), (3, 2)}
    with pytest.raises(ValueError, match="bad Pharaoh link"):
        parse_pharaoh("0-0 1:2")


def test_aer_on_hand_made_alignments():
    sure, possible = {(0, 0), (1, 2)}, {(0, 0), (1, 2), (2, 2)}
    assert alignment_error_rate([(sure, sure, possible)]) == 0.0
    # a possible-only link costs nothing: 1 - (1 + 2) / (2 + 1)
    assert alignment_error_rate([({(0, 0), (2, 2)}, {(0, 0)}, {(0, 0), (2, 2)})]) == pytest.approx(0.0)
    # one of two right: 1 - (1 + 1) / (2 + 2)
    assert alignment_error_rate([({(0, 0), (1, 1)}, sure, possible)]) == pytest.approx(0.5)
    assert alignment_error_rate([({(5, 5)}, sure, possible)]) == pytest.approx(1.0)
    # corpus-level: counts are pooled, not sentence AERs averaged
    pooled = alignment_error_rate([(sure, sure, possible), ({(5, 5)}, {(0, 0)}, {(0, 0)})])
    assert pooled == pytest.approx(1 - (2 + 2) / (3 + 3))


def test_pieces_become_words_and_rows_stay_distributions():
    src = ["\u2581Ein", "\u2581Hund", "e", "."]
    tgt = ["\u2581A", "\u2581do", "g", "s"]
    assert word_ids(src) == [0, 1, 1, 1]
    attn = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.5, 0.0], [0.2, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    words = word_matrix(attn, word_ids(tgt), word_ids(src))
    torch.testing.assert_close(words, torch.tensor([[0.7, 0.3], [(0.0 + 0.2 + 0.0) / 3, (1.0 + 0.8 + 1.0) / 3]]))
    assert hard_links(words) == {(0, 0), (1, 1)}


def test_summary_rows_name_each_panels_role():
    """Scripts (converge.py) pick AERs by role, not by display label; AER
    is scored per panel against the gold links."""
    sharp = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    flat = torch.full((2, 2), 0.5)
    aligned = {
        0: {
            "src": ["\u2581a", "\u2581b"],
            "tgt": ["\u2581x", "\u2581y"],
            "panels": {"categorical prior p(z|x)": flat, Q_PANEL: sharp, EXACT_PANEL: sharp.flip(1)},
        }
    }
    gold = [({(0, 0), (1, 1)}, {(0, 0), (1, 1)})]
    rows = {r["role"]: r for r in summarise("m", aligned, gold)}
    assert set(rows) == {"attention", "q", "exact_posterior"}
    assert rows["attention"]["alignment"] == "categorical prior p(z|x)"
    assert rows["q"]["aer"] == 0.0 and rows["exact_posterior"]["aer"] == 1.0


def test_shipped_gold_alignments_fit_the_raw_test_sentences():
    gold = read_gold(GOLD)
    with gzip.open(os.path.join(REPO, "data", "multi30k", "test_2016_flickr.de.gz"), "rt") as f:
        de = f.read().splitlines()
    with gzip.open(os.path.join(REPO, "data", "multi30k", "test_2016_flickr.en.gz"), "rt") as f:
        en = f.read().splitlines()
    scored = [i for i, g in enumerate(gold) if g is not None]
    assert len(scored) >= 100  # the issue asked for at least 100 (GUIDELINES.md)
    for i in scored:
        _, possible = gold[i]
        assert all(s < len(de[i].split()) and t < len(en[i].split()) for s, t in possible), i


ALL_VARIANTS = list(VARIANTS)


def _converge_module():
    return example_module("converge")


def _run_pipeline(data_dir, out, variants, output_layer="joint"):
    proc = subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "examples", "translation", "reproduce.py"),
            "--data",
            data_dir,
            "--out",
            str(out),
            "--variants",
            ",".join(variants),
            "--output-layers",
            output_layer,
            "--seeds",
            "1",
            "--max-update",
            "2",
            "--max-tokens",
            "1500",
            "--alignments",
            "--gold",
            GOLD,
            # untrained models rarely emit </s>: bound the output length
            "--generate-args",
            "--max-len-a 1.2 --max-len-b 10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_key = example_module("reproduce").run_key  # the row names reproduce.py gives
    variants = [run_key(name, output_layer) for name in variants]
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == variants
    for r in rows:
        for key in ("valid_ppl", "test_ppl", "train_wps", "peak_rss_mb"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (r["variant"], key, r[key])
    table = (out / "results.md").read_text()
    for name in variants:
        assert re.search(rf"^\| {name}( \(IS ppl\))? \| 1 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", table, re.M), name
    return table


def test_quick_pipeline_on_a_tiny_budget_writes_a_well_formed_table(data_dir, tmp_path):
    """Two variants (soft attention and a variational model) with the factored output
    layer keep the default suite fast (beam search through the joint layer's enumeration
    took 93 of this test's 190 s); the slow test below runs all nine with the joint layer."""
    out = tmp_path / "reproduce"
    table = _run_pipeline(data_dir, out, ["soft", "elbo-enum"], output_layer="factored")
    # alignments: heatmaps and AER on the hand-aligned test sentences
    assert (out / "alignments" / "sentence-0.png").stat().st_size > 1000
    # AER [its 95% bootstrap interval] (sentences: the 97 gold-aligned ones of the 100 test sentences)
    aer = r"[0-9.]+ \[[0-9.]+, [0-9.]+\] \(97\)"
    assert re.search(r"\| soft-factored \| soft attention \| [0-9.]+ \| [0-9.]+ \| " + aer + r" \|", table)
    assert re.search(r"\| elbo-enum \| posterior q\(z\|x,y\) \| [0-9.]+ \| [0-9.]+ \| " + aer + r" \|", table)


@pytest.mark.slow
def test_quick_pipeline_runs_every_variant(data_dir, tmp_path):
    _run_pipeline(data_dir, tmp_path / "reproduce", ALL_VARIANTS)


def test_alignments_command_rejects_a_missing_checkpoint(data_dir, tmp_path):
    proc = run_cli(
        ["varattn_tools.align", data_dir, "--path", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")],
        check=False,
    )
    assert proc.returncode != 0 and "does not exist" in proc.stderr + proc.stdout


def test_ablation_table_names_its_preset_and_reads_fairseq_validation_lines(tmp_path):
    """ablate.py --table-only on a training log as fairseq writes it: the table
    says which preset the rows were trained with, and carries the log's numbers."""
    log = tmp_path / "ablate" / "marginal" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-11-29 16:41:54 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 7.02 | "
        "nll_loss 7.02 | entropy_p 4.232 | entropy_post 4.186 | entropy_uniform 4.442 | prior_maxp 0.119 | "
        "score_spread 0.415 | logpy_spread 0.199 | annot_spread 0.538 | ppl 129.75 | wps 73 | "
        "num_updates 250\n"
    )
    results = tmp_path / "ablate-iwslt.md"
    subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "examples", "translation", "ablate.py"),
            "--preset",
            "iwslt",
            "--only",
            "marginal",
            "--table-only",
            "--out",
            str(tmp_path / "ablate"),
            "--results",
            str(results),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    table = results.read_text()
    assert (
        f"`python examples/translation/ablate.py --preset iwslt --only marginal --out {tmp_path / 'ablate'} "
        f"--results {results}`"
    ) in table
    assert "varattn_lstm_iwslt_de_en" in table
    assert re.search(
        r"^\| marginal \| 250 \| 129.75 \| 4.232 \| 4.442 \| 0.119 \| 4.186 \| 0.199 \| - \| - \|$", table, re.M
    ), table
    assert "concentration" not in table  # a Dirichlet column only where a Dirichlet row fills it


def test_ablation_table_keeps_every_row_trained_in_its_directory_whatever_only_says(tmp_path):
    """--only picks what to train: the rows already in --out stay in the
    table (a later --only run once replaced the whole table with its own
    rows), in ABLATIONS' order, and the header's command names them all;
    a Dirichlet row shows the prior's total concentration."""
    for name, extra in (("dirichlet-factored", "| prior_concentration 76.1 "), ("soft", "")):
        log = tmp_path / "ablate" / name / "train.log"
        log.parent.mkdir(parents=True)
        log.write_text(
            "2026-11-29 16:41:54 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 7.02 | "
            f"prior_maxp 0.086 {extra}| ppl 129.75 | num_updates 250\n"
        )
    results = tmp_path / "ablate.md"
    subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "examples", "translation", "ablate.py"),
            "--only",
            "soft",
            "--table-only",
            "--out",
            str(tmp_path / "ablate"),
            "--results",
            str(results),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    table = results.read_text()
    assert re.findall(r"^\| ([a-z-]+) \| 250 \|", table, re.M) == ["soft", "dirichlet-factored"], table
    assert "--only soft,dirichlet-factored " in table
    assert re.search(r"^\| dirichlet-factored \| 250 \|.* \| 76.1 \|$", table, re.M), table
    assert "differential entropies" in table


def test_ablation_table_keeps_the_shared_points_of_a_row_trained_further(tmp_path):
    """A row resumed to more updates than the others keeps the early points,
    every 1000th and its own last; the points in between are left out."""
    log = tmp_path / "ablate" / "marginal" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "".join(
            f"2026-11-29 16:41:54 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 7.02 | "
            f"entropy_p {4 - u / 1000:.3f} | ppl {100 - u / 100:.2f} | num_updates {u}\n"
            for u in (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250)
        )
    )
    results = tmp_path / "ablate.md"
    subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "examples", "translation", "ablate.py"),
            "--only",
            "marginal",
            "--table-only",
            "--out",
            str(tmp_path / "ablate"),
            "--results",
            str(results),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    updates = re.findall(r"^\| marginal \| (\d+) \|", results.read_text(), re.M)
    assert updates == ["250", "500", "1000", "2000", "2250"]


DONE_LINE = "2026-11-29 10:43:44 | INFO | fairseq_cli.train | done training in 1861.4 seconds"
EARLY_STOP_LINE = (
    "2026-11-29 10:43:44 | INFO | fairseq_cli.train | early stop since valid performance "
    "hasn't improved for last 3 runs"
)


def _epoch_lines(first, last, ppl=5.0):
    """A fairseq training log's lines for epochs first..last, as fairseq writes them."""
    lines = []
    for e in range(first, last + 1):
        lines += [
            f"2026-11-29 10:41:03 | INFO | fairseq.trainer | begin training epoch {e}",
            f"2026-11-29 10:43:44 | INFO | valid | epoch {e:03d} | valid on 'valid' subset | loss 2.36 | "
            f"ppl {ppl - 0.01 * e:.2f} | wps 6043.8 | num_updates {182 * e} | best_ppl 5.13",
            f"2026-11-29 10:43:44 | INFO | train | epoch {e:03d} | loss 2.02 | ppl 4.06 | wps 2816.9 | "
            f"num_updates {182 * e}",
        ]
    return lines


def test_runs_stopped_by_a_lower_epoch_cap_resume_and_runs_stopped_by_patience_do_not():
    """converge.py reads how a (resumed, appended-to) training log ended: a run
    that stopped at the old 30-epoch cap trains on under MAX_EPOCH; one that
    early-stopped, or reached today's cap, is finished; one resumed after the
    cap and cut off mid-epoch is still training."""
    converge = _converge_module()
    cap30 = "\n".join([*_epoch_lines(1, 30), DONE_LINE])
    cases = {
        "cut off mid-epoch": ("\n".join(_epoch_lines(1, 12)[:-1]), "training", True),
        "stopped by the old cap": (cap30, "cap", True),
        "stopped by patience": ("\n".join([*_epoch_lines(1, 17), EARLY_STOP_LINE, DONE_LINE]), "patience", False),
        "stopped by today's cap": ("\n".join([*_epoch_lines(1, converge.MAX_EPOCH), DONE_LINE]), "cap", False),
        "resumed after the cap, cut off": ("\n".join([cap30, *_epoch_lines(31, 33)[:-1]]), "training", True),
        "resumed after the cap, then patience": (
            "\n".join([cap30, *_epoch_lines(31, 35), EARLY_STOP_LINE, DONE_LINE]),
            "patience",
            False,
        ),
    }
    assert converge.MAX_EPOCH > 30
    for what, (text, status, train) in cases.items():
        assert converge.training_status(text) == status, what
        assert converge.needs_training(text, converge.MAX_EPOCH) == train, what
    assert converge.parse_training(cases["resumed after the cap, then patience"][0])["epochs_run"] == 35


def test_status_says_where_each_run_stands(tmp_path, monkeypatch):
    converge = _converge_module()
    opts = argparse.Namespace(work=str(tmp_path))
    assert converge.progress("soft", 99, opts).startswith("soft seed 99: not started")
    # how long a finished seed of the row trained, to plan a run into a machine's time
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    assert converge.progress("soft", 99, opts) == "soft seed 99: not started"
    (tmp_path / "results" / "soft-seed2.json").write_text(
        json.dumps({"variant": "soft", "seed": 2, "train_seconds": 9000})
    )
    assert converge.progress("soft", 99, opts) == (
        "soft seed 99: not started (seed 2 trained for 2.5 h, sharing the cores with other work)"
    )
    (tmp_path / "soft-seed99").mkdir()
    (tmp_path / "soft-seed99" / "train.log").write_text("\n".join(_epoch_lines(1, 7)[:-1]))
    assert converge.progress("soft", 99, opts).startswith(
        "soft seed 99: training or interrupted, epoch 7, valid PPL 4.93, best checkpoint epoch 7 "
        "(valid PPL 4.93, 0 epochs ago; patience 3)"
    )
    worse = _epoch_lines(8, 9, ppl=5.6)  # 5.52, 5.51: the best stays epoch 7's
    (tmp_path / "soft-seed99" / "train.log").write_text("\n".join([*_epoch_lines(1, 7), *worse]))
    assert converge.progress("soft", 99, opts).startswith(
        "soft seed 99: training or interrupted, epoch 9, valid PPL 5.51, best checkpoint epoch 7 "
        "(valid PPL 4.93, 2 epochs ago; patience 3)"
    )
    (tmp_path / "soft-seed99" / "train.log").write_text("\n".join([*_epoch_lines(1, 30), DONE_LINE]))
    assert "stopped at a lower cap, resumes under the" in converge.progress("soft", 99, opts)
    # a latent run says how sharp its prior is (a Dirichlet's differential entropy is left out)
    latent = "\n".join(_epoch_lines(1, 2)).replace(
        "| loss 2.36 |", "| loss 2.36 | kl 0.001 | entropy_p 0.051 | entropy_uniform 4.109 | prior_maxp 0.991 |"
    )
    for name, sharpness in (
        ("rws", "prior entropy 0.051 bits (uniform 4.109), largest prior weight 0.991"),
        ("dirichlet", "largest prior weight 0.991"),
    ):
        (tmp_path / f"{name}-seed99").mkdir()
        (tmp_path / f"{name}-seed99" / "train.log").write_text(latent)
        assert converge.progress(name, 99, opts).startswith(
            f"{name} seed 99: training or interrupted, epoch 2, valid PPL 4.98, {sharpness}, best checkpoint epoch 2"
        )


def test_every_converge_row_trains_with_options_fairseq_accepts(tmp_path):
    """Each row's fairseq-train options parse (a typo in a row's own options
    would otherwise surface hours into ``converge.py run``) under early
    stopping; only rws-warmup has a fixed warm-up and only rws-centred
    centres its weights; the LSTM rows with q keep the options they were
    trained with (no automatic warm-up, trained annotations), the
    Transformer rows take varattn_transformer's and the criterion's defaults."""
    from fairseq import options

    from varattn_tools import rows

    converge = _converge_module()
    for lang in ("de", "en"):  # parsing reads nothing but that the dictionaries are there
        (tmp_path / f"dict.{lang}.txt").write_text("")
    parsed = {
        name: options.parse_args_and_arch(
            options.get_training_parser(),
            input_args=[
                str(tmp_path),
                "--user-dir",
                os.path.join(REPO, "fairseq_varattn"),
                *converge.train_options(name),
            ],
        )
        for name in converge.PLAN
    }
    for name, args in parsed.items():
        assert args.max_epoch == converge.epoch_cap(name) == converge.MAX_EPOCH, name
        assert args.patience == converge.PATIENCE, name
        warmed = "--marginal-warmup-updates" in rows.ROW_OPTIONS.get(name, [])
        assert getattr(args, "marginal_warmup_updates", 0) == (546 if warmed else 0), name
        assert getattr(args, "centred_weights", False) == (name == "rws-centred"), name
        with_q = getattr(args, "inference_network", "none") != "none"
        if name.startswith("transformer-"):
            assert (args.output_layer, args.output_activation) == ("factored", "linear"), name
            assert getattr(args, "latent_warmup", "auto") == "auto", name
            assert getattr(args, "inference_annotations", "detached") == "detached", name
        elif with_q:
            assert (args.latent_warmup, args.inference_annotations) == ("off", "trained"), name
    args = parsed["transformer-elbo-enum"]
    assert (args.arch, args.criterion, args.estimator) == ("varattn_transformer", "varattn_elbo", "enum")


def test_scripts_keep_freed_memory_in_the_heap_unless_the_user_says_otherwise(monkeypatch):
    from varattn_tools.experiments import cpu_env

    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    env = cpu_env(threads=1)
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # and the child sees it: glibc reads these at start-up
    out = subprocess.run(
        [PYTHON, "-c", "import os; print(os.environ['MALLOC_MMAP_MAX_'])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "0"


def test_a_run_another_process_is_training_is_skipped(tmp_path, capsys):
    """Two `converge.py run` at once must not train one run twice into the same
    directory: the second finds the run's lock held and skips it."""
    import fcntl

    converge = _converge_module()
    opts = argparse.Namespace(work=str(tmp_path))
    work = tmp_path / "soft-seed99"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert converge.run_one("soft", 99, opts, env={}) is None
    assert "another process is training it" in capsys.readouterr().out
    assert not (work / "train.log").exists()


def test_best_epoch_is_the_epoch_of_the_last_saved_best_checkpoint():
    """fairseq logs ppl to 2 decimals and overwrites checkpoint_best.pt on a
    tie, so epochs 28 and 31 both at 4.34 leave epoch 31's checkpoint: the
    result must name the checkpoint it evaluated."""
    converge = _converge_module()
    lines = []
    for e, ppl in [(27, 4.35), (28, 4.34), (29, 4.35), (30, 4.36), (31, 4.34)]:
        lines.append(
            f"2026-11-29 10:43:44 | INFO | valid | epoch {e:03d} | valid on 'valid' subset | loss 2.1 | "
            f"ppl {ppl} | num_updates {182 * e}"
        )
        name = "checkpoint_best.pt" if ppl == 4.34 else "checkpoint_last.pt"
        lines.append(
            f"2026-11-29 10:43:44 | INFO | fairseq.checkpoint_utils | Saved checkpoint runs/x/{name} "
            f"(epoch {e} @ {182 * e} updates, score {ppl}) (writing took 0.1 seconds)"
        )
    parsed = converge.parse_training("\n".join(lines))
    assert parsed["best_epoch"] == 31 and parsed["valid_ppl_training"] == 4.34 and parsed["epochs_run"] == 31


def test_converged_table_gives_mean_and_std_over_seeds_and_marks_the_dirichlet_row(tmp_path, monkeypatch):
    """The table's cells are the mean ± sample std over a variant's seeds, and
    a Dirichlet row (importance-sampled PPL, differential entropies) says so."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path))
    common = {"output_layer": "factored", "bleu_signature": "nrefs:1", "date": "2026-11-29", "machine": "x86_64 x2"}
    for seed, ppl in ((1, 4.0), (2, 5.0), (3, 6.0)):
        (tmp_path / f"elbo-enum-seed{seed}.json").write_text(
            json.dumps({"variant": "elbo-enum", "seed": seed, "test_ppl": ppl, "valid_entropy_p": 1.0, **common})
        )
    table = converge.table()
    assert re.search(r"^\| elbo-enum \| factored \| 1,2,3 \| - \| 5.00 ± 1.00 \|", table, re.M), table
    assert converge.DIRICHLET_NOTE not in table
    (tmp_path / "dirichlet-seed1.json").write_text(
        json.dumps({"variant": "dirichlet", "seed": 1, "test_ppl": 9.0, "valid_entropy_p": -54.2, **common})
    )
    table = converge.table()
    assert re.search(r"^\| dirichlet \(IS ppl\) \| factored \| 1 \| - \| 9.00 \|", table, re.M), table
    assert converge.DIRICHLET_NOTE in table


def test_converged_table_shows_the_output_spread_column_once_a_result_has_it(tmp_path, monkeypatch):
    """Results from before ``valid_logpy_spread`` was recorded leave the
    column out of their family's table; one result with it brings it in,
    "-" for the others; and the learning curve reads the spread."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path))
    common = {"output_layer": "factored", "bleu_signature": "nrefs:1", "date": "2026-11-29", "machine": "x86_64 x2"}
    for name in ("marginal", "elbo-enum"):
        (tmp_path / f"{name}-seed1.json").write_text(json.dumps({"variant": name, "seed": 1, **common}))
    assert "spread" not in converge.table()
    row = {"variant": "marginal", "seed": 1, "valid_logpy_spread": 1.765, "valid_entropy_post": 0.57, **common}
    (tmp_path / "marginal-seed1.json").write_text(json.dumps(row))
    lines = converge.table().splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    column = header.split(" | ").index("log p(y given z) spread (nats)")
    assert header.split(" | ")[column - 1] == "H posterior (bits)"
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[column] for line in lines if line.startswith("| ")}
    assert cells["marginal"] == "1.76" and cells["elbo-enum"] == "-", cells
    line = _latent_epoch_lines(1, 1)[0].replace("| ppl", "| logpy_spread 0.577 | ppl")
    assert converge.validation_curve(line)[0]["logpy_spread"] == 0.577


def test_converged_table_names_the_runs_that_trained_with_more_than_one_thread(tmp_path, monkeypatch):
    """Training tok/s depends on how many threads a run had: the table's
    header names the runs that had more than one."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path))
    common = {
        "variant": "marginal",
        "test_ppl": 4.8,
        "output_layer": "factored",
        "bleu_signature": "nrefs:1",
        "date": "2026-11-30",
        "machine": "x86_64 x2",
    }
    (tmp_path / "marginal-seed1.json").write_text(json.dumps({"seed": 1, **common}))
    assert "threads;" not in converge.table()
    (tmp_path / "marginal-seed2.json").write_text(json.dumps({"seed": 2, "threads": 2, **common}))
    assert "sharing the 2 cores (marginal seed 2: 2 threads; see its note)" in converge.table()


def test_converge_rejects_a_thread_count_below_one(tmp_path, capsys):
    # "status" so that a missing check prints where runs stand instead of training them
    with pytest.raises(SystemExit):
        _converge_module().main(["status", "--threads", "0", "--work", str(tmp_path)])
    assert "--jobs and --threads must be >= 1" in capsys.readouterr().err


def _fake_sacrebleu(generate_text, work):
    """converge.sacrebleu_score without fairseq's output: writes the hypotheses file it would."""
    (pathlib.Path(work) / "hyp.txt").write_text("a translation\n")
    return 40.0, "nrefs:1"


def _fake_fairseq(epochs):
    """A stand-in for converge.py's ``run``: fairseq-train appends a training
    log that early-stopped after ``epochs``; fairseq-validate prints one
    validation line (as JSON, the format the scripts ask for); nothing is ever launched."""

    def fake_run(cmd, log_path, env, cwd=None, append=False):
        if "varattn_tools.resume_train" in cmd:  # fairseq-train with a patience that survives resumes
            with open(log_path, "a") as f:
                f.write("\n".join([*_epoch_lines(1, epochs), EARLY_STOP_LINE, DONE_LINE]) + "\n")
            return open(log_path).read()
        if "fairseq_cli.validate" in cmd:
            subset = cmd[cmd.index("--valid-subset") + 1]
            assert cmd[cmd.index("--log-format") + 1] == "json"
            values = {f"{subset}_loss": "2.1", f"{subset}_nll_loss": "2.0", f"{subset}_ppl": "4.0"}
            return f"2026-11-29 11:00:00 | INFO | {subset} | {json.dumps(values)}\n"
        return ""

    return fake_run


def test_a_result_records_threads_only_when_its_training_ran_in_that_invocation(tmp_path, monkeypatch):
    """Training tok/s depends on the threads training had.  A run trained by
    this process records its --threads; one trained elsewhere (its log is
    finished, its result is being re-made) records none, whatever this
    process's --threads is."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(converge, "run", _fake_fairseq(epochs=4))
    monkeypatch.setattr(converge.evaluation, "run", _fake_fairseq(epochs=4))
    monkeypatch.setattr(converge.evaluation, "sacrebleu_score", _fake_sacrebleu)
    monkeypatch.setattr(converge.evaluation, "alignment_scores", lambda *args: {})
    opts = argparse.Namespace(work=str(tmp_path / "runs"), data=str(tmp_path / "bin"), threads=2)
    trained = converge.train_and_evaluate("soft", 99, opts, env={})
    assert trained["threads"] == 2 and trained["epochs_run"] == 4 and trained["stopped_by"] == "patience"
    assert trained["train_cmd"].startswith("fairseq-train ") and "resume_train" not in trained["train_cmd"]
    assert "train_seconds" in trained
    kept = tmp_path / "results" / "hyps" / "soft-seed99.txt"  # the translations stay with the result
    assert kept.read_text() == "a translation\n" and trained["test_hypotheses"].endswith("soft-seed99.txt")
    assert json.loads((tmp_path / "results" / "soft-seed99.json").read_text())["threads"] == 2

    (tmp_path / "results" / "soft-seed99.json").unlink()  # re-evaluated from the finished log only
    opts.threads = 3
    evaluated = converge.train_and_evaluate("soft", 99, opts, env={})
    assert "threads" not in evaluated and evaluated["epochs_run"] == 4


def _latent_epoch_lines(first, last, epochs_validated_again=()):
    """_epoch_lines with a latent criterion's diagnostics: the prior's entropy
    falls from uniform (4.13 bits) by 0.5 bits an epoch."""
    lines = []
    for e in [*range(first, last + 1), *epochs_validated_again]:
        again = 0.001 if e in epochs_validated_again else 0.0
        lines.append(
            f"2026-11-30 10:43:44 | INFO | valid | epoch {e:03d} | valid on 'valid' subset | loss 2.3 | "
            f"kl {0.1 * e:.3f} | entropy_p {4.13 - 0.5 * e + again:.3f} | entropy_uniform 4.13 | "
            f"prior_maxp 0.5 | ppl {9 - e:.2f} | wps 2000 | num_updates {182 * e} | best_ppl {9 - e:.2f}"
        )
    return lines


def test_the_learning_curve_is_every_epochs_last_validation_in_order():
    converge = _converge_module()
    soft = converge.validation_curve("\n".join(_epoch_lines(1, 3)))
    assert soft == [{"epoch": 1, "ppl": 4.99}, {"epoch": 2, "ppl": 4.98}, {"epoch": 3, "ppl": 4.97}]
    # a run resumed mid-epoch 4 appends epoch 4's validation a second time: the later one counts
    curve = converge.validation_curve("\n".join(_latent_epoch_lines(1, 5, epochs_validated_again=(4,))))
    assert [p["epoch"] for p in curve] == [1, 2, 3, 4, 5]
    assert curve[3] == {"epoch": 4, "ppl": 5.0, "kl": 0.4, "entropy_p": 2.131, "entropy_uniform": 4.13}
    assert curve[4]["entropy_p"] == 1.63 and "prior_maxp" not in curve[4]


def test_curves_plot_every_finished_run_of_the_family_that_has_a_curve(tmp_path, capsys, monkeypatch):
    """`converge.py curves` plots the family's results that recorded a curve,
    whatever --only says (the figure is the family's, like its table)."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(converge.plan, "CURVES", {"lstm": str(tmp_path / "curves.png")})
    os.makedirs(converge.plan.RESULTS)
    curve = converge.validation_curve("\n".join(_latent_epoch_lines(1, 6)))
    for name, has_curve in (("marginal", True), ("soft", False)):
        row = {"variant": name, "seed": 1, "epochs_run": 6, "best_epoch": 6}
        (tmp_path / "results" / f"{name}-seed1.json").write_text(
            json.dumps({**row, "valid_curve": curve}) if has_curve else json.dumps(row)
        )
    converge.main(["curves", "--only", "soft:1", "--work", str(tmp_path / "runs")])
    assert capsys.readouterr().out.splitlines() == [f"plotted 1 run -> {tmp_path}/curves.png"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    os.remove(tmp_path / "results" / "marginal-seed1.json")
    converge.main(["curves", "--work", str(tmp_path / "runs")])
    assert capsys.readouterr().out.splitlines() == ["no finished run has a curve: nothing to plot"]


def test_every_plotted_variant_gets_its_own_colour_however_long_the_plan():
    converge = _converge_module()
    lstm = list(converge.PLANS["lstm"])
    assert len(lstm) > 10  # more variants than tab10 has colours
    for variants in (lstm, lstm[8:] + ["marginal", "elbo-reinforce"], ["soft", "rws", "soft"]):
        colours = converge.curve_colours(variants)
        assert set(colours) == set(variants)
        assert len(set(colours.values())) == len(colours), variants


def test_status_says_how_long_an_epoch_takes_lately_not_counting_a_resume_gap(tmp_path):
    converge = _converge_module()
    clock = {1: "10:00:00", 2: "10:05:00", 3: "10:10:00", 4: "13:00:00", 5: "13:06:00"}  # resumed before epoch 4

    def log(epochs):
        return "\n".join(
            f"2026-11-30 {clock[e]} | INFO | valid | epoch {e:03d} | valid on 'valid' subset | "
            f"loss 2.3 | ppl {9 - e:.2f} | num_updates {182 * e}"
            for e in epochs
        )

    assert converge.minutes_per_epoch(log([1])) is None
    assert converge.minutes_per_epoch(log([1, 2, 3])) == 5.0
    assert converge.minutes_per_epoch(log([1, 2, 3, 4, 5])) == 6.0  # median of 5, 170 and 6
    assert converge.minutes_per_epoch(log([1, 3])) == 5.0  # per epoch, when one was not validated
    (tmp_path / "soft-seed99").mkdir()
    (tmp_path / "soft-seed99" / "train.log").write_text(log([1, 2, 3]))
    assert converge.progress("soft", 99, argparse.Namespace(work=str(tmp_path))).startswith(
        "soft seed 99: training or interrupted, epoch 3, valid PPL 6.0, best checkpoint epoch 3 "
        "(valid PPL 6.0, 0 epochs ago; patience 3), about 5.0 min an epoch lately (in "
    )


def test_diagnosis_reads_every_validation_and_where_the_warmup_ended():
    diagnose = example_module("diagnose")
    t = "2026-12-01 10:00:00 | INFO"
    text = "\n".join(
        [
            f"{t} | train_inner | epoch 001:     50 / 182 loss=7.2, marginal_warmup=1, ppl=9, num_updates=350, lr=1",
            f'{t} | train_inner | {{"epoch": 2, "update": 1.1, "loss": "7.0", "ppl": "8", "num_updates": "400"}}',
            f"{t} | valid | epoch 002 | valid on 'valid' subset | loss 5.1 | kl 0.222 | entropy_q 2.824 "
            "| entropy_p 2.92 | entropy_uniform 4.109 | qgrad_rec 0.16047 | ppl 30.92 | wps 1126 | num_updates 364",
        ]
    )
    [(updates, values)] = diagnose.validations(text)
    assert updates == 364
    assert values == {
        "entropy_uniform": 4.109,
        "entropy_p": 2.92,
        "entropy_q": 2.824,
        "kl": 0.222,
        "qgrad_rec": 0.16047,
        "ppl": 30.92,
    }
    assert diagnose.warmup_updates(text) == 350


def test_aer_cells_show_one_seeds_interval_and_several_seeds_spread():
    converge = _converge_module()
    one = [{"aer_posterior_exact": 0.3141, "aer_posterior_exact_interval": [0.2861, 0.3422]}]
    assert converge.aer_cell(one, "aer_posterior_exact", ".3f") == "0.314 [0.286, 0.342]"
    several = [{"aer_soft": 0.1, "aer_soft_interval": [0.05, 0.15]}, {"aer_soft": 0.2}]
    assert converge.aer_cell(several, "aer_soft", ".3f") == "0.150 ± 0.071"
    assert converge.aer_cell([{"aer_soft": 0.1}], "aer_soft", ".3f") == "0.100"  # no interval recorded
    assert converge.aer_cell([{"aer_prior": None}], "aer_prior", ".3f") == "-"


def test_every_ablation_names_its_output_layer_and_pins_q_options():
    """ablate.py's table was trained with varattn_lstm's joint layer unless an
    ablation says "-factored", and before q's automatic warm-up: its rows must
    say so, not inherit whatever the architecture's defaults are today."""
    ablate = example_module("ablate")
    for name, (_, options) in ablate.ABLATIONS.items():
        layer = options[options.index("--output-layer") + 1]
        assert layer == ("factored" if name.endswith("-factored") else "joint"), name
        if "--inference-network" in options:
            assert options[options.index("--latent-warmup") + 1] == "off", name
            assert options[options.index("--inference-annotations") + 1] == "trained", name
        if "--estimator" in options and options[options.index("--estimator") + 1] == "reinforce":
            assert "--train-baseline" in options, name


def test_screen_table_sets_each_row_beside_its_full_corpus_result(tmp_path, monkeypatch):
    """screen.py's table: mean over a row's seeds of the quarter-corpus
    results, beside the same row's converged full-corpus test PPL, so a
    screen is read against the runs it is meant to predict."""
    screen = example_module("screen")
    screened, full = tmp_path / "screen", tmp_path / "converge"
    screened.mkdir()
    full.mkdir()
    monkeypatch.setattr(screen, "RESULTS", str(tmp_path / "none yet"))
    assert screen.table() == "No screen has finished yet.\n"
    monkeypatch.setattr(screen, "RESULTS", str(screened))
    monkeypatch.setattr(screen.converge_plan, "RESULTS", str(full))
    common = {"train_pairs": 7250, "date": "2026-12-07", "machine": "x86_64 x2", "commit": "abc"}
    screens = (("marginal", 1, 8.0), ("marginal", 2, 9.0), ("marginal-r32", 1, 10.0), ("soft", 1, 11.0))
    for name, seed, ppl in screens:
        row = {"variant": name, "seed": seed, "test_ppl": ppl, "valid_ppl_training": ppl - 1, "best_epoch": 9}
        # a latent row is judged by its exact posterior's AER, soft attention by its weights'
        row.update(aer_posterior_exact=ppl / 100, aer_prior=0.9, aer_soft=0.5 if name == "soft" else None)
        row.update(epochs_run=12, train_seconds=1200.0 * seed, **common)
        (screened / f"{name}-seed{seed}.json").write_text(json.dumps(row))
    for seed, ppl in ((1, 4.7), (2, 4.9)):
        converged = {"variant": "marginal", "test_ppl": ppl, "aer_posterior_exact": 0.08}
        (full / f"marginal-seed{seed}.json").write_text(json.dumps(converged))
    (full / "soft-seed1.json").write_text(json.dumps({"variant": "soft", "test_ppl": 5.5, "aer_soft": 0.145}))
    text = screen.table()
    row = "| marginal | 1,2 | 7.50 ± 0.71 | 8.50 ± 0.71 | 0.085 ± 0.007 | 9 ± 0 | 12 ± 0 | 30 ± 14 "
    row += "| 4.80 ± 0.14 | 0.080 ± 0.000 |"
    assert row in text, text
    assert "| marginal-r32 | 1 | 9.00 | 10.00 | 0.100 | 9 | 12 | 20 | - | - |" in text, text
    assert "| soft | 1 | 10.00 | 11.00 | 0.500 | 9 | 12 | 20 | 5.50 | 0.145 |" in text, text
    assert "the first 7250 training pairs" in text


def test_screen_scores_alignments_of_a_result_that_predates_them(tmp_path, monkeypatch):
    """A finished screen without AER gets it from its best checkpoint on the
    next run, without training again; one with AER is left as it is."""
    screen = example_module("screen")
    monkeypatch.setattr(screen, "RESULTS", str(tmp_path))
    calls = []

    def scores(name, seed, opts, env):
        calls.append((name, seed))
        return {"aer_posterior_exact": 0.1, "aer_sentences": 200}

    monkeypatch.setattr(screen, "alignment_scores", scores)
    old = {"variant": "marginal", "seed": 1, "test_ppl": 9.0}
    (tmp_path / "marginal-seed1.json").write_text(json.dumps(old))
    row = screen.train_and_evaluate("marginal", 1, None, None)
    assert row["aer_posterior_exact"] == 0.1 and row["test_ppl"] == 9.0
    assert json.loads((tmp_path / "marginal-seed1.json").read_text()) == row
    screen.train_and_evaluate("marginal", 1, None, None)
    assert calls == [("marginal", 1)]


def test_diagnose_measures_a_finished_runs_validation_again_only_from_the_checkpoint_it_evaluated(
    tmp_path, monkeypatch
):
    """`converge.py diagnose` adds what the criterions log today (here the
    output's spread) and the learning curve to a finished result, keeping
    the file's layout and adding to its note; a checkpoint whose valid PPL
    is not the result's is refused and the result left as it was."""
    converge = _converge_module()
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path / "results"))
    validated = []

    def fake_run(cmd, log_path, env, cwd=None, append=False):
        assert "fairseq_cli.validate" in cmd and cmd[cmd.index("--valid-subset") + 1] == "valid"
        validated.append(cmd[cmd.index("--path") + 1])
        values = {"valid_loss": "2.1", "valid_nll_loss": "2.0", "valid_ppl": "4.0", "valid_logpy_spread": "0.66"}
        return f"2026-12-08 11:00:00 | INFO | valid | {json.dumps(values)}\n"

    monkeypatch.setattr(converge.evaluation, "run", fake_run)
    monkeypatch.setattr(converge, "prepare", lambda root, env: str(tmp_path / "bin"))  # nothing to binarise
    opts = argparse.Namespace(work=str(tmp_path / "runs"), data=str(tmp_path / "bin"))
    work = tmp_path / "runs" / "elbo-enum-seed99"
    work.mkdir(parents=True)
    (work / "checkpoint_best.pt").write_bytes(b"")
    (work / "train.log").write_text("\n".join(_latent_epoch_lines(1, 3)) + "\n")
    os.makedirs(converge.plan.RESULTS)
    result = tmp_path / "results" / "elbo-enum-seed99.json"
    before = {"variant": "elbo-enum", "seed": 99, "valid_ppl": 4.0, "note": "trained alone"}
    result.write_text(json.dumps(before, indent=2) + "\n")

    converge.main(["diagnose", "--only", "elbo-enum:99", "--work", opts.work])
    text = result.read_text()
    row = json.loads(text)
    assert text == json.dumps(row, indent=2) + "\n"
    assert validated == [str(work / "checkpoint_best.pt")]
    assert row["valid_logpy_spread"] == 0.66 and row["valid_ppl"] == 4.0
    assert [p["epoch"] for p in row["valid_curve"]] == [1, 2, 3] and row["valid_curve"][2]["kl"] == 0.3
    assert row["note"].startswith("trained alone; validation diagnostics measured again on ")

    stale = {**before, "valid_ppl": 4.5}
    result.write_text(json.dumps(stale, indent=1))
    with pytest.raises(RuntimeError, match="not the checkpoint the result evaluated"):
        converge.diagnose("elbo-enum", 99, opts, env={})
    assert json.loads(result.read_text()) == stale

"""benchmarks/speed.py's --breakdown: which parts of a step it times."""

import importlib.util
import json
import os
import subprocess

import pytest
from helpers import PYTHON, REPO, cli_env

SPEED = os.path.join(REPO, "benchmarks", "speed.py")
TINY = ["--vocab", "500", "--batch", "4", "--src-len", "6", "--tgt-len", "5", "--embed", "16", "--hidden", "32"]


def _benchmark(name):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_breakdown_times_each_latent_part_where_the_variant_runs_it(tmp_path):
    """Soft attention runs none of the parts; the exact marginal the T-way
    log p(y | z = i) only; REINFORCE all three (its samples' log p, the
    baseline's output at q's expected context, q's network); Gumbel-softmax
    the output at its relaxed contexts and q, not the T-way log p (its
    training skips the exact nll)."""
    out = tmp_path / "speed.json"
    subprocess.run(
        [
            PYTHON,
            SPEED,
            "--variants",
            "soft,marginal,elbo-reinforce,elbo-gumbel",
            "--steps",
            "2",
            "--no-memory",
            "--breakdown",
            "--json",
            str(out),
            *TINY,
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=cli_env(),
        timeout=600,
    )
    results = json.loads(out.read_text())["results"]
    ran = {
        n: {p for p, ms in r["breakdown_ms"].items() if p not in ("forward", "backward") and ms > 0}
        for n, r in results.items()
    }
    logp, context, q = "log p(y given z = i)", "output at a context", "q network"
    assert ran == {
        "soft": set(),
        "marginal": {logp},
        "elbo-reinforce": {logp, context, q},
        "elbo-gumbel": {context, q},
    }
    for r in results.values():
        parts = sum(ms for p, ms in r["breakdown_ms"].items() if p not in ("forward", "backward"))
        assert 0 < r["breakdown_ms"]["backward"] and parts <= r["breakdown_ms"]["forward"]


def test_timing_parts_puts_the_methods_back_even_after_an_error():
    speed = _benchmark("speed")
    originals = {(owner, name): owner.__dict__[name] for methods in speed.PARTS.values() for owner, name in methods}
    spent = {}
    with pytest.raises(RuntimeError):
        with speed.timing_parts(spent, "cpu"):
            assert all(owner.__dict__[name] is not fn for (owner, name), fn in originals.items())
            raise RuntimeError("a step failed")
    assert all(owner.__dict__[name] is fn for (owner, name), fn in originals.items())


def test_profile_puts_the_latent_work_where_it_runs(tmp_path):
    """benchmarks/profile_step.py: soft attention runs no T-way log p and no q;
    the exact marginal spends forward time in log p(y | z = i) and more GEMM
    FLOPs than soft (b's projection); elbo-reinforce also its baseline's
    output at a context and q's network, and autograd saves more for it."""
    out = tmp_path / "profile.json"
    subprocess.run(
        [
            PYTHON,
            os.path.join(REPO, "benchmarks", "profile_step.py"),
            "--variants",
            "soft,marginal,elbo-reinforce",
            "--steps",
            "1",
            "--json",
            str(out),
            *TINY,
            "--out-embed",
            "16",
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=cli_env(),
        timeout=600,
    )
    rows = json.loads(out.read_text())["rows"]
    logp, context, q = "log p(y given z = i)", "output at a context", "q network"
    ran = {
        n: {p for p, ms in r["forward_parts_ms"].items() if p != "rest of the forward" and ms > 0}
        for n, r in rows.items()
    }
    assert ran["soft"] <= {context}  # soft's output is the output at its expected context
    assert ran["marginal"] == {logp}
    assert ran["elbo-reinforce"] == {logp, context, q}
    for phase in ("forward", "backward"):
        assert rows["marginal"]["gemm_gflop"][phase] > rows["soft"]["gemm_gflop"][phase]
    assert rows["elbo-reinforce"]["saved_mb"] > rows["soft"]["saved_mb"]
    for r in rows.values():
        assert r["wall_ms"]["forward"] > 0 and r["wall_ms"]["backward"] > 0


def test_readme_tables_are_the_committed_results():
    """benchmarks/README.md's speed tables are benchmarks/results.md, rendered by
    benchmarks/readme_tables.py (no hand-copied number)."""
    proc = subprocess.run(
        [PYTHON, os.path.join(REPO, "benchmarks", "readme_tables.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_train_aligners_trains_the_row_in_the_asked_direction_and_records_a_finished_run(tmp_path, monkeypatch, capsys):
    aligners = _benchmark("train_aligners")
    monkeypatch.setattr(aligners, "RESULTS", str(tmp_path / "results"))
    data = tmp_path / "bin"
    data.mkdir()
    for lang in ("de", "en"):
        (data / f"dict.{lang}.txt").write_text("a 1\n")
    t = "2026-12-06 10:0{}:00 | INFO"
    log = [
        t.format(0) + " | fairseq_cli.train | {'_name': None}",
        t.format(1) + ' | valid | {"epoch": 1, "valid_loss": "3.0", "valid_ppl": "8.0", "valid_num_updates": "9"}',
        t.format(1) + " | fairseq.checkpoint_utils | Saved checkpoint w/checkpoint_best.pt (epoch 1 @ 9 updates, x)",
        t.format(2) + ' | valid | {"epoch": 2, "valid_loss": "3.1", "valid_ppl": "8.57", "valid_num_updates": "18"}',
        t.format(3) + " | fairseq_cli.train | early stop since valid performance hasn't improved for last 1 runs",
        t.format(3) + " | fairseq_cli.train | done training in 180.0 seconds",
    ]
    seen = []

    def fake_run(cmd, log_path, env, append=False):
        seen.append(cmd)
        with open(log_path, "a") as f:
            f.write("\n".join(log) + "\n")
        return open(log_path).read()

    monkeypatch.setattr(aligners, "run", fake_run)
    argv = ["--direction", "en-de", "--data", str(data), "--work", str(tmp_path / "w")]
    aligners.main(argv + ["--status"])
    assert capsys.readouterr().out.startswith("marginal-en-de-seed1: not started")
    aligners.main(argv)
    [cmd] = seen
    assert cmd[cmd.index("--source-lang") + 1] == "en" and cmd[cmd.index("--target-lang") + 1] == "de"
    assert cmd[cmd.index("--criterion") + 1] == "varattn_marginal" and "--patience" in cmd
    row = json.load(open(tmp_path / "results" / "marginal-en-de-seed1.json"))
    assert (row["epochs_run"], row["best_epoch"], row["valid_ppl_training"]) == (2, 1, 8.0)
    assert row["stopped_by"] == "patience" and row["train_seconds"] == 180.0
    # a finished run is recorded again, not trained again
    aligners.main(argv)
    assert len(seen) == 1
    aligners.main(argv + ["--status"])
    assert "finished (patience), epoch 2, valid PPL 8.57" in capsys.readouterr().out.splitlines()[-1]
    with pytest.raises(SystemExit):
        aligners.main(["--row", "no-such-row", "--data", str(data)])


def test_beam_checkpoints_times_each_part_and_the_mixture_and_puts_everything_back():
    """benchmarks/beam_checkpoints.py on a soft and a sentence-shortlist model
    (tiny, the shortlist layer's W_o sharpened): the parts of a beam search
    add up to no more than it, the mixture alone is captured once per
    decoder step, the accuracy pass reads both mixtures (whose math
    tests/test_sentence_shortlist.py checks), and every timer wrapped on a
    model or the module is gone afterwards."""
    from helpers import FakeTask, build_model, random_batch, shortlist_model

    from fairseq_varattn.modules import sentence_shortlist

    bench = _benchmark("beam_checkpoints")
    sentence, d = shortlist_model("lstm", "sentence-shortlist")
    soft, _ = build_model("soft")
    task = FakeTask(d, d)
    batches = [random_batch(d, bsz=3, src_len=6, seed=s) for s in (1, 2)]
    path = bench.MixturePath()
    length = 4
    generators = {model: bench.beam(model, task, length) for model in (soft, sentence)}
    fast = sentence_shortlist.mixture_in_place

    assert bench.is_sentence_layer(sentence) and not bench.is_sentence_layer(soft)
    alone = bench.mixture_calls(generators[sentence], batches, path, repeats=2)
    assert alone["calls"] == len(batches) * (length + 1)  # every step to the forced end of sentence
    assert alone["ms_per_call"]["fast"] > 0 and alone["ms_per_call"]["summed"] > 0
    checks = bench.accuracy(generators[sentence], batches, path)
    assert checks["tokens"] > 0 and checks["largest_difference"] < 1e-4
    for model in (soft, sentence):
        parts = bench.breakdown(generators[model], batches, path, repeats=1)
        top = {k: v for k, v in parts.items() if k != "total" and not k.startswith("output:")}
        assert {"encoder", "decoder body", "output", "generator"} <= set(top)
        # the generator is the total less the other parts: negative if a part were timed inside another
        assert all(v >= 0 for v in parts.values()) and parts["generator"] > 0
        assert ("output: mixture" in parts) == (model is sentence)
        if model is sentence:  # the output's pieces lie inside it
            pieces = sum(v for k, v in parts.items() if k.startswith("output:"))
            assert 0 < pieces <= parts["output"]
        for owner in (model.encoder, model.decoder, model.decoder.head, model.decoder.head.output):
            wrapped = {"forward", "extract_features", "get_normalized_probs", "reorder_incremental_state"}
            wrapped |= {"output_logits", "decoder_logits", "source_cache"}
            assert not wrapped & set(vars(owner)), (type(owner).__name__, wrapped & set(vars(owner)))
    assert sentence_shortlist.mixture_in_place is fast

"""BLEU significance (varattn_tools.significance) on real sentences: a
system about as good as the baseline is not significantly different; one
that is far better is."""

import gzip
import os

import pytest
from helpers import REPO, example_module

from varattn_tools.significance import paired_bleu


def _references(n=150):
    with gzip.open(os.path.join(REPO, "data", "multi30k", "test_2016_flickr.en.gz"), "rt", encoding="utf-8") as f:
        return f.read().splitlines()[:n]


def _degrade(sentence, keep):
    words = sentence.split()
    return " ".join(words[: max(1, int(len(words) * keep))])


def test_identical_systems_are_not_significantly_different_and_a_much_better_one_is():
    refs = _references()
    baseline = [_degrade(s, 0.5) for s in refs]
    out = paired_bleu(refs, baseline, {"better": [_degrade(s, 0.9) for s in refs]}, trials=1000)
    assert out["better"]["delta"] > 10.0 and out["better"]["p_value"] < 0.01
    # a system that differs from the baseline in one sentence of 150: no evidence
    close = list(baseline)
    close[0] = refs[0]
    close_out = paired_bleu(refs, baseline, {"close": close}, trials=1000)["close"]
    assert close_out["delta"] > 0 and close_out["p_value"] > 0.05
    # the baseline's own translations: no difference at all, not sacreBLEU's p = 1/1001
    same = paired_bleu(refs, baseline, {"same": list(baseline)}, trials=1000)["same"]
    assert same["delta"] == 0 and same["p_value"] == 1.0


def test_sentence_counts_must_match():
    refs = _references(10)
    with pytest.raises(ValueError, match="9 sentences for 10 references"):
        paired_bleu(refs, refs, {"short": refs[:9]}, trials=10)


def test_converge_tables_test_each_seed_against_the_baselines_same_seed(tmp_path, monkeypatch):
    """converge.py's p column: seed 2 of a row is tested against seed 2 of the
    baseline, and a seed whose baseline run kept no translations gets none."""
    converge = example_module("converge")
    refs = _references(200)
    systems = {
        ("transformer", 1): [_degrade(s, 0.5) for s in refs],
        ("transformer", 2): [_degrade(s, 0.9) for s in refs],
        ("transformer-elbo-enum", 1): [_degrade(s, 0.9) for s in refs],
        ("transformer-elbo-enum", 2): [_degrade(s, 0.5) for s in refs],
        ("transformer-elbo-enum", 3): [_degrade(s, 0.9) for s in refs],
    }
    rows = []
    for (variant, seed), hyps in systems.items():
        path = tmp_path / f"{variant}-{seed}.txt"
        path.write_text("\n".join(hyps) + "\n", encoding="utf-8")
        rows.append({"variant": variant, "seed": seed, "test_hypotheses": str(path)})
    rows.append({"variant": "transformer", "seed": 3})  # translations not kept
    monkeypatch.setattr(converge.plan, "RAW_TEST_REF", str(tmp_path / "refs.txt"))
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    p = converge.bleu_p_values(rows, "transformer")
    assert set(p) == {("transformer-elbo-enum", 1), ("transformer-elbo-enum", 2)}
    # seed 1 is far better than its baseline, seed 2 far worse: both significant,
    # which they would not be against the other seed's baseline (equal outputs)
    direct = paired_bleu(refs, systems[("transformer", 1)], {"s": systems[("transformer-elbo-enum", 1)]})
    assert p[("transformer-elbo-enum", 1)] == direct["s"]["p_value"] < 0.01
    assert p[("transformer-elbo-enum", 2)] < 0.01
    runs = [r for r in rows if r["variant"] == "transformer-elbo-enum"]
    assert converge.p_cell(p, "transformer-elbo-enum", runs) == ", ".join(
        f"{p[('transformer-elbo-enum', s)]:.3f}" for s in (1, 2)
    )


def test_transformer_headline_pairs_bleu_seed_by_seed_and_tests_ppl_over_seeds(tmp_path, monkeypatch):
    """The README's Transformer table: BLEU's p is the paired bootstrap of each
    seed against fairseq's transformer of the same seed, test PPL's is Welch's
    t-test over seeds, and AER reads fairseq's cross-attention for its row and
    the exact posterior for a latent row."""
    import json

    from scipy import stats

    converge = example_module("converge")
    refs = _references(200)
    monkeypatch.setattr(converge.plan, "RESULTS", str(tmp_path))
    monkeypatch.setattr(converge.plan, "RAW_TEST_REF", str(tmp_path / "refs.txt"))
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    ppl = {("transformer", 1): 5.5, ("transformer", 2): 5.6, ("transformer-elbo-enum", 1): 5.2}
    ppl[("transformer-elbo-enum", 2)] = 5.3
    for (variant, seed), value in ppl.items():
        keep = 0.9 if variant == "transformer-elbo-enum" and seed == 1 else 0.5
        hyps = tmp_path / f"{variant}-{seed}.txt"
        hyps.write_text("\n".join(_degrade(s, keep) for s in refs) + "\n", encoding="utf-8")
        aer = {"aer_soft": 0.42} if variant == "transformer" else {"aer_posterior_exact": 0.30}
        row = {"variant": variant, "seed": seed, "test_ppl": value, "test_bleu": 30.0 + seed, **aer}
        (tmp_path / f"{variant}-seed{seed}.json").write_text(json.dumps({**row, "test_hypotheses": str(hyps)}))
    text = converge.headline("transformer")
    welch = stats.ttest_ind([5.2, 5.3], [5.5, 5.6], equal_var=False).pvalue
    import converge_tables

    p = converge.bleu_p_values(converge_tables.finished("transformer"), "transformer")
    line = next(x for x in text.splitlines() if x.startswith("| transformer-elbo-enum |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # seed 1 far better than its baseline, seed 2 the same translations: only the first is significant
    assert cells[:5] == ["transformer-elbo-enum", "2", "5.25 ± 0.07", f"{welch:.3f}", "31.50 ± 0.71"]
    assert cells[5] == f"{p[('transformer-elbo-enum', 1)]:.3f}, {p[('transformer-elbo-enum', 2)]:.3f}"
    assert p[("transformer-elbo-enum", 1)] < 0.01 and p[("transformer-elbo-enum", 2)] == 1.0
    assert cells[6] == "0.300 ± 0.000 (exact posterior)"
    assert "| fairseq's `transformer` | 2 | 5.55 ± 0.07 | - |" in text
    assert "0.420 ± 0.000 (its last layer's cross-attention" in text


def test_a_p_value_that_rounds_to_zero_reads_below_a_thousandth():
    """A p-value is never 0: the tables print "< 0.001" where 3 decimals would
    show 0.000, in the per-seed cells and the Welch cells alike."""
    converge = example_module("converge")
    import converge_tables

    assert converge_tables.p_text(0.0004) == "< 0.001"
    assert converge_tables.p_text(0.0006) == "0.001" and converge_tables.p_text(0.0421) == "0.042"
    runs = [{"seed": 1}, {"seed": 2}]
    p = {("row", 1): 0.00001, ("row", 2): 0.2}
    assert converge.p_cell(p, "row", runs) == "< 0.001, 0.200"

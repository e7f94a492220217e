"""BLEU significance (varattn_tools.significance) on real sentences: a
system about as good as the baseline is not significantly different; one
that is far better is."""

import gzip
import os

import pytest
from helpers import REPO

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


def test_sentence_counts_must_match():
    refs = _references(10)
    with pytest.raises(ValueError, match="9 sentences for 10 references"):
        paired_bleu(refs, refs, {"short": refs[:9]}, trials=10)

"""Symmetrisation of two directions' word alignments, and AER with its bootstrap interval."""

import random

import pytest

from varattn_tools import symmetrize as sym
from varattn_tools.align import alignment_error_rate, alignment_scores, error_breakdown


def test_grow_diag_final_and_by_hand():
    # intersection {0-0, 1-1}; 2-1 neighbours 1-1 and aligns source word 2; then 2-2 (diagonal of 1-1)
    # aligns target word 2: grow-diag reaches the union
    assert sym.grow_diag_final_and({(0, 0), (1, 1), (2, 1)}, {(0, 0), (1, 1), (2, 2)}) == {
        (0, 0),
        (1, 1),
        (2, 1),
        (2, 2),
    }
    # 3-3 and 3-1 are no neighbours of 0-0; final-and adds 3-3 (both words unaligned), then
    # 3-1's source word is aligned
    assert sym.grow_diag_final_and({(0, 0), (3, 3)}, {(0, 0), (3, 1)}) == {(0, 0), (3, 3)}
    # a neighbour whose words are both aligned already is not added
    assert sym.grow_diag_final_and({(0, 0), (1, 1)}, {(0, 0), (1, 1), (0, 1)}) == {(0, 0), (1, 1)}


def test_symmetrisations_are_ordered_on_random_alignments():
    rng = random.Random(0)
    for _ in range(200):
        n, m = rng.randint(1, 8), rng.randint(1, 8)
        fwd = {(rng.randrange(n), j) for j in range(m)}  # each target word once, as a model's links
        rev = {(i, rng.randrange(m)) for i in range(n)}
        inter, union = sym.symmetrize(fwd, rev, "intersection"), sym.symmetrize(fwd, rev, "union")
        gdfa = sym.symmetrize(fwd, rev, "grow-diag-final-and")
        assert inter <= gdfa <= union
        assert sym.symmetrize(fwd, fwd, "grow-diag-final-and") == fwd


def test_the_command_flips_the_reverse_direction(tmp_path, capsys):
    (tmp_path / "fwd").write_text("0-0 1-1 2-1\n0-0\n")
    (tmp_path / "rev").write_text("0-0 1-2\n0-0 1-0\n")  # target-source order: 1-2 is source 2, target 1
    sym.main([str(tmp_path / "fwd"), str(tmp_path / "rev"), "--method", "intersection"])
    assert capsys.readouterr().out == "0-0 2-1\n0-0\n"
    sym.main([str(tmp_path / "fwd"), str(tmp_path / "rev"), "--method", "union"])
    assert capsys.readouterr().out == "0-0 1-1 2-1\n0-0 0-1\n"
    (tmp_path / "short").write_text("0-0\n")
    with pytest.raises(SystemExit):
        sym.main([str(tmp_path / "fwd"), str(tmp_path / "short")])


def test_alignment_scores_by_hand_and_their_interval():
    # sure {0-0, 1-1}, possible adds 2-1; hypothesis {0-0, 2-1, 2-2}
    one = ({(0, 0), (2, 1), (2, 2)}, {(0, 0), (1, 1)}, {(0, 0), (1, 1), (2, 1)})
    scores = alignment_scores([one])
    assert scores["aer"] == pytest.approx(1 - (1 + 2) / (3 + 2))
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(1 / 2)
    rng = random.Random(1)
    pairs = []
    for _ in range(30):
        gold = {(j, j) for j in range(10)}
        hyp = {(j if rng.random() < 0.8 else rng.randrange(10), j) for j in range(10)}
        pairs.append((hyp, gold, gold))
    scores = alignment_scores(pairs)
    assert scores["aer"] == pytest.approx(alignment_error_rate(pairs))
    assert scores["aer_low"] < scores["aer"] < scores["aer_high"]
    assert scores["aer_high"] - scores["aer_low"] < 0.2
    identical = alignment_scores([(g, g, g) for _, g, _ in pairs])
    assert identical["aer"] == identical["aer_low"] == identical["aer_high"] == 0.0


def test_error_breakdown_by_hand():
    """Gold: target 0 <- source 0 (sure), target 1 <- sources 1 and 2 (sure), target 2
    unaligned, target 3 <- source 5 (possible).  The hypothesis links target 0 to
    source 1 (adjacent to the gold's 0), target 1 to source 1 (right), target 2 to
    source 3 (gold-unaligned), target 3 to source 0 (elsewhere)."""
    sure = {(0, 0), (1, 1), (2, 1)}
    possible = sure | {(5, 3)}
    hyp = {(1, 0), (1, 1), (3, 2), (0, 3)}
    out = error_breakdown([(hyp, sure, possible)])
    assert out == {"wrong_unaligned": 1, "wrong_adjacent": 1, "wrong_other": 1, "missed_multi": 1, "missed_other": 1}
    # the counts add up to what AER counts: |A - P| wrong links and |S - A| missed ones
    assert out["wrong_unaligned"] + out["wrong_adjacent"] + out["wrong_other"] == len(hyp - possible)
    assert out["missed_multi"] + out["missed_other"] == len(sure - hyp)

"""AttentionScorer: the mlp score built in pieces of query rows equals the
formula v^T tanh(W_q q_j + W_k k_i) computed at once, forward and backward."""

import pytest
import torch

from fairseq_varattn.modules import scorer as scorer_module
from fairseq_varattn.modules.scorer import AttentionScorer


def _reference(module, query, keys, mask):
    """The formula in one (B, N, T, A) tensor."""
    hidden = torch.tanh(module.query_proj(query).unsqueeze(2) + module.key_proj(keys).unsqueeze(1))
    scores = (hidden * module.v.weight.view(-1)).sum(-1)
    return scores.masked_fill(mask.unsqueeze(1), float("-inf"))


def _scores_and_grads(fn, module, query, keys, mask, upstream):
    module.zero_grad()
    query = query.detach().requires_grad_()
    keys = keys.detach().requires_grad_()
    scores = fn(query, keys)
    finite = torch.isfinite(scores)
    (scores.masked_fill(~finite, 0.0) * upstream).sum().backward()
    grads = [query.grad, keys.grad] + [p.grad.clone() for p in module.parameters()]
    return scores.detach(), grads


@pytest.mark.parametrize("piece", [1, 7, 10_000_000])
def test_mlp_pieces_match_the_formula(monkeypatch, piece):
    """``piece`` elements per piece: one query row at a time, uneven pieces
    (7 // (B T A) rounds to one row), and everything in one piece."""
    torch.manual_seed(0)
    bsz, n, t, q_dim, k_dim, a_dim = 3, 5, 4, 6, 7, 8
    module = AttentionScorer(q_dim, k_dim, a_dim, kind="mlp")
    query, keys = torch.randn(bsz, n, q_dim) * 3, torch.randn(bsz, t, k_dim) * 3
    mask = torch.zeros(bsz, t, dtype=torch.bool)
    mask[0, -1] = True
    upstream = torch.randn(bsz, n, t)
    if piece == 7:
        # two rows a piece: 5 rows split 2, 2, 1
        piece = 2 * bsz * t * a_dim
    monkeypatch.setattr(scorer_module, "MLP_PIECE_ELEMENTS", piece)

    got, got_grads = _scores_and_grads(
        lambda q, k: module(q, module.prepare(k), mask), module, query, keys, mask, upstream
    )
    want, want_grads = _scores_and_grads(
        lambda q, k: _reference(module, q, k, mask), module, query, keys, mask, upstream
    )
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_mlp_single_query_row():
    """A decoder step's query (B, Q) gives (B, T), as one piece."""
    torch.manual_seed(1)
    module = AttentionScorer(6, 7, 8, kind="mlp")
    query, keys = torch.randn(3, 6), torch.randn(3, 4, 7)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    got = module(query, module.prepare(keys), mask)
    want = _reference(module, query.unsqueeze(1), keys, mask).squeeze(1)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_q_scores_follow_inference_score_else_the_priors(arch):
    """--inference-score sets q's scorer alone; without it (every checkpoint
    from before the option) q scores with the prior's kind."""
    from helpers import build_model

    network = "birnn"
    default, _ = build_model("categorical", inference_network=network, arch=arch)
    prior_kind = default.alignment_head.scorer.kind
    assert default.inference_network.scorer.kind == prior_kind
    other = "general" if prior_kind != "general" else "mlp"
    chosen, _ = build_model("categorical", inference_network=network, arch=arch, inference_score=other)
    assert chosen.inference_network.scorer.kind == other
    assert chosen.alignment_head.scorer.kind == prior_kind

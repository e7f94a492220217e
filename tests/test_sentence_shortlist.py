"""The sentence-shortlist output layer (--output-layer sentence-shortlist).

Every sum over the reduced vocabulary is checked against the dense model it
stands for: c_iv = b_iv at the sentence's candidate words U and 0 elsewhere,
logits a_j + c_i over the whole vocabulary, explicit softmaxes in float64.
"""

import pytest
import torch
from helpers import ARCHS, build_model, random_batch, shortlist_model

from fairseq_varattn.modules.alignment import CategoricalAlignment
from fairseq_varattn.modules.sentence_shortlist import (
    SentenceSelection,
    SentenceShortlistOutputLayer,
    gold_log_likelihood,
    log_mixture,
    mixture_in_place,
    pooled_gold_log_likelihood,
    reduced_decoder,
    reduced_target,
    sentence_words,
)

B, N, T, K, V = 2, 4, 5, 3, 23
PAD = 1


def case(scale, seed):
    """a (B, N, V), candidates (B, T, K) with repeats across positions and
    filler entries, and a dense b (B, T, V) whose entries at U are the layer's."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, N, V, generator=g) * scale
    candidates = torch.randint(2, 12, (B, T, K), generator=g)  # words 12.. are never candidates
    candidates[0, 1, 1:] = PAD  # a word with one candidate
    candidates[1, 0] = PAD  # source padding
    b = torch.randn(B, T, V, generator=g) * scale
    return a, candidates, b


def selection_of(candidates, b):
    words, valid = sentence_words(candidates, PAD)
    b_u = b.gather(-1, words.unsqueeze(1).expand(-1, T, -1)).masked_fill(~valid.unsqueeze(1), 0.0)
    return SentenceSelection(words, valid, b_u)


def dense_c(selection, vocab=V):
    """c (B, T, V): b at U, 0 elsewhere."""
    c = torch.zeros(B, T, vocab, dtype=torch.double)
    index = selection.words.unsqueeze(1).expand(-1, T, -1)
    return c.scatter(-1, index, selection.b.double()).masked_fill(~_in_u(selection, vocab).unsqueeze(1), 0.0)


def _in_u(selection, vocab=V):
    mask = torch.zeros(B, vocab, dtype=torch.bool)
    for s in range(B):
        mask[s, selection.words[s][selection.valid[s]]] = True
    return mask


def explicit_log_softmax(a, selection):
    return torch.log_softmax(a.double().unsqueeze(2) + dense_c(selection).unsqueeze(1), dim=-1)


def targets(candidates):
    """Gold words: some in U, some never candidates (outside U)."""
    target = torch.randint(12, V, (B, N))
    target[0, 0] = candidates[0, 2, 0]
    target[0, 2] = candidates[0, 4, 2]
    target[1, 1] = candidates[1, 3, 1]
    return target


def test_sentence_words_are_the_distinct_candidates_without_fillers():
    _, candidates, _ = case(1.0, 0)
    words, valid = sentence_words(candidates, PAD)
    for s in range(B):
        expected = sorted(set(candidates[s].flatten().tolist()) - {PAD})
        assert words[s][valid[s]].tolist() == expected
        assert (words[s][~valid[s]] == PAD).all()
    assert valid.any(-1).all() and not valid.all()  # the two sentences have different counts


def test_reduced_target_finds_slots_and_outside_words():
    _, candidates, _ = case(1.0, 1)
    words, valid = sentence_words(candidates, PAD)
    target = targets(candidates)
    column, hit = reduced_target(target, words, valid)
    for s in range(B):
        for j in range(N):
            y = int(target[s, j])
            inside = y in words[s][valid[s]].tolist()
            assert bool(hit[s, j]) == inside
            assert int(column[s, j]) == (words[s].tolist().index(y) if inside else words.size(1))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_gold_log_likelihood_value_and_gradient_equal_explicit_softmaxes(scale):
    a, candidates, b = case(scale, 2)
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    selection = selection_of(candidates, b)
    target = targets(candidates)
    got = gold_log_likelihood(*reduced_decoder(a, selection, target), selection, target)
    index = target.view(B, N, 1, 1).expand(-1, -1, T, 1)
    ref = explicit_log_softmax(a, selection).gather(-1, index).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1, scale))
    weights = torch.rand(B, N, T, dtype=torch.double)
    grads = torch.autograd.grad((got * weights).sum(), (a, b), retain_graph=True)
    refs = torch.autograd.grad((ref * weights).sum(), (a, b))
    for x, y in zip(grads, refs):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gap", [25.0, 100.0])
def test_lowering_the_words_that_hold_all_the_mass_cancels_nothing(gap):
    """a_j puts all but e^-gap of its mass on U and every position lowers U by
    gap + 15 nats: L_ji is then about log R_j, which Z_j minus U's mass would
    lose in float32 (and at gap 100 the outside sum underflows next to the
    largest logit: those rows are redone with the outside words' maximum)."""
    a, candidates, b = case(1.0, 3)
    selection = selection_of(candidates, b)
    in_u = _in_u(selection).unsqueeze(1)
    a = (torch.randn(B, N, V) - gap * (~in_u).float()).requires_grad_()
    selection.b = torch.full_like(selection.b, -gap - 15.0).masked_fill(~selection.valid.unsqueeze(1), 0.0)
    target = targets(candidates)
    got = gold_log_likelihood(*reduced_decoder(a, selection, target), selection, target)
    index = target.view(B, N, 1, 1).expand(-1, -1, T, 1)
    ref = explicit_log_softmax(a, selection).gather(-1, index).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    (grad,) = torch.autograd.grad(got.sum(), a, retain_graph=True)
    (ref_grad,) = torch.autograd.grad(ref.sum(), a)
    torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_mixture_equals_explicit_sum_over_alignments(scale):
    a, candidates, b = case(scale, 4)
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    selection = selection_of(candidates, b)
    log_w = torch.log_softmax(torch.randn(B, N, T, dtype=torch.double) * 3, -1)
    log_w[1, :, 0] = float("-inf")  # source padding has no weight
    got = log_mixture(a, reduced_decoder(a, selection), selection, log_w)
    ref = torch.logsumexp(log_w.unsqueeze(-1) + explicit_log_softmax(a, selection), dim=2)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1, scale))
    probe = torch.randn(B, N, V, dtype=torch.double)
    grads = torch.autograd.grad((got * probe).sum(), (a, b), retain_graph=True)
    refs = torch.autograd.grad((ref * probe).sum(), (a, b))
    for x, y in zip(grads, refs):
        torch.testing.assert_close(x.double(), y, rtol=1e-3, atol=1e-4)


def beam_case(gap, lowered):
    """A log-softmax whose words outside U lie ``gap`` nats below the rest,
    the sentence's positions 1 and 3 lowering every candidate by ``lowered``
    nats, and prior weights with a padding position."""
    a, candidates, b = case(3.0, 6)
    selection = selection_of(candidates, b)
    a = torch.log_softmax(a - gap * (~_in_u(selection)).float().unsqueeze(1), -1)
    selection.b[:, 1::2] -= lowered * selection.valid.unsqueeze(1)
    log_w = torch.log_softmax(torch.randn(B, N, T, generator=torch.Generator().manual_seed(7)) * 3, -1)
    log_w[1, :, 0] = float("-inf")
    ref = torch.logsumexp(log_w.double().unsqueeze(-1) + explicit_log_softmax(a, selection), dim=2)
    return a, selection, log_w, ref


@pytest.mark.parametrize(
    "gap, lowered, summed",
    [
        (0.0, 0.0, 0),  # R_j = 1 - sum_u p_ju throughout
        (150.0, 0.0, 0),  # the outside words underflow next to 1: R_j = 0 is their sum to float32
        (12.0, 30.0, 0),  # U holds all but e^-12 of the mass and two positions lower it: Z_ji ~ R_j, summed
        (150.0, 120.0, 2),  # ... and R_j underflows as well: the products' shifts, per sentence
    ],
)
def test_beam_search_mixture_in_place_equals_the_mixture(gap, lowered, summed, monkeypatch):
    """Beam search's in-place mixture against the explicit softmaxes, and
    which sentences it hands to the summed path."""
    from fairseq_varattn.modules import sentence_shortlist

    a, selection, log_w, ref = beam_case(gap, lowered)
    handed = []
    summed_path = sentence_shortlist._mixture_in_place_summed

    def counted(a, selection, log_w):
        handed.append(a.size(0))
        return summed_path(a, selection, log_w)

    monkeypatch.setattr(sentence_shortlist, "_mixture_in_place_summed", counted)
    got = mixture_in_place(a.clone(), selection, log_w)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    assert sum(handed) == summed


@pytest.mark.parametrize("samples", [0, 3])
def test_pooled_gold_equals_the_vocabulary_pool(samples):
    """log softmax(a_j + sum_i w_ji c_i) at y_j, for soft weights (B, N, T) and
    for M weight vectors per token (B, N, M, T)."""
    a, candidates, b = case(1.0, 5)
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    selection = selection_of(candidates, b)
    shape = (B, N, samples, T) if samples else (B, N, T)
    weights = torch.softmax(torch.randn(*shape, dtype=torch.double), -1)
    target = targets(candidates)
    got = pooled_gold_log_likelihood(*reduced_decoder(a, selection, target), selection, weights, target)
    pool = torch.matmul(weights, dense_c(selection).unsqueeze(1)) if samples else torch.bmm(weights, dense_c(selection))
    logits = (a.unsqueeze(2) if samples else a).double() + pool
    gold = target.view(B, N, *([1] * (samples > 0)), 1).expand(*logits.shape[:-1], 1)
    ref = torch.log_softmax(logits, -1).gather(-1, gold).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
    grads = torch.autograd.grad(got.sum(), (a, b), retain_graph=True)
    refs = torch.autograd.grad(ref.sum(), (a, b))
    for x, y in zip(grads, refs):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


def layer_with_table(seed=0):
    torch.manual_seed(seed)
    layer = SentenceShortlistOutputLayer(6, 7, 8, V, source_vocab=9, shortlist_size=K, pad=PAD).eval()
    table = torch.randint(2, 12, (9, K))
    table[PAD] = PAD
    layer.set_table(table)
    with torch.no_grad():  # sharpen, as training does: fresh weights make every c near 0
        layer.fc_out.weight.mul_(8.0)
    return layer


def test_layer_components_are_the_dense_model_of_its_own_b():
    """The layer's log p(y | z = i) against log softmax(a_j + c_i) with c
    built from W_o directly (b_i = W_o d(f(W_c x~_i)) at U, 0 elsewhere)."""
    layer = layer_with_table()
    h, enc = torch.randn(B, N, 6), torch.randn(B, T, 7)
    tokens = torch.randint(2, 9, (B, T))
    tokens[1, 0] = PAD
    words, valid = sentence_words(layer.candidates(tokens), PAD)
    target = torch.randint(12, V, (B, N))  # outside U, and in U:
    target[:, :2] = words[:, :2]
    got = layer.alignment_logprobs(h, enc, target, source_tokens=tokens)
    a = layer.decoder_logits(h).double()
    full_b = torch.nn.functional.linear(layer.act(layer.context_proj(enc)), layer.fc_out.weight).double()
    c = torch.zeros(B, T, V, dtype=torch.double)
    for s in range(B):
        u = words[s][valid[s]]
        c[s][:, u] = full_b[s][:, u]
    ref = torch.log_softmax(a.unsqueeze(2) + c.unsqueeze(1), -1)
    ref = ref.gather(-1, target.view(B, N, 1, 1).expand(-1, -1, T, 1)).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    assert ref[:, :2].std(-1).mean() > 0.1  # the positions differ on words in U


def test_one_hot_pool_is_the_categorical_component():
    layer = layer_with_table(1)
    h, enc = torch.randn(B, N, 6), torch.randn(B, T, 7)
    tokens = torch.randint(2, 9, (B, T))
    target = torch.randint(2, V, (B, N))
    components = layer.alignment_logprobs(h, enc, target, source_tokens=tokens)
    for i in range(T):
        one_hot = torch.zeros(B, N, T)
        one_hot[..., i] = 1.0
        pooled = layer.weighted_logprobs(h, one_hot, enc, target, source_tokens=tokens)
        torch.testing.assert_close(pooled, components[..., i], rtol=0, atol=1e-4)
        full = layer.weighted_logprobs(h, one_hot, enc, source_tokens=tokens)
        torch.testing.assert_close(full.gather(-1, target.unsqueeze(-1)).squeeze(-1), pooled, rtol=0, atol=1e-4)


def test_layer_mixture_is_the_prior_weighted_components_with_and_without_the_beam_cache():
    layer = layer_with_table(2)
    h, enc = torch.randn(B, N, 6), torch.randn(B, T, 7)
    tokens = torch.randint(2, 9, (B, T))
    scores = torch.randn(B, N, T) * 2
    prior = CategoricalAlignment(scores)
    mixture = layer.mixture_logprobs(h, enc, prior, source_tokens=tokens)
    torch.testing.assert_close(mixture.exp().sum(-1), torch.ones(B, N), rtol=0, atol=1e-5)
    for y in (3, 15):
        target = torch.full((B, N), y)
        components = layer.alignment_logprobs(h, enc, target, source_tokens=tokens)
        ref = torch.logsumexp(prior.log_probs + components, -1)
        torch.testing.assert_close(mixture[..., y], ref, rtol=0, atol=1e-4)
    # beam search: two hypotheses per sentence read the sentence's cached selection
    beam = 2
    step = type("Step", (), {})()
    step.encoder_states = enc.repeat_interleave(beam, 0)
    step.source_tokens = tokens.repeat_interleave(beam, 0)
    cache = layer.source_cache(step)
    assert cache["source"].rows == B
    cached = layer.mixture_logprobs(
        h.repeat_interleave(beam, 0),
        step.encoder_states,
        CategoricalAlignment(scores.repeat_interleave(beam, 0)),
        cache=cache,
        source_tokens=step.source_tokens,
    )
    torch.testing.assert_close(cached, mixture.repeat_interleave(beam, 0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_models_output_the_mixture_of_what_they_enumerate_and_train_the_source_side(arch):
    model, d = shortlist_model(arch, "sentence-shortlist")
    assert model.alignment_head.output_layer_kind == "sentence-shortlist"
    batch = random_batch(d)
    out, extra = model(**batch["net_input"])
    logp = model.alignment_head.output.alignment_logprobs(
        extra["hidden"], extra["encoder_states"], batch["target"], source_tokens=extra["source_tokens"]
    )
    prior = CategoricalAlignment(extra["scores"])
    gold = out.gather(-1, batch["target"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gold, torch.logsumexp(logp + prior.log_probs, -1), rtol=0, atol=1e-5)
    gold.sum().backward()
    grad = model.alignment_head.output.context_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_of_the_sentence_layer_loads_as_it_and_not_as_the_shortlist_layer(arch):
    model, _ = shortlist_model(arch, "sentence-shortlist")
    state = model.state_dict()
    fresh, _ = build_model("categorical", arch=arch, seed=1, output_layer="sentence-shortlist", shortlist_size=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.alignment_head.output.shortlist, model.alignment_head.output.shortlist)
    other, _ = build_model("categorical", arch=arch, seed=1, output_layer="shortlist", shortlist_size=4)
    with pytest.raises(ValueError, match="--output-layer"):
        other.check_checkpoint(dict(state))

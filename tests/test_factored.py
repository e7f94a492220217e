"""The factored output layer (--output-layer factored) against explicit sums.

Every check compares the matrix-product algebra with the brute force it
replaces: T vocabulary softmaxes of a_j + b_i per target token, on
non-uniform, sharpened distributions (never the near-uniform attention of
fresh weights), in float64 where the reference must be exact.
"""

import pytest
import torch
from helpers import ARCHS, build_model, random_batch

from fairseq_varattn.modules import factored_output
from fairseq_varattn.modules.alignment import CategoricalAlignment
from fairseq_varattn.modules.factored_output import (
    FactoredOutputLayer,
    SourceFactors,
    SourceLogitsCache,
    gold_log_likelihood,
    log_mixture,
    log_normalisers,
)
from fairseq_varattn.modules.output_layer import build_output_layer

B, N, T, V = 2, 4, 6, 23


def explicit_normalisers(a, b):
    return torch.logsumexp(a.double().unsqueeze(2) + b.double().unsqueeze(1), dim=-1)


def explicit_mixture(a, b, c):
    return torch.logsumexp(a.double().unsqueeze(2) + b.double().unsqueeze(1) + c.double().unsqueeze(-1), 2)


def logits(scale, seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_normalisers_equal_explicit_logsumexp(scale):
    a, b = logits(scale, 0, (B, N, V)), logits(scale, 1, (B, T, V))
    torch.testing.assert_close(
        log_normalisers(a, b).double(), explicit_normalisers(a, b), rtol=0, atol=1e-4 * max(1.0, scale / 10)
    )


def test_normalisers_underflowing_products_are_recomputed_exactly():
    """Logits of +-50 put the joint peak of a_j + b_i far from both row
    maxima: exp(a - m_a) exp(b - m_b) underflows for many (j, i), which must
    come back exact and finite, never -inf."""
    a, b = logits(50.0, 2, (B, N, V)), logits(50.0, 3, (B, T, V))
    m_a, m_b = a.amax(-1, keepdim=True), b.amax(-1, keepdim=True)
    raw = torch.bmm((a - m_a).exp(), (b - m_b).exp().transpose(1, 2))
    assert (raw < 1e-30).any(), "the case must exercise the fallback"
    out = log_normalisers(a, b)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), explicit_normalisers(a, b), rtol=0, atol=1e-3)


def test_normalisers_gradient_equals_explicit():
    a = logits(40.0, 4, (B, N, V)).double().requires_grad_()
    b = logits(40.0, 5, (B, T, V)).double().requires_grad_()
    weights = torch.rand(B, N, T, dtype=torch.double)
    got = torch.autograd.grad((log_normalisers(a, b) * weights).sum(), (a, b))
    ref = torch.autograd.grad((explicit_normalisers(a, b) * weights).sum(), (a, b))
    for x, y in zip(got, ref):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


def explicit_gold(a, b, target):
    """log softmax_v(a_j + b_i) at y_j: (B, N, T), in float64."""
    joint = a.double().unsqueeze(2) + b.double().unsqueeze(1)  # B, N, T, V
    index = target.view(*target.shape, 1, 1).expand(-1, -1, joint.size(2), 1)
    return torch.log_softmax(joint, -1).gather(-1, index).squeeze(-1)


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_gold_log_likelihood_value_and_gradient_equal_explicit_softmaxes(scale):
    """The hand-written backward against autograd through T explicit
    softmaxes, with weights on every (j, i); at +-50 some products underflow
    and go through the exact fallback, whose gradient must be right too."""
    a = logits(scale, 6, (B, N, V)).double().requires_grad_()
    b = logits(scale, 7, (B, T, V)).double().requires_grad_()
    target = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(8))
    if scale > 1:
        m_a, m_b = a.detach().amax(-1, keepdim=True), b.detach().amax(-1, keepdim=True)
        raw = torch.bmm((a.detach() - m_a).exp(), (b.detach() - m_b).exp().transpose(1, 2))
        assert (raw < 1e-30).any(), "the case must exercise the fallback"
    weights = torch.randn(B, N, T, dtype=torch.double, generator=torch.Generator().manual_seed(9))
    got = gold_log_likelihood(a, b, target)
    ref = explicit_gold(a, b, target)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1.0, scale / 10))
    got_grad = torch.autograd.grad((got * weights).sum(), (a, b))
    ref_grad = torch.autograd.grad((ref * weights).sum(), (a, b))
    for x, y in zip(got_grad, ref_grad):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


def test_gold_log_likelihood_keeps_only_the_two_factors_for_backward():
    """What enumeration holds from forward to backward: exp(a - m) and
    exp(b - m) and (B, N, T)-sized tensors, not a and b themselves as well
    (autograd's graph of the same expression keeps both pairs).  The peak
    of the backward itself is in benchmarks/README.md."""
    a = logits(3.0, 10, (B, N, 500)).requires_grad_()
    b = logits(3.0, 11, (B, T, 500)).requires_grad_()
    target = torch.randint(0, 500, (B, N), generator=torch.Generator().manual_seed(12))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gold_log_likelihood(a, b, target)
    factors = (a.numel() + b.numel()) * 4
    assert factors <= sum(saved.values()) <= factors + 4 * B * N * T * 8


@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_mixture_equals_explicit_sum_with_sharp_and_truncated_weights(scale):
    a, b = logits(scale, 6, (B, N, V)), logits(scale, 7, (B, T, V))
    c = torch.log_softmax(logits(8.0, 8, (B, N, T)), -1)  # a sharp, non-uniform prior
    c[0, :, -2:] = float("-inf")  # padding of the first sentence
    c[1, 1, :3] = float("-inf")  # a truncated (top-k) row
    out = log_mixture(a, b, c)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), explicit_mixture(a, b, c), rtol=0, atol=1e-3)
    if scale > 10:  # the case must exercise the exact fallback: words far below every b_i's top
        assert ((b - b.amax(-1, keepdim=True)).amax(1) < -87).any()


@pytest.mark.parametrize("scale", [20.0, 100.0, 200.0])  # 100, 200: rows underflow (to 0 at 200)
def test_mixture_gradient_equals_explicit(scale):
    a = logits(scale, 9, (B, N, V)).double().requires_grad_()
    b = logits(scale, 10, (B, T, V)).double().requires_grad_()
    c = torch.log_softmax(logits(scale / 4, 11, (B, N, T)), -1).double().requires_grad_()
    weights = torch.randn(B, N, V, dtype=torch.double)
    got = torch.autograd.grad((log_mixture(a, b, c) * weights).sum(), (a, b, c))
    ref = torch.autograd.grad((explicit_mixture(a, b, c) * weights).sum(), (a, b, c))
    for x, y in zip(got, ref):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["moderate", "normalisers underflow", "a word far below every b_i"])
def test_log_marginal_without_autograd_equals_explicit_mixture(case, monkeypatch):
    """Beam search's path (no autograd, k hypotheses per sentence, a few
    sentences per product) against the explicit sum of T softmaxes; on
    moderate logits it must run (not fall back to the autograd path), and
    where a product underflows it must hand over to the exact path."""
    k, sentences = 3, 5
    scale = 60.0 if case == "normalisers underflow" else 3.0
    a = logits(scale, 20, (sentences * k, 1, V))
    b = logits(scale, 21, (sentences, T, V))
    if case == "a word far below every b_i":  # its mixture entry underflows, no normaliser does
        b[:, :, 0] -= 200.0
    scores = logits(4.0, 22, (sentences * k, 1, T))
    scores[0, 0, -2:] = float("-inf")  # padding of the first sentence
    log_w = torch.log_softmax(scores, -1)
    normalisers = explicit_normalisers(a.view(sentences, k, V), b).view(sentences * k, 1, T)
    ref = explicit_mixture(a, b.repeat_interleave(k, 0), log_w.double() - normalisers)
    monkeypatch.setattr(factored_output, "_CHUNK_BYTES", 2 * T * V * 4)  # two sentences per product
    calls = []
    fast = factored_output._log_marginal_no_grad
    monkeypatch.setattr(factored_output, "_log_marginal_no_grad", lambda *args: calls.append(fast(*args)) or calls[-1])
    with torch.no_grad():
        got = factored_output.log_marginal(a, SourceFactors(b), log_w, k)
    assert calls and (calls[0] is None) == (case != "moderate"), "only moderate logits keep the fast path's result"
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1.0, scale / 10))
    torch.testing.assert_close(
        got.double().logsumexp(-1), torch.zeros(sentences * k, 1, dtype=torch.double), rtol=0, atol=1e-4
    )


def test_products_run_in_float32_under_bf16_autocast():
    a, b = logits(30.0, 12, (B, N, V)), logits(30.0, 13, (B, T, V))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = log_normalisers(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # inputs rounded to bf16, products exact: within bf16's input rounding
    torch.testing.assert_close(
        out.double(), explicit_normalisers(a.bfloat16().float(), b.bfloat16().float()), rtol=0, atol=1e-3
    )


# -- the layer -----------------------------------------------------------------------------
def make_layer(seed=0, sharpen=3.0, source_rank=0):
    torch.manual_seed(seed)
    layer = FactoredOutputLayer(hidden_dim=5, context_dim=7, embed_dim=8, vocab_size=V, source_rank=source_rank).eval()
    with torch.no_grad():  # logits far from uniform, so alignments change the output
        layer.fc_out.weight.mul_(sharpen * 10)
        if source_rank:
            layer.source_out.weight.mul_(sharpen * 10)
    h, enc = torch.randn(B, N, 5), torch.randn(B, T, 7)
    return layer, h, enc


def explicit_joint_logprobs(layer, h, enc):
    """log softmax_v(a_jv + b_iv) for every (j, i): (B, N, T, V)."""
    a = layer.decoder_logits(h).double()
    b = layer.source_logits(enc).double()
    return torch.log_softmax(a.unsqueeze(2) + b.unsqueeze(1), dim=-1)


def sharp_prior(seed=3):
    scores = logits(6.0, seed, (B, N, T))
    return CategoricalAlignment(scores)


@pytest.mark.parametrize("source_rank", [0, 3])
def test_alignment_logprobs_equal_explicit_softmaxes(source_rank):
    layer, h, enc = make_layer(source_rank=source_rank)
    target = torch.randint(0, V, (B, N))
    ref = explicit_joint_logprobs(layer, h, enc).gather(-1, target.view(B, N, 1, 1).expand(B, N, T, 1)).squeeze(-1)
    got = layer.alignment_logprobs(h, enc, target)
    assert ref.std(-1).mean() > 0.5, "alignments must matter in this check"
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    positions = torch.randint(0, T, (B, N, 3))
    torch.testing.assert_close(
        layer.alignment_logprobs(h, enc, target, positions).double(), ref.gather(-1, positions), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("source_rank", [0, 3])
def test_mixture_logprobs_equal_explicit_mixture_and_topk(source_rank):
    layer, h, enc = make_layer(source_rank=source_rank)
    prior = sharp_prior()
    joint = explicit_joint_logprobs(layer, h, enc)
    ref = torch.logsumexp(joint + prior.log_probs.double().unsqueeze(-1), dim=2)
    got = layer.mixture_logprobs(h, enc, prior)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    uniform = torch.logsumexp(joint, dim=2) - torch.log(torch.tensor(float(T)))
    assert (got.double() - uniform).abs().max() > 0.1, "a uniform prior would pass this check"
    # top-k: the k most probable alignments, prior renormalised over them
    idx, log_w = prior.topk(2)
    top = torch.logsumexp(
        joint.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, V)) + log_w.double().unsqueeze(-1), dim=2
    )
    torch.testing.assert_close(layer.mixture_logprobs(h, enc, prior, topk=2).double(), top, rtol=0, atol=1e-4)
    assert (top - ref).abs().max() > 1e-3, "top-2 must differ from the exact mixture here"


@pytest.mark.parametrize("source_rank", [0, 3])
def test_soft_output_is_the_output_at_the_expected_context(source_rank):
    layer, h, enc = make_layer(source_rank=source_rank)
    prior = sharp_prior()
    context = prior.expectation(enc)
    a = layer.decoder_logits(h)
    g = layer.source_logits(context)  # g(E_p[x~]) through the same W_o
    torch.testing.assert_close(layer.soft_logits(None, h, context), a + g, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["joint", "factored"])
def test_dropout_masks_are_shared_across_alignments_samples_and_baseline(kind):
    """In training, log p(y | z = i) may differ across i only through x~_i:
    with every annotation equal, every alignment, every sample and the soft
    baseline (the output at the expected context) must give the same value."""
    torch.manual_seed(0)
    layer = build_output_layer(kind, 5, 7, 8, V, dropout=0.5).train()
    h = torch.randn(B, N, 5)
    enc = torch.randn(B, 1, 7).expand(B, T, 7)  # every position the same annotation
    target = torch.randint(0, V, (B, N))
    masks = layer.dropout_masks(h)
    logp = layer.alignment_logprobs(h, enc, target, masks=masks)
    assert (logp.std(-1) < 1e-5).all(), "dropout made identical alignments differ"
    positions = torch.randint(0, T, (B, N, 3))
    sampled = layer.alignment_logprobs(h, enc, target, positions, masks=masks)
    baseline = layer.context_logprobs(h, enc[:, :1].expand(B, N, 7), target, masks=masks)
    torch.testing.assert_close(sampled, baseline.unsqueeze(-1).expand_as(sampled), rtol=0, atol=1e-5)
    independent = build_output_layer(kind, 5, 7, 8, V, dropout=0.5, shared_dropout=False).train()
    if kind == "joint":  # the paper's per-alignment masks: the noise this test rules out
        assert independent.alignment_logprobs(h, enc, target).std(-1).mean() > 1e-3


def test_source_cache_groups_beam_copies_and_drops_finished_sentences():
    layer, _, enc = make_layer()
    beams = 3
    rows = enc.repeat_interleave(beams, dim=0)
    rows = rows + torch.randn_like(rows) * 1e-9  # copies a few ulps apart, as the encoder makes them
    cache = SourceLogitsCache.build(rows, lambda first: SourceFactors(layer.source_logits(rows[first])))
    assert cache["source"].b.shape[0] == B and cache["sentence"].tolist() == [0, 0, 0, 1, 1, 1]
    source, k = SourceLogitsCache.grouped(cache)
    assert k == beams and source.b.data_ptr() == cache["source"].b.data_ptr(), "no copy in fairseq's layout"
    cache = SourceLogitsCache.reorder(cache, torch.tensor([4, 3, 5]))  # sentence 0 finished
    assert cache["source"].b.shape[0] == 1 and cache["sentence"].tolist() == [0, 0, 0]
    torch.testing.assert_close(cache["source"].b[0], layer.source_logits(enc[1:2])[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "attention,output_layer",
    [
        ("soft", "factored"),
        ("categorical", "factored"),
        ("dirichlet", "factored"),
        ("categorical", "shortlist"),
        ("categorical", "sentence-shortlist"),
    ],
)
def test_factored_model_incremental_equals_full_under_beam_reordering(attention, output_layer, arch):
    """Both layers with a per-sentence source cache (``SourceLogitsCache``)."""
    model, d = build_model(attention, output_layer=output_layer, arch=arch)
    batch = random_batch(d, bsz=3, src_len=6, tgt_len=5)
    net = batch["net_input"]
    beams = 2
    order = torch.arange(3).repeat_interleave(beams)
    src, lengths, prev = net["src_tokens"][order], net["src_lengths"][order], net["prev_output_tokens"][order]
    full = model.get_normalized_probs(model(src, lengths, prev), log_probs=True)
    encoder_out = model.encoder(src, src_lengths=lengths)
    state, rows = {}, torch.arange(order.numel())
    g = torch.Generator().manual_seed(0)
    for j in range(prev.size(1)):
        out = model.decoder(prev[rows, : j + 1], encoder_out=encoder_out, incremental_state=state)
        step = model.get_normalized_probs(out, log_probs=True)[:, -1]
        real = prev[rows, j].ne(d.pad())  # beam search never feeds <pad>
        torch.testing.assert_close(step[real], full[rows, j][real], rtol=1e-5, atol=1e-5)
        # beam search: permute hypotheses within each sentence; drop sentence 0 half-way
        new_order = torch.cat([torch.randperm(beams, generator=g) + s * beams for s in range(rows.numel() // beams)])
        if j == 2:
            new_order = new_order[beams:]
        model.decoder.reorder_incremental_state_scripting(state, new_order)  # what beam search calls
        encoder_out = model.encoder.reorder_encoder_out(encoder_out, new_order)
        rows = rows[new_order]


def test_factored_model_moves_between_dtypes_and_devices():
    """nn.Module.to / double / half go through Module._apply, which the layer must not shadow."""
    model, d = build_model("categorical", output_layer="factored")
    model.double()
    batch = random_batch(d)
    out = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # the products run in float32
    assert model.alignment_head.output.fc_out.weight.dtype == torch.float64

"""Brute-force checks of the latent-alignment math on tiny models."""

import pytest
import torch
import torch.nn.functional as F
from helpers import build_model, random_batch

from fairseq_varattn.modules.alignment import CategoricalAlignment, weighted_context
from fairseq_varattn.modules.losses import (
    expected_nll,
    marginal_nll,
    reinforce_nll,
    relaxed_nll,
    reweighted_wake_sleep,
)


def features(model, batch, with_q=False):
    target = batch["target"] if with_q else None
    _, extra = model(**batch["net_input"], target=target, features_only=True)
    return extra


def explicit_output_probs(model, extra):
    """p(y | z = i) for every (b, j, i, v) from the raw weights, one alignment at a time."""
    out = model.alignment_head.output
    h, enc = extra["hidden"], extra["encoder_states"]
    bsz, n, _ = h.shape
    t = enc.size(1)
    probs = torch.zeros(bsz, n, t, out.fc_out.out_features)
    for b in range(bsz):
        for j in range(n):
            for i in range(t):
                concat_weight = torch.cat([out.hidden_proj.weight, out.context_proj.weight], dim=1)
                feat = torch.tanh(concat_weight @ torch.cat([h[b, j], enc[b, i]]))
                probs[b, j, i] = F.softmax(out.fc_out(feat), dim=-1)
    return probs


def test_mixture_equals_explicit_sum_over_alignments():
    model, d = build_model("categorical")
    batch = random_batch(d)
    extra = features(model, batch)
    prior = F.softmax(extra["scores"], dim=-1)  # exactly 0 on padding
    explicit = (prior.unsqueeze(-1) * explicit_output_probs(model, extra)).sum(2)
    lprobs = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    torch.testing.assert_close(lprobs.exp(), explicit, rtol=1e-5, atol=1e-6)
    # and the training path (gold-token log-likelihoods + logsumexp) agrees
    logp_y = model.alignment_head.output.alignment_logprobs(extra["hidden"], extra["encoder_states"], batch["target"])
    nll = marginal_nll(CategoricalAlignment(extra["scores"]).log_probs, logp_y)
    gold = explicit.gather(-1, batch["target"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(nll, -gold.log(), rtol=1e-5, atol=1e-5)


def test_padding_positions_get_no_alignment_mass():
    model, d = build_model("categorical")
    batch = random_batch(d)
    extra = features(model, batch)
    # fairseq's encoder moves left padding to the right; its mask says where.
    pad = extra["encoder_padding_mask"]
    n_pad = batch["net_input"]["src_tokens"].eq(d.pad()).sum(1)
    assert torch.equal(pad.sum(1), n_pad) and n_pad.any()
    attn = extra["attn"]
    assert torch.all(attn.masked_select(pad.unsqueeze(1).expand_as(attn)) == 0)
    assert torch.all(attn.masked_select(~pad.unsqueeze(1).expand_as(attn)) > 0)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked_values_and_gradients(chunk):
    model, d = build_model("categorical")
    batch = random_batch(d, src_len=7)
    out = model.alignment_head.output

    def run(chunk_size):
        model.zero_grad()
        out.chunk_size = chunk_size
        extra = features(model, batch)
        logp = out.alignment_logprobs(extra["hidden"], extra["encoder_states"], batch["target"])
        mix = out.mixture_logprobs(extra["hidden"], extra["encoder_states"], CategoricalAlignment(extra["scores"]))
        (logp.sum() + mix[..., 3].sum()).backward()
        return (
            logp.detach(),
            mix.detach(),
            out.fc_out.weight.grad.clone(),
            model.alignment_head.scorer.query_proj.weight.grad.clone(),
        )

    full = run(0)
    chunked = run(chunk)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_topk_with_k_equal_T_is_exact_and_small_k_is_a_proper_distribution():
    model, d = build_model("categorical")
    batch = random_batch(d)
    exact = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    t = batch["net_input"]["src_tokens"].size(1)
    model.alignment_head.alignment_topk = t
    torch.testing.assert_close(model.get_normalized_probs(model(**batch["net_input"]), log_probs=True), exact)
    model.alignment_head.alignment_topk = 2
    approx = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    torch.testing.assert_close(approx.exp().sum(-1), torch.ones(approx.shape[:-1]))
    assert not torch.allclose(approx, exact)


def test_kl_is_nonnegative_and_equals_enumeration_and_torch():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[False, False, False, True, True]]).expand(4, 5)
    q = CategoricalAlignment(torch.randn(4, 5, generator=g) * 3, mask)
    p = CategoricalAlignment(torch.randn(4, 5, generator=g) * 3, mask)
    kl = q.kl(p)
    enumerated = torch.stack(
        [sum(q.probs[b, i] * (q.log_probs[b, i] - p.log_probs[b, i]) for i in range(3)) for b in range(4)]
    )
    torch.testing.assert_close(kl, enumerated)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(probs=q.probs[:, :3]), torch.distributions.Categorical(probs=p.probs[:, :3])
    )
    torch.testing.assert_close(kl, ref)
    assert torch.all(kl >= 0)
    torch.testing.assert_close(q.kl(q), torch.zeros(4))
    ent = torch.distributions.Categorical(probs=q.probs[:, :3]).entropy()
    torch.testing.assert_close(q.entropy(), ent)


def test_elbo_bounds_marginal_and_is_tight_at_the_exact_posterior():
    model, d = build_model("categorical", inference_network="birnn")
    with torch.no_grad():  # +-0.1 init makes every p(y | z = i) alike; sharpen them
        for param in model.parameters():
            param.mul_(15)
    batch = random_batch(d)
    extra = features(model, batch, with_q=True)
    out = model.alignment_head.output
    logp_y = out.alignment_logprobs(extra["hidden"], extra["encoder_states"], batch["target"])
    prior = CategoricalAlignment(extra["scores"])
    q = CategoricalAlignment(extra["q_scores"])
    log_marginal = -marginal_nll(prior.log_probs, logp_y)
    elbo = -expected_nll(q.log_probs, logp_y) - q.kl(prior)
    assert torch.all(elbo <= log_marginal + 1e-6)
    assert torch.all(log_marginal - elbo > 1e-4)  # a random q is not the posterior
    posterior = CategoricalAlignment.from_log_probs(torch.log_softmax(prior.log_probs + logp_y, dim=-1))
    tight = -expected_nll(posterior.log_probs, logp_y) - posterior.kl(prior)
    torch.testing.assert_close(tight, log_marginal, rtol=1e-5, atol=1e-5)
    # The Jensen bound of hard attention lies below the marginal too.
    assert torch.all(-expected_nll(prior.log_probs, logp_y) <= log_marginal + 1e-6)


def _toy_problem(seed=0, t=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, generator=g)
    f = torch.randn(t, generator=g) - 2.0  # log p(y | z = i), fixed
    return logits, f


def test_reinforce_gradient_averages_to_the_enumerated_gradient():
    logits, f = _toy_problem()
    theta = logits.clone().requires_grad_(True)
    exact_loss = expected_nll(torch.log_softmax(theta, -1), f)
    (exact_grad,) = torch.autograd.grad(exact_loss, theta)

    torch.manual_seed(0)
    n = 20000
    theta_b = logits.clone().requires_grad_(True)
    dist = CategoricalAlignment(theta_b.expand(n, -1))
    z = dist.sample(1)
    baseline = torch.full((n,), float((torch.softmax(logits, -1) * f).sum()))  # any constant
    loss, _ = reinforce_nll(f[z], dist.log_prob(z), baseline)
    (est_grad,) = torch.autograd.grad(loss.mean(), theta_b)
    # Monte-Carlo standard error at n=20000 is ~0.01 here; allow 4 sigma.
    assert torch.allclose(est_grad, exact_grad, atol=0.04), (est_grad, exact_grad)
    # value of the REINFORCE loss is the objective estimate, not the surrogate
    torch.testing.assert_close(loss.mean(), -f[z].mean(), rtol=0, atol=1e-6)


def test_baseline_reduces_score_function_variance():
    logits, f = _toy_problem(seed=3)
    torch.manual_seed(1)
    n = 4000
    theta = logits.clone().requires_grad_(True)
    dist = CategoricalAlignment(theta.expand(n, -1))
    z = dist.sample(1)

    def per_sample_grads(baseline):
        grads = []
        loss, _ = reinforce_nll(f[z], dist.log_prob(z), baseline)
        for k in range(0, n, 1):
            (g,) = torch.autograd.grad(loss[k], theta, retain_graph=True)
            grads.append(g)
            if k >= 800:
                break
        return torch.stack(grads)

    no_baseline = per_sample_grads(torch.zeros(n)).var(0).sum()
    soft = torch.full((n,), float((torch.softmax(logits, -1) * f).sum()))
    with_baseline = per_sample_grads(soft).var(0).sum()
    assert with_baseline < 0.5 * no_baseline, (with_baseline, no_baseline)


def test_gumbel_gradient_approaches_the_enumerated_gradient_at_low_temperature():
    # With a reward linear in the relaxed one-hot vector, E[f . z~] -> E_q[f(z)]
    # as the temperature goes to 0; the estimator is biased at finite tau.
    logits, f = _toy_problem(seed=5)
    theta = logits.clone().requires_grad_(True)
    (exact_grad,) = torch.autograd.grad(expected_nll(torch.log_softmax(theta, -1), f), theta)
    torch.manual_seed(0)
    theta_b = logits.clone().requires_grad_(True)
    dist = CategoricalAlignment(theta_b.unsqueeze(0))
    relaxed = dist.gumbel_softmax(40000, temperature=0.2)  # 1 x K x T
    loss = relaxed_nll((relaxed * f).sum(-1))
    (est_grad,) = torch.autograd.grad(loss.sum(), theta_b)
    assert torch.allclose(est_grad, exact_grad, atol=0.05), (est_grad, exact_grad)
    # samples lie on the simplex
    torch.testing.assert_close(relaxed.sum(-1), torch.ones(1, 40000))


@pytest.mark.parametrize("centred", [False, True])
def test_rws_gradient_with_many_samples_approaches_the_marginal_gradient(centred):
    logits, f = _toy_problem(seed=7)
    prior_logits = logits.clone().requires_grad_(True)
    f_param = f.clone().requires_grad_(True)
    exact = marginal_nll(torch.log_softmax(prior_logits, -1), f_param)
    exact_grads = torch.autograd.grad(exact, (prior_logits, f_param))

    torch.manual_seed(0)
    k = 20000
    p_b = logits.clone().requires_grad_(True)
    f_b = f.clone().requires_grad_(True)
    q_logits = torch.zeros(6, requires_grad=True)  # uniform proposal
    q = CategoricalAlignment(q_logits)
    z = q.sample(k)
    prior = CategoricalAlignment(p_b)
    wake_p, wake_q, log_marginal, ess = reweighted_wake_sleep(f_b[z], prior.log_prob(z), q.log_prob(z), centred=centred)
    grads = torch.autograd.grad(wake_p, (p_b, f_b))
    for est, ref in zip(grads, exact_grads):
        assert torch.allclose(est, ref, atol=0.02), (est, ref)
    # wake-q follows grad KL(posterior || q), which for softmax logits is q - posterior
    log_joint = torch.log_softmax(logits, -1) + f
    posterior = torch.softmax(log_joint, -1)
    (q_grad,) = torch.autograd.grad(wake_q, q_logits)
    assert torch.allclose(q_grad, q.probs.detach() - posterior, atol=0.02), (q_grad, posterior)
    assert abs(float(log_marginal.detach() + exact.detach())) < 0.02
    assert 1 <= float(ess) <= k


def test_centred_rws_does_not_move_the_alignment_where_y_does_not_depend_on_it():
    """Where log p(y | z) is the same for every z and q equals the prior, the
    centred wake-phase updates of the prior and q are exactly zero for any
    draw, while the uncentred ones are sampling noise; the output layer's
    update is the same in both."""
    logits, _ = _toy_problem(seed=3)
    f = torch.full((6,), -2.0)
    grads = {}
    for centred in (False, True):
        torch.manual_seed(0)
        p_logits, q_logits = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        f_b = f.clone().requires_grad_(True)
        prior, q = CategoricalAlignment(p_logits), CategoricalAlignment(q_logits)
        z = q.sample(5)
        wake_p, wake_q, _, _ = reweighted_wake_sleep(f_b[z], prior.log_prob(z), q.log_prob(z), centred=centred)
        grads[centred] = torch.autograd.grad(wake_p + wake_q, (p_logits, q_logits, f_b))
    for g in grads[True][:2]:
        torch.testing.assert_close(g, torch.zeros(6), rtol=0, atol=1e-7)
    assert all(g.abs().amax() > 0.05 for g in grads[False][:2]), grads[False]
    torch.testing.assert_close(grads[True][2], grads[False][2])


def test_weighted_context_matches_loop():
    w = torch.softmax(torch.randn(2, 3, 4, 5), -1)
    v = torch.randn(2, 5, 7)
    ctx = weighted_context(w, v)
    ref = torch.einsum("bnkt,btc->bnkc", w, v)
    torch.testing.assert_close(ctx, ref)

"""Brute-force checks of the Dirichlet alignment (``--attention dirichlet``)."""

import math

import pytest
import torch

from fairseq_varattn.modules.alignment import DirichletAlignment
from fairseq_varattn.modules.attention_kinds import KINDS
from fairseq_varattn.modules.losses import importance_log_marginal

TorchDirichlet = torch.distributions.Dirichlet


def _masked_pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 6, generator=g) * 3 + 0.2
    b = torch.rand(3, 6, generator=g) * 3 + 0.2
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 4:] = True
    mask[2, 5:] = True
    return a, b, mask


def test_masked_dirichlet_equals_torch_over_the_unpadded_coordinates():
    a, b, mask = _masked_pair()
    p, q = DirichletAlignment(a, mask), DirichletAlignment(b, mask)
    z = p.rsample(4)
    assert torch.all(z[mask.unsqueeze(1).expand_as(z)] == 0)
    log_z = z.log()
    for row in range(3):
        n = int((~mask[row]).sum())
        ref_p, ref_q = TorchDirichlet(a[row, :n]), TorchDirichlet(b[row, :n])
        torch.testing.assert_close(p.kl(q)[row], torch.distributions.kl_divergence(ref_p, ref_q))
        torch.testing.assert_close(p.entropy()[row], ref_p.entropy())
        torch.testing.assert_close(p.mean()[row, :n], ref_p.mean)
        torch.testing.assert_close(p.log_prob_at_log(log_z)[row], ref_p.log_prob(z[row, :, :n]))
        torch.testing.assert_close(z[row].sum(-1), torch.ones(4))


def test_dirichlet_kl_equals_a_monte_carlo_estimate():
    a, b, mask = _masked_pair(seed=1)
    p, q = DirichletAlignment(a, mask), DirichletAlignment(b, mask)
    torch.manual_seed(0)
    log_z = p.rsample_log(200_000)
    log_ratio = p.log_prob_at_log(log_z) - q.log_prob_at_log(log_z)
    mc, stderr = log_ratio.mean(-1), log_ratio.std(-1) / math.sqrt(log_ratio.size(-1))
    exact = p.kl(q)
    assert torch.all(exact >= 0)
    # 4 standard errors: a false failure about once in 15,000 runs
    assert torch.all((mc - exact).abs() < 4 * stderr + 1e-4), (mc, exact, stderr)


def _expected_weighted_square(alpha, c):
    """E_{Dir(alpha)}[sum_i c_i z_i^2] = sum_i c_i a_i (a_i + 1) / (a0 (a0 + 1))."""
    a0 = alpha.sum()
    return (c * alpha * (alpha + 1)).sum() / (a0 * (a0 + 1))


@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
def test_rsample_gradient_agrees_with_finite_differences_of_the_expectation(scale):
    g = torch.Generator().manual_seed(2)
    alpha = (torch.rand(5, generator=g) + 0.5) * scale
    c = torch.randn(5, generator=g)
    eps = 1e-3 * scale
    fd = torch.stack(
        [
            (_expected_weighted_square(alpha + eps * e, c) - _expected_weighted_square(alpha - eps * e, c)) / (2 * eps)
            for e in torch.eye(5, dtype=alpha.dtype)
        ]
    )
    torch.manual_seed(0)
    a = alpha.clone().requires_grad_(True)
    z = DirichletAlignment(a).rsample(400_000)
    (grad,) = torch.autograd.grad((c * z**2).sum(-1).mean(), a)
    tolerance = 0.05 * fd.abs().max() + 1e-4
    assert torch.allclose(grad, fd, atol=float(tolerance), rtol=0), (grad, fd)


def test_small_concentration_samples_are_real_samples():
    """torch's Dirichlet clamps underflowing Gammas, so with alpha = 0.01 over
    200 positions its samples are ties at 1e-38 renormalised; the log-space
    sampler keeps the right marginals: z_i ~ Beta(a_i, a0 - a_i)."""
    alpha = torch.full((200,), 0.01)
    alpha[:3] = torch.tensor([0.5, 0.2, 0.1])
    torch.manual_seed(0)
    log_z = DirichletAlignment(alpha).rsample_log(100_000)
    assert torch.isfinite(log_z).all()
    z = log_z.exp()
    expected_mean = alpha / alpha.sum()
    torch.testing.assert_close(z.mean(0)[:3], expected_mean[:3], atol=0.01, rtol=0)
    # P(z_0 > 0.5) under Beta(0.5, 2.49), by numerical integration
    beta = torch.distributions.Beta(alpha[0], alpha.sum() - alpha[0])
    grid = torch.linspace(0.5, 1 - 1e-6, 20_001, dtype=torch.float64)
    tail = torch.trapezoid(beta.log_prob(grid.float()).double().exp(), grid)
    assert abs(float((z[:, 0] > 0.5).double().mean()) - float(tail)) < 0.01


@pytest.mark.parametrize("low,high", [(1e-3, 1e-3), (1e-3, 1e4), (1e3, 1e4)])
def test_extreme_concentrations_over_long_sources_stay_finite(low, high):
    g = torch.Generator().manual_seed(3)
    t = 200
    a = (low + (high - low) * torch.rand(2, 4, t, generator=g)).requires_grad_(True)
    b = (low + (high - low) * torch.rand(2, 4, t, generator=g)).requires_grad_(True)
    mask = torch.zeros(2, 4, t, dtype=torch.bool)
    mask[1, :, 150:] = True
    p, q = DirichletAlignment(a, mask), DirichletAlignment(b, mask)
    log_z = p.rsample_log(3)
    values = [p.kl(q), p.entropy(), p.log_prob_at_log(log_z), q.log_prob_at_log(log_z), log_z.exp()]
    for v in values:
        assert torch.isfinite(v).all()
    total = sum(v.sum() for v in values)
    grads = torch.autograd.grad(total, (a, b))
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_importance_estimate_converges_to_the_closed_form_marginal():
    """p(y | z) = sum_i c_i z_i is linear in z, so p(y) = sum_i c_i a_i / a0
    exactly; the estimate with samples from another Dirichlet q converges to
    it, and with few samples it is a lower bound on average (IWAE).  q is
    broader than p (b <= a) so the weights p/q are bounded: with b_i > a_i
    their variance is infinite and no sample size would do."""
    g = torch.Generator().manual_seed(4)
    a = torch.rand(7, generator=g) * 2 + 0.3
    b = a * (0.5 + 0.5 * torch.rand(7, generator=g))
    c = torch.rand(7, generator=g)
    exact = math.log(float((c * a).sum() / a.sum()))
    prior, proposal = DirichletAlignment(a), DirichletAlignment(b)

    def estimate(k, repeats):
        log_z = proposal.rsample_log(k * repeats).view(repeats, k, 7)
        logp_y = torch.log((log_z.exp() * c).sum(-1))
        return importance_log_marginal(logp_y, prior.log_prob_at_log(log_z), proposal.log_prob_at_log(log_z))

    torch.manual_seed(0)
    assert abs(float(estimate(400_000, 1)) - exact) < 0.01
    small = estimate(2, 50_000)
    assert float(small.mean()) < exact


def test_exp_link_keeps_the_mean_a_softmax_where_softplus_flattens_it():
    """Raising every score by c (what makes samples less noisy) leaves the
    exp link's mean at softmax(scores), while softplus's mean flattens towards
    uniform: alpha_i ~ s_i + c, so its sensitivity to the scores falls as
    1 / sum_i alpha_i (docs/design.md, "Dirichlet concentrations")."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 3, 7, generator=g) * 3
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    scores = scores.masked_fill(mask.unsqueeze(1), float("-inf"))
    kind = KINDS["dirichlet"]
    softmax = torch.softmax(scores, -1)
    maxp = []
    for c in (0.0, 4.0, 8.0):
        exp_mean = kind.distribution(scores + c, mask, dirichlet_concentration="exp").mean()
        torch.testing.assert_close(exp_mean, softmax, rtol=0, atol=1e-3)
        maxp.append(kind.distribution(scores + c, mask).mean().amax(-1).mean().item())
    assert maxp[0] > maxp[1] > maxp[2] and maxp[2] < 0.5 * softmax.amax(-1).mean().item(), maxp
    total = kind.distribution(scores + 8.0, mask, dirichlet_concentration="exp").total
    assert total.min() > 1e3  # the same mean, with samples close to it

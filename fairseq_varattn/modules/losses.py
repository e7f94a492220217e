"""Per-token objectives (docs/design.md, "Criterions") as pure functions.

Every function takes log-probabilities and returns per-token tensors (the
batch shape of its inputs, the last "alignment" dimension reduced).  Losses
are *negated* objectives (to minimise).  Where an estimator needs a
surrogate, the returned loss has the objective's *value* and the
estimator's *gradient* (``value + (s - s.detach())``), so what is logged is
always the objective, never the surrogate.
"""

import math

import torch


def value_with_gradient_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value``'s value; gradient: ``value``'s plus ``surrogate``'s (detach
    ``value`` for the surrogate's gradient alone)."""
    return value + (surrogate - surrogate.detach())


def marginal_nll(log_weights: torch.Tensor, logp_y: torch.Tensor) -> torch.Tensor:
    """-log sum_i p(z = i) p(y | z = i): exact marginal likelihood."""
    return -torch.logsumexp(log_weights + logp_y, dim=-1)


def expected_nll(log_weights: torch.Tensor, logp_y: torch.Tensor) -> torch.Tensor:
    """-E_{z ~ w}[log p(y | z)] by enumeration (zero weight contributes zero)."""
    weights = log_weights.exp()
    return -torch.where(weights > 0, weights * logp_y, torch.zeros_like(logp_y)).sum(-1)


def reinforce_nll(logp_y_samples, log_prob_samples, baseline):
    """-E_{z ~ r}[log p(y | z)] from K samples of r, with the score-function gradient.

    logp_y_samples (..., K): log p(y | z_k), differentiable in the output layer;
    log_prob_samples (..., K): log r(z_k), differentiable in r's parameters;
    baseline (...): a control variate, treated as a constant (detached).
    Returns (loss, advantage): the advantage r_k - b is returned so callers
    can report the variance reduction.
    """
    reward = logp_y_samples.detach()
    advantage = reward - baseline.detach().unsqueeze(-1)
    value = -logp_y_samples.mean(-1)
    score_term = -(advantage * log_prob_samples).mean(-1)
    return value_with_gradient_of(value, score_term), advantage


def relaxed_nll(logp_y_samples: torch.Tensor) -> torch.Tensor:
    """-E[log p(y | z~)] for reparameterised (Gumbel-softmax, Dirichlet) samples."""
    return -logp_y_samples.mean(-1)


def importance_log_marginal(logp_y_samples, log_prior_samples, log_proposal_samples):
    """log (1/K) sum_k p(z_k) p(y | z_k) / r(z_k) for K samples z_k ~ r.

    An unbiased estimate of p(y) inside the log, so in expectation a lower
    bound on log p(y) (the IWAE bound, Burda et al. 2016) that tightens as
    K grows.
    """
    log_w = logp_y_samples + log_prior_samples - log_proposal_samples
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.size(-1))


def reweighted_wake_sleep(logp_y_samples, log_prior_samples, log_q_samples, centred: bool = False):
    """Reweighted wake-sleep (Bornschein & Bengio 2015) with K samples from q.

    w_k ∝ p(z_k) p(y | z_k) / q(z_k), normalised over K and detached.
    wake-p: -sum_k w_k [log p(y | z_k) + log p(z_k)]; wake-q: -sum_k w_k log q(z_k).
    Returns (wake_p, wake_q, importance-weighted bound log 1/K sum_k w~_k, ESS).

    ``centred`` subtracts control variates from the weights of the two
    alignment updates (docs/design.md, "Wake-sleep's collapse"): 1/K in
    wake-q, which leaves its expectation unchanged since E_q[grad log q] = 0,
    and in the prior's update the self-normalised ratios v_k ∝ p(z_k) / q(z_k),
    an estimate of E_p[grad log p] = 0.  Uncentred, both updates are weighted
    maximum likelihood on q's own samples: where y does not depend on z and q
    equals the prior (early in training) the weights are all 1/K and the
    updates are sampling noise with mean zero; centred, they are zero there.
    """
    log_w = (logp_y_samples + log_prior_samples - log_q_samples).detach()
    weights = torch.softmax(log_w, dim=-1)
    if centred:
        prior_weights = weights - torch.softmax((log_prior_samples - log_q_samples).detach(), dim=-1)
        wake_p = -(weights * logp_y_samples + prior_weights * log_prior_samples).sum(-1)
        q_weights = weights - 1.0 / weights.size(-1)
    else:  # the paper code's weights, in its own order of operations (same floats as its runs)
        wake_p = -(weights * (logp_y_samples + log_prior_samples)).sum(-1)
        q_weights = weights
    wake_q = -(q_weights * log_q_samples).sum(-1)
    log_marginal_estimate = importance_log_marginal(
        logp_y_samples.detach(), log_prior_samples.detach(), log_q_samples.detach()
    )
    ess = 1.0 / (weights**2).sum(-1)
    return wake_p, wake_q, log_marginal_estimate, ess


def kl_weight_at(num_updates: int, kl_weight: float, warmup_updates: int) -> float:
    """Linear KL annealing 0 -> kl_weight over ``warmup_updates`` updates."""
    if warmup_updates <= 0:
        return kl_weight
    return kl_weight * min(1.0, num_updates / warmup_updates)

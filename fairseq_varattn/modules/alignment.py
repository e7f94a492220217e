"""Distributions over source positions: the one place alignment math lives.

Every criterion (and the VQA task, where "source positions" are image
regions) goes through these classes, so entropies, KLs, samples and top-k
sets are computed one way everywhere.

Conventions: the last dimension indexes source positions; ``mask`` is True at
padding, which gets probability exactly zero (log-prob ``-inf``).
"""

import torch
import torch.nn.functional as F


def weighted_context(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_i weights[..., i] values[b, i]: weights (B, ..., T), values (B, T, C)."""
    weights = weights.to(values.dtype)
    shape = weights.shape
    flat = weights.reshape(shape[0], -1, shape[-1])
    return torch.bmm(flat, values).view(*shape[:-1], values.size(-1))


def _masked_plogp(p: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    # 0 * -inf is nan, and torch.where would still send nan gradients through
    # the branch it discards: zero the -inf first, so padding contributes 0.
    return p * log_p.masked_fill(p == 0, 0.0)


class CategoricalAlignment:
    """A batch of categoricals p(z = i) over the last dimension.

    Scores are promoted to float32 so fp16/bf16 autocast cannot underflow the
    normaliser; callers cast results back if they need to.
    """

    def __init__(self, scores: torch.Tensor, mask: torch.Tensor = None):
        scores = scores.float()
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        self.log_probs = F.log_softmax(scores, dim=-1)
        self.mask = mask
        self.index = None

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor, index: torch.Tensor = None):
        """A categorical from normalised log-probs; with ``index`` (same
        shape), a distribution on those positions only (a top-k truncation)."""
        dist = cls.__new__(cls)
        dist.log_probs = log_probs
        dist.mask = None
        dist.index = index
        return dist

    def detached(self) -> "CategoricalAlignment":
        return CategoricalAlignment.from_log_probs(self.log_probs.detach(), self.index)

    def posterior(self, log_likelihood: torch.Tensor) -> "CategoricalAlignment":
        """p(z = i | y), proportional to p(z = i) p(y | z = i), from log p(y | z = i)
        of the same shape; positions without prior mass (padding) keep none."""
        padding = ~torch.isfinite(self.log_probs)
        return CategoricalAlignment(self.log_probs + log_likelihood.masked_fill(padding, 0.0))

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    def mean(self) -> torch.Tensor:
        """E[one-hot(z)]: the probabilities (as ``DirichletAlignment.mean``)."""
        return self.probs

    @property
    def support_size(self) -> int:
        return self.log_probs.size(-1)

    def log_prob(self, index: torch.Tensor) -> torch.Tensor:
        """log p(z = index); ``index`` has shape batch_shape + (K,)."""
        return self.log_probs.gather(-1, index)

    def entropy(self) -> torch.Tensor:
        return -_masked_plogp(self.probs, self.log_probs).sum(-1)

    def kl(self, other: "CategoricalAlignment") -> torch.Tensor:
        """KL(self || other), closed form, zero where self has no mass.
        ``other`` is over every position; self may be a truncation."""
        p = self.probs
        other_lp = other.log_probs if self.index is None else other.log_probs.gather(-1, self.index)
        diff = (self.log_probs - other_lp).masked_fill(p == 0, 0.0)
        return (p * diff).sum(-1)

    def expectation(self, values: torch.Tensor) -> torch.Tensor:
        """E_z[values_z] for values of shape (B, T, C) and probs (B, ..., T)."""
        return weighted_context(self.probs, values)

    def sample(self, num_samples: int) -> torch.Tensor:
        """Draw ``num_samples`` positions per distribution: batch_shape + (K,)."""
        probs = self.probs.detach()
        flat = probs.reshape(-1, probs.size(-1))
        draws = torch.multinomial(flat, num_samples, replacement=True)
        return draws.view(*probs.shape[:-1], num_samples)

    def gumbel_softmax(self, num_samples: int, temperature: float) -> torch.Tensor:
        """Relaxed one-hot samples (Jang et al. 2017): batch_shape + (K, T).

        Reparameterised: gradients flow into ``log_probs``. Padding keeps
        weight exactly zero because its log-prob is -inf.
        """
        logits = self.log_probs.unsqueeze(-2).expand(*self.log_probs.shape[:-1], num_samples, self.support_size)
        uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        gumbels = -torch.log(-torch.log(uniform))
        return F.softmax((logits + gumbels) / temperature, dim=-1)

    def topk(self, k: int):
        """The k most probable positions and their log-probs renormalised
        over that set (the "K-max" approximation of the paper, Sec. 5)."""
        k = min(k, self.support_size)
        top_lp, top_idx = self.log_probs.topk(k, dim=-1)
        return top_idx, top_lp - torch.logsumexp(top_lp, dim=-1, keepdim=True)

    def truncated(self, k: int) -> "CategoricalAlignment":
        """``--alignment-topk k``: the distribution on its k most probable
        positions, renormalised (its ``index`` says which), or itself when k
        is 0 or keeps every position."""
        if not 0 < k < self.support_size:
            return self
        index, log_probs = self.topk(k)
        return CategoricalAlignment.from_log_probs(log_probs, index=index)

    def truncated_log_weights(self, k: int) -> torch.Tensor:
        """log-probs of ``truncated(k)`` over every position, in float32:
        -inf outside the k kept ones (what the output layers' mixtures weigh by)."""
        used = self.truncated(k)
        if used is self:
            return self.log_probs.float()
        return torch.full_like(self.log_probs.float(), float("-inf")).scatter(-1, used.index, used.log_probs.float())

    def argmax(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)


class DirichletAlignment:
    """Dir(alpha) over the simplex of the unpadded source positions.

    Padded coordinates carry a placeholder concentration of 1 and are left
    out of every sum, so each method is exactly the Dirichlet over the
    unpadded coordinates (torch's Dirichlet has no mask, and a zero
    concentration is invalid).  Computation is in float32 whatever the
    input dtype: lgamma/digamma of small concentrations lose everything in
    fp16.
    """

    def __init__(self, concentration: torch.Tensor, mask: torch.Tensor = None):
        alpha = concentration.float()
        if mask is None:
            mask = torch.zeros_like(alpha, dtype=torch.bool)
        self.mask = mask
        self.valid = (~mask).to(alpha)
        self.concentration = alpha.masked_fill(mask, 1.0)

    @property
    def total(self) -> torch.Tensor:
        return (self.concentration * self.valid).sum(-1)

    def mean(self) -> torch.Tensor:
        return self.concentration * self.valid / self.total.unsqueeze(-1)

    def detached(self) -> "DirichletAlignment":
        return DirichletAlignment(self.concentration.detach(), self.mask)

    def rsample_log(self, num_samples: int) -> torch.Tensor:
        """log z for reparameterised samples z ~ Dir: batch_shape + (K, T).

        Sampled in log space as normalised Gammas, boosting each shape by one
        (Marsaglia & Tsang 2000): G(a) = G(a + 1) U^(1/a).  With the small
        concentrations attention produces, G(a) itself underflows and
        torch's Dirichlet clamps every coordinate to the same 1e-38, which
        is not a sample at all; log G(a) = log G(a + 1) + log(U) / a is
        finite for any a > 0.  Both factors are differentiable in a (implicit
        gradients for the Gamma, the explicit 1/a for U), so this is a
        pathwise estimator like ``Dirichlet.rsample``.
        """
        alpha = self.concentration.unsqueeze(-2).expand(
            *self.concentration.shape[:-1], num_samples, self.concentration.size(-1)
        )
        boosted = torch.distributions.Gamma(alpha + 1.0, torch.ones_like(alpha)).rsample()
        uniform = torch.rand_like(alpha).clamp_(min=torch.finfo(alpha.dtype).tiny)
        log_gamma = torch.log(boosted) + torch.log(uniform) / alpha
        log_gamma = log_gamma.masked_fill(self.mask.unsqueeze(-2), float("-inf"))
        return F.log_softmax(log_gamma, dim=-1)

    def rsample(self, num_samples: int) -> torch.Tensor:
        """Reparameterised samples z ~ Dir: batch_shape + (K, T), zero at padding."""
        return self.rsample_log(num_samples).exp()

    def log_prob_at_log(self, log_z: torch.Tensor) -> torch.Tensor:
        """log Dir(z) given log z of shape batch_shape + (K, T): batch_shape + (K,).

        Taking log z (not z) keeps the density finite when coordinates of z
        underflow to zero, which small concentrations make routine.
        """
        alpha = self.concentration.unsqueeze(-2)
        valid = self.valid.unsqueeze(-2)
        log_norm = torch.lgamma(self.total) - (torch.lgamma(self.concentration) * self.valid).sum(-1)
        body = ((alpha - 1.0) * log_z.masked_fill(valid == 0, 0.0) * valid).sum(-1)
        return log_norm.unsqueeze(-1) + body

    def kl(self, other: "DirichletAlignment") -> torch.Tensor:
        """KL(Dir(a) || Dir(b)) in closed form."""
        a, b, valid = self.concentration, other.concentration, self.valid
        a0, b0 = self.total, other.total
        log_norms = torch.lgamma(a0) - torch.lgamma(b0) - ((torch.lgamma(a) - torch.lgamma(b)) * valid).sum(-1)
        digamma_gap = torch.digamma(a) - torch.digamma(a0).unsqueeze(-1)
        return log_norms + ((a - b) * digamma_gap * valid).sum(-1)

    def entropy(self) -> torch.Tensor:
        a, valid = self.concentration, self.valid
        a0 = self.total
        log_beta = (torch.lgamma(a) * valid).sum(-1) - torch.lgamma(a0)
        return log_beta + (a0 - valid.sum(-1)) * torch.digamma(a0) - ((a - 1.0) * torch.digamma(a) * valid).sum(-1)

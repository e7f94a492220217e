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

    @classmethod
    def from_log_probs(cls, log_probs: torch.Tensor):
        dist = cls.__new__(cls)
        dist.log_probs = log_probs
        dist.mask = None
        return dist

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    @property
    def support_size(self) -> int:
        return self.log_probs.size(-1)

    def log_prob(self, index: torch.Tensor) -> torch.Tensor:
        """log p(z = index); ``index`` has shape batch_shape + (K,)."""
        return self.log_probs.gather(-1, index)

    def entropy(self) -> torch.Tensor:
        return -_masked_plogp(self.probs, self.log_probs).sum(-1)

    def kl(self, other: "CategoricalAlignment") -> torch.Tensor:
        """KL(self || other), closed form, zero where self has no mass."""
        p = self.probs
        diff = (self.log_probs - other.log_probs).masked_fill(p == 0, 0.0)
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
        logits = self.log_probs.unsqueeze(-2).expand(
            *self.log_probs.shape[:-1], num_samples, self.support_size
        )
        uniform = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        gumbels = -torch.log(-torch.log(uniform))
        return F.softmax((logits + gumbels) / temperature, dim=-1)

    def topk(self, k: int):
        """The k most probable positions and their log-probs renormalised
        over that set (the "K-max" approximation of the paper, Sec. 5)."""
        k = min(k, self.support_size)
        top_lp, top_idx = self.log_probs.topk(k, dim=-1)
        return top_idx, top_lp - torch.logsumexp(top_lp, dim=-1, keepdim=True)

    def argmax(self) -> torch.Tensor:
        return self.log_probs.argmax(-1)


class DirichletAlignment:
    """Dir(alpha) over the simplex of source positions.

    Padding is handled by giving padded positions a tiny concentration and
    zeroing (then renormalising) their sampled weight: torch's Dirichlet has
    no notion of a mask, and a literal zero concentration is invalid.
    """

    def __init__(self, concentration: torch.Tensor, mask: torch.Tensor = None):
        self.concentration = concentration.float()
        self.mask = mask
        if mask is not None:
            self.concentration = self.concentration.masked_fill(mask, 1e-4)

    def _restrict(self, alpha_or_z):
        if self.mask is None:
            return alpha_or_z
        return alpha_or_z.masked_fill(self.mask, 0.0)

    def active_concentration(self):
        return self._restrict(self.concentration)

    def mean(self) -> torch.Tensor:
        alpha = self.active_concentration()
        return alpha / alpha.sum(-1, keepdim=True)

    def rsample(self, num_samples: int) -> torch.Tensor:
        """Reparameterised samples (implicit gradients): (K,) + batch_shape + (T,)."""
        alpha = self.active_concentration()
        # Padded coordinates are sampled with a harmless concentration and
        # dropped, which is exactly a Dirichlet over the unpadded coordinates.
        safe = alpha if self.mask is None else alpha.masked_fill(self.mask, 1.0)
        z = torch.distributions.Dirichlet(safe).rsample((num_samples,))
        if self.mask is not None:
            z = z.masked_fill(self.mask, 0.0)
            z = z / z.sum(-1, keepdim=True).clamp_min(1e-12)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        alpha = self.active_concentration()
        valid = torch.ones_like(alpha) if self.mask is None else (~self.mask).to(alpha)
        log_z = torch.log(z.clamp_min(1e-30))
        norm = torch.lgamma((alpha * valid).sum(-1)) - (torch.lgamma(alpha.clamp_min(1e-30)) * valid).sum(-1)
        return norm + (((alpha - 1.0) * log_z) * valid).sum(-1)

    def kl(self, other: "DirichletAlignment") -> torch.Tensor:
        """KL(Dir(a) || Dir(b)) in closed form over the unpadded coordinates."""
        a = self.active_concentration()
        b = other.active_concentration()
        valid = torch.ones_like(a) if self.mask is None else (~self.mask).to(a)
        a_safe = torch.where(valid > 0, a, torch.ones_like(a))
        b_safe = torch.where(valid > 0, b, torch.ones_like(b))
        a0 = (a_safe * valid).sum(-1)
        b0 = (b_safe * valid).sum(-1)
        term = (
            torch.lgamma(a0)
            - torch.lgamma(b0)
            - ((torch.lgamma(a_safe) - torch.lgamma(b_safe)) * valid).sum(-1)
        )
        digamma_gap = torch.digamma(a_safe) - torch.digamma(a0).unsqueeze(-1)
        return term + (((a_safe - b_safe) * digamma_gap) * valid).sum(-1)

    def entropy(self) -> torch.Tensor:
        a = self.active_concentration()
        valid = torch.ones_like(a) if self.mask is None else (~self.mask).to(a)
        a_safe = torch.where(valid > 0, a, torch.ones_like(a))
        k = valid.sum(-1)
        a0 = (a_safe * valid).sum(-1)
        log_beta = (torch.lgamma(a_safe) * valid).sum(-1) - torch.lgamma(a0)
        return (
            log_beta
            + (a0 - k) * torch.digamma(a0)
            - (((a_safe - 1.0) * torch.digamma(a_safe)) * valid).sum(-1)
        )

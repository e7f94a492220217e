"""One batch as the latent criterions see it: the model's alignment head,
its decoder states and annotations, the prior and q, and the alignment
log-likelihoods log p(y_j | z_j = i), computed at most once per batch."""

import math
from functools import cached_property

import torch
import torch.nn.functional as F

from ..modules.alignment import CategoricalAlignment, DirichletAlignment
from ..modules.alignment_head import AlignmentStep
from ..modules.losses import importance_log_marginal, marginal_nll


class LatentBatch:
    """Decoder features of one batch plus cached alignment log-likelihoods."""

    def __init__(self, model, features, extra, target, padding_idx):
        self.head = model.alignment_head  # an AlignmentHead: the decoder's, or VQA's answer head
        self.output = self.head.output
        self.features = features  # the recurrence's attentional vectors (B, N, D)
        step = self.step = AlignmentStep.of(extra)
        self.source_tokens = step.source_tokens
        self.hidden = step.hidden
        self.enc = step.encoder_states
        self.enc_mask = step.encoder_padding_mask
        self.scores = step.scores
        self.q_scores = step.q_scores
        self.context = step.context  # the prior's expected context (B, N, C)
        self.target = target
        self.token_mask = target.ne(padding_idx)
        # one dropout draw for every path of this batch (enumeration, samples,
        # baselines), so their differences are the alignment's, not noise's
        self.masks = self.output.dropout_masks(self.hidden)
        self._logp_all = None

    # Cached: the objective and the logged exact nll both read the prior.
    @cached_property
    def prior(self):
        return self.head.alignment_distribution(self.scores, self.enc_mask)

    @cached_property
    def q(self):
        return self.head.alignment_distribution(self.q_scores, self.enc_mask)

    @cached_property
    def _shared(self) -> dict:
        """What the output layer's paths share within this batch (``batch_terms``)."""
        return self.output.batch_terms(self.hidden, self.enc, self.masks, self.source_tokens)

    def logp_y_all(self) -> torch.Tensor:
        """log p(y_j | z_j = i) for every i: (B, N, T); computed once per batch."""
        if self._logp_all is None:
            self._logp_all = self.output.alignment_logprobs(
                self.hidden, self.enc, self.target, masks=self.masks, source_tokens=self.source_tokens, **self._shared
            )
        return self._logp_all

    def logp_y_at(self, positions) -> torch.Tensor:
        """log p(y_j | z_j = i) at ``positions`` (B, N, K): samples or a top-k set."""
        if self.output.enumeration_is_cheap:
            return self.logp_y_all().gather(-1, positions)
        return self.output.alignment_logprobs(
            self.hidden, self.enc, self.target, positions, masks=self.masks, source_tokens=self.source_tokens
        )

    def logp_y_on(self, dist: CategoricalAlignment) -> torch.Tensor:
        """log p(y | z) on dist's support: every position, or a truncation's ``index``."""
        return self.logp_y_all() if dist.index is None else self.logp_y_at(dist.index)

    def soft_logp_y(self, dist: CategoricalAlignment) -> torch.Tensor:
        """log p(y_j | soft context E_dist[x~]): the REINFORCE baseline."""
        return self.output.weighted_logprobs(
            self.hidden,
            dist.probs,
            self.enc,
            self.target,
            masks=self.masks,
            source_tokens=self.source_tokens,
            **self._shared,
        )

    def soft_nll(self) -> torch.Tensor:
        """-log p_soft(y_j): the same parameters read as soft attention (the
        output at the prior's expected context), the warm-up objective."""
        logits = self.output.expected_logits(self.features, self.step).float()
        return -F.log_softmax(logits, dim=-1).gather(-1, self.target.unsqueeze(-1)).squeeze(-1)

    def simplex_logp_y(self, weights: torch.Tensor) -> torch.Tensor:
        """log p(y_j | context sum_i w_i x~_i) for K weight vectors per token,
        weights (B, N, K, T) -> (B, N, K): relaxed one-hots and Dirichlet samples."""
        return self.output.weighted_logprobs(
            self.hidden,
            weights,
            self.enc,
            self.target,
            masks=self.masks,
            source_tokens=self.source_tokens,
            **self._shared,
        )

    @torch.no_grad()
    def diagnostics(self) -> dict:
        """Per-token numbers that show whether the alignment is being learnt
        (docs/design.md, "Is the latent attention learning?"):

        * ``entropy_uniform``: log of the source length, the entropy of a
          prior that has learnt nothing; ``entropy_p`` near it means no alignment;
        * ``prior_maxp`` / ``q_maxp``: the largest alignment probability;
        * ``score_spread``: standard deviation of the prior's scores over the
          source positions (near 0: the prior cannot move);
        * ``logpy_spread``: standard deviation over i of log p(y_j | z_j = i),
          how much the output depends on the alignment at all (near 0: the
          posterior equals the prior and the prior gets no gradient);
        * ``entropy_post``: entropy of the exact posterior p(z_j | x, y);
        * ``annot_spread``: how different a sentence's annotations x~_i are,
          sqrt(sum_i |x~_i - mean|^2 / sum_i |x~_i|^2) (0: every position
          carries the same vector, so no alignment can matter);
        * ``prior_concentration`` / ``q_concentration`` (Dirichlet only): the
          total concentration sum_i alpha_i.  ``prior_maxp`` says how sharp
          the mean is, this says how far samples stray from it: large (tens
          or more) means samples sit at the mean, i.e. soft attention with
          the mean's weights; below 1 they sit near the simplex's corners,
          i.e. hard attention.  Its differential ``entropy_p`` mixes the two.

        The last two need the T alignment log-likelihoods and are only
        reported when the criterion computed them anyway.
        """
        valid = torch.isfinite(self.scores)  # B, N, T: False at source padding
        count = valid.sum(-1).clamp_min(1).to(torch.float32)
        out = {"entropy_uniform": count.log(), "prior_maxp": self.prior.mean().max(-1).values}
        if self.q_scores is not None:
            out["q_maxp"] = self.q.mean().max(-1).values
        if isinstance(self.prior, DirichletAlignment):
            out["prior_concentration"] = self.prior.total
            if self.q_scores is not None:
                out["q_concentration"] = self.q.total
        out["score_spread"] = _masked_std(self.scores.float(), valid, count)
        enc = self.enc.float().masked_fill(self.enc_mask.unsqueeze(-1), 0.0)  # B, T, C
        length = (~self.enc_mask).sum(-1, keepdim=True).clamp_min(1)
        centred = (enc - enc.sum(1, keepdim=True) / length.unsqueeze(-1)).masked_fill(self.enc_mask.unsqueeze(-1), 0.0)
        spread = (centred.pow(2).sum((1, 2)) / enc.pow(2).sum((1, 2)).clamp_min(1e-12)).sqrt()
        out["annot_spread"] = spread.unsqueeze(1).expand_as(count)
        if self._logp_all is not None and isinstance(self.prior, CategoricalAlignment):
            logp = self._logp_all.float()
            out["logpy_spread"] = _masked_std(logp, valid, count)
            out["entropy_post"] = self.prior.posterior(logp).entropy()
        return out

    def exact_nll(self) -> torch.Tensor:
        return marginal_nll(self.prior.log_probs, self.logp_y_all())

    def importance_nll(self, num_samples: int) -> torch.Tensor:
        """-log p(y_j) for a continuous z, estimated with ``num_samples`` draws
        (an upper bound on the NLL in expectation, see ``importance_log_marginal``).

        The proposal is the defensive mixture r = (q + p) / 2 (Hesterberg
        1995): the weights p / r are at most 2, whereas with q alone they
        have infinite variance as soon as q is more concentrated than the
        prior in one coordinate, which a trained q routinely is.
        """
        prior, q = self.prior, self.q
        log_z_q, log_z_p = q.rsample_log(num_samples), prior.rsample_log(num_samples)
        from_q = torch.rand(log_z_q.shape[:-1], device=log_z_q.device).lt(0.5).unsqueeze(-1)
        log_z = torch.where(from_q, log_z_q, log_z_p)
        log_prior = prior.log_prob_at_log(log_z)
        log_mixture = torch.logaddexp(q.log_prob_at_log(log_z), log_prior) - math.log(2.0)
        return -importance_log_marginal(self.simplex_logp_y(log_z.exp()), log_prior, log_mixture)


def _masked_std(values, valid, count):
    """Standard deviation over the last dimension's ``valid`` entries."""
    values = values.masked_fill(~valid, 0.0)
    mean = values.sum(-1, keepdim=True) / count.unsqueeze(-1)
    return (((values - mean) ** 2).masked_fill(~valid, 0.0).sum(-1) / count).sqrt()

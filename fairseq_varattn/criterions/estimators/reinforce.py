"""``--estimator reinforce``: the score function on samples from dist, with
the soft-attention likelihood under an expected context as the baseline
(docs/design.md, "Criterions"; the paper's Sec. 4 control variate)."""

from dataclasses import dataclass, field

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from ...modules.losses import reinforce_nll, value_with_gradient_of
from ..logged import BITS, DERIVED
from . import Estimator, Reconstruction, register_estimator


@dataclass
class BaselineOptions:
    train_baseline: bool = field(
        default=False,
        metadata={
            "help": "REINFORCE: also train the soft baseline by adding its NLL to the "
            "gradient (logged as baseline_nll, not in loss)"
        },
    )
    baseline_attention: ChoiceEnum(["sampled", "prior"]) = field(
        default="sampled",
        metadata={
            "help": "REINFORCE: the soft baseline's context is the expectation under the "
            "distribution sampled from (q for the ELBO, the prior for hard attention) "
            "or under the prior, as the paper's code; with --train-baseline, 'prior' "
            "trains the prior as soft attention (docs/design.md, Criterions)"
        },
    )


@register_estimator
class Reinforce(Estimator):
    name = "reinforce"
    options = BaselineOptions
    logged = {
        "baseline_nll": BITS,
        # squared score-function weights without / with the baseline, summed over
        # samples, and the number of samples: their ratio is sf_var_ratio
        "sf_reward_sq": DERIVED,
        "sf_advantage_sq": DERIVED,
        "sf_count": DERIVED,
    }

    def reconstruction(self, batch, dist) -> Reconstruction:
        num_samples = self.cfg.num_samples
        z = dist.sample(num_samples)
        logp_y = batch.logp_y_at(z)
        # any context that does not depend on the sample keeps the estimator unbiased
        context_dist = batch.prior if self.cfg.baseline_attention == "prior" else dist
        # without --train-baseline the baseline is a constant: no graph, so its
        # (B, N, V) softmax is not kept alive until backward
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_baseline):
            baseline = batch.soft_logp_y(context_dist)
        loss, advantage = reinforce_nll(logp_y, dist.log_prob(z), baseline)
        logged = {
            "baseline_nll": -baseline.detach(),
            "sf_reward_sq": (logp_y.detach() ** 2).sum(-1),
            "sf_advantage_sq": (advantage**2).sum(-1),
            "sf_count": torch.full_like(baseline.detach(), float(num_samples)),
        }
        if self.cfg.train_baseline:  # its gradient, not its value: loss stays the objective
            loss = value_with_gradient_of(loss, -baseline)
        return Reconstruction(loss, dist, logged)

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        count = sum(log.get("sf_count", 0) for log in logging_outputs)
        if count > 0:
            reward_sq = sum(log.get("sf_reward_sq", 0) for log in logging_outputs) / count
            advantage_sq = sum(log.get("sf_advantage_sq", 0) for log in logging_outputs) / count
            metrics.log_scalar("sf_var_ratio", advantage_sq / max(reward_sq, 1e-12), count, round=4)

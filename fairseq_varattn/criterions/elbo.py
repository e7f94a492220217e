"""``varattn_elbo``: variational attention, E_q[log p(y | z)] - KL(q || p) with
an amortised q(z | x, y) (docs/design.md, "Criterions"), by enumeration,
REINFORCE or Gumbel-softmax.  With ``--alignment-topk k`` (enumeration) q is
truncated to its top k in both terms, so the objective stays a lower bound."""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import (
    BaselineOptions,
    EstimatorMixin,
    KLOptions,
    KLWeightMixin,
    LatentCriterionConfig,
    VarAttnCriterion,
)


@dataclass
class ElboConfig(KLOptions, BaselineOptions, LatentCriterionConfig):
    estimator: ChoiceEnum(["enum", "reinforce", "gumbel"]) = field(
        default="enum", metadata={"help": "how E_q[log p(y | z)] and its gradient are computed"})
    gumbel_temperature: float = field(
        default=0.1, metadata={"help": "Gumbel-softmax temperature (the paper's code uses 0.1)"})


@register_criterion("varattn_elbo", dataclass=ElboConfig)
class ElboCriterion(EstimatorMixin, KLWeightMixin, VarAttnCriterion):
    config_class = ElboConfig
    needs_inference_network = True

    def token_terms(self, model, batch):
        prior, q = batch.prior, batch.q
        terms = {"entropy_q": q.entropy(), "entropy_p": prior.entropy()}
        reconstruction, used = self.reconstruction(batch, q, terms)
        kl = used.kl(prior)
        terms["kl"] = kl
        terms["loss"] = reconstruction + self.current_kl_weight(model) * kl
        return terms

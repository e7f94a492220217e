"""``varattn_hard``: hard attention, E_{p(z)}[log p(y | z)] (a Jensen lower bound
on the marginal), by enumeration or by REINFORCE with samples from the prior.

With ``--alignment-topk k`` the expectation is under the prior truncated to
its top k and renormalised, p', and the objective is E_p'[log p(y | z)] -
KL(p' || p), the ELBO with q = p', so it stays a lower bound on log p(y).
"""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import BaselineOptions, EstimatorMixin, LatentCriterionConfig, VarAttnCriterion


@dataclass
class HardAttentionConfig(BaselineOptions, LatentCriterionConfig):
    estimator: ChoiceEnum(["enum", "reinforce"]) = field(
        default="enum", metadata={"help": "exact expectation, or REINFORCE with a baseline"}
    )


@register_criterion("varattn_hard", dataclass=HardAttentionConfig)
class HardAttentionCriterion(EstimatorMixin, VarAttnCriterion):
    config_class = HardAttentionConfig

    def token_terms(self, model, batch):
        prior = batch.prior
        terms = {"entropy_p": prior.entropy()}
        loss, used = self.reconstruction(batch, prior, terms)
        terms["loss"] = loss if used is prior else loss + used.kl(prior)
        return terms

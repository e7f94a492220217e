"""``varattn_hard``: hard attention, E_{p(z)}[log p(y | z)] (a Jensen lower bound
on the marginal), by enumeration or by REINFORCE with samples from the prior.

With ``--alignment-topk k`` the expectation is under the prior truncated to
its top k and renormalised, p', and the objective is E_p'[log p(y | z)] -
KL(p' || p), the ELBO with q = p', so it stays a lower bound on log p(y).
"""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import EstimatorMixin, LatentCriterionConfig, VarAttnCriterion
from .estimators import estimators_for, logged_by, option_classes
from .logged import COMMON

ESTIMATORS = estimators_for("varattn_hard")


@dataclass
class HardAttentionConfig(*option_classes("varattn_hard"), LatentCriterionConfig):
    estimator: ChoiceEnum([e.name for e in ESTIMATORS]) = field(
        default="enum", metadata={"help": "exact expectation, or REINFORCE with a baseline"}
    )


@register_criterion("varattn_hard", dataclass=HardAttentionConfig)
class HardAttentionCriterion(EstimatorMixin, VarAttnCriterion):
    config_class = HardAttentionConfig
    estimators = ESTIMATORS
    logged = {**COMMON, **logged_by("varattn_hard")}

    def token_terms(self, model, batch):
        prior = batch.prior
        loss, used, terms = self.estimator.reconstruction(batch, prior)
        terms["entropy_p"] = prior.entropy()
        terms["loss"] = loss if used is prior else loss + used.kl(prior)
        return terms

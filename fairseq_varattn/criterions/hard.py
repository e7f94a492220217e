"""``varattn_hard``: hard attention, E_{p(z)}[log p(y | z)] (a Jensen lower bound
on the marginal), by enumeration or by REINFORCE with samples from the prior."""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import VarAttnCriterion, VarAttnCriterionConfig


@dataclass
class HardAttentionConfig(VarAttnCriterionConfig):
    estimator: ChoiceEnum(["enum", "reinforce"]) = field(
        default="enum", metadata={"help": "exact expectation, or REINFORCE with a baseline"})
    train_baseline: bool = field(
        default=False, metadata={"help": "add the soft baseline's own NLL to the loss"})


@register_criterion("varattn_hard", dataclass=HardAttentionConfig)
class HardAttentionCriterion(VarAttnCriterion):
    def __init__(self, task, sentence_avg, num_samples=1, skip_exact_nll_in_training=False,
                 estimator="enum", train_baseline=False):
        super().__init__(task, sentence_avg, num_samples, skip_exact_nll_in_training)
        self.estimator = estimator
        self.train_baseline = train_baseline

    def token_terms(self, model, batch):
        prior = batch.prior
        terms = {"entropy_p": prior.entropy()}
        terms["loss"] = self.reconstruction(model, batch, prior, terms)
        return terms

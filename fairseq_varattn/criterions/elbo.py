"""``varattn_elbo``: variational attention, E_q[log p(y | z)] - KL(q || p) with
an amortised q(z | x, y) (DESIGN.md §3), by enumeration, REINFORCE or
Gumbel-softmax."""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import VarAttnCriterion, VarAttnKLConfig


@dataclass
class ElboConfig(VarAttnKLConfig):
    estimator: ChoiceEnum(["enum", "reinforce", "gumbel"]) = field(
        default="enum", metadata={"help": "how E_q[log p(y | z)] and its gradient are computed"})
    gumbel_temperature: float = field(
        default=0.1, metadata={"help": "Gumbel-softmax temperature (the paper's code uses 0.1)"})
    train_baseline: bool = field(
        default=False, metadata={"help": "REINFORCE: add the soft baseline's own NLL to the loss"})


@register_criterion("varattn_elbo", dataclass=ElboConfig)
class ElboCriterion(VarAttnCriterion):
    needs_inference_network = True

    def __init__(self, task, sentence_avg, num_samples=1, skip_exact_nll_in_training=False,
                 kl_weight=1.0, kl_warmup_updates=0, estimator="enum", gumbel_temperature=0.1,
                 train_baseline=False):
        super().__init__(task, sentence_avg, num_samples, skip_exact_nll_in_training,
                         kl_weight, kl_warmup_updates)
        if gumbel_temperature <= 0:
            raise ValueError(f"--gumbel-temperature must be > 0, got {gumbel_temperature}")
        self.estimator = estimator
        self.gumbel_temperature = gumbel_temperature
        self.train_baseline = train_baseline

    def token_terms(self, model, batch):
        prior, q = batch.prior, batch.q
        kl = q.kl(prior)
        terms = {"kl": kl, "entropy_q": q.entropy(), "entropy_p": prior.entropy()}
        reconstruction = self.reconstruction(model, batch, q, terms)
        terms["loss"] = reconstruction + self.current_kl_weight(model) * kl
        return terms

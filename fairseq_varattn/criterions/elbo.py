"""``varattn_elbo``: variational attention, E_q[log p(y | z)] - KL(q || p) with
an amortised q(z | x, y) (docs/design.md, "Criterions"), by enumeration,
REINFORCE or Gumbel-softmax.  With ``--alignment-topk k`` (enumeration) q is
truncated to its top k in both terms, so the objective stays a lower bound."""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum

from .base import EstimatorMixin, KLOptions, KLWeightMixin, LatentCriterionConfig, VarAttnCriterion
from .estimators import estimators_for, logged_by, option_classes
from .logged import COMMON, RAW

ESTIMATORS = estimators_for("varattn_elbo")


@dataclass
class ElboConfig(KLOptions, *option_classes("varattn_elbo"), LatentCriterionConfig):
    estimator: ChoiceEnum([e.name for e in ESTIMATORS]) = field(
        default="enum", metadata={"help": "how E_q[log p(y | z)] and its gradient are computed"}
    )


@register_criterion("varattn_elbo", dataclass=ElboConfig)
class ElboCriterion(EstimatorMixin, KLWeightMixin, VarAttnCriterion):
    config_class = ElboConfig
    needs_inference_network = True
    estimators = ESTIMATORS
    logged = {**COMMON, "qgrad_rec": RAW, "qgrad_kl": RAW, **logged_by("varattn_elbo")}

    def token_terms(self, model, batch):
        prior, q = batch.prior, batch.q
        reconstruction, used, terms = self.estimator.reconstruction(batch, q)
        kl = used.kl(prior)
        terms.update(entropy_q=q.entropy(), entropy_p=prior.entropy(), kl=kl)
        terms["loss"] = reconstruction + self.current_kl_weight(model) * kl
        if self.estimator.name == "enum" and used is q:
            terms.update(q_gradient_norms(q, prior, batch.logp_y_all()))
        return terms


@torch.no_grad()
def q_gradient_norms(q, prior, logp_y) -> dict:
    """What moves q, per token: the norms over i of the negated ELBO's
    gradient with respect to q's scores from each of its terms, in closed form
    (docs/design.md, "Is the latent attention learning?"):
    d(-E_q[log p(y | z)]) / ds_i = -q_i (log p(y | i) - E_q[log p(y | z)]) and
    dKL(q || p) / ds_i = q_i (log q_i / p_i - KL).  Where the first is small
    next to the model's own learning, q stays where it started."""
    probs = q.probs
    finite = torch.isfinite(q.log_probs)
    logp_y = logp_y.float().masked_fill(~finite, 0.0)
    rec = probs * (logp_y - (probs * logp_y).sum(-1, keepdim=True))
    ratio = (q.log_probs - prior.log_probs).masked_fill(~finite, 0.0)
    kl = probs * (ratio - (probs * ratio).sum(-1, keepdim=True))
    return {"qgrad_rec": rec.norm(dim=-1), "qgrad_kl": kl.norm(dim=-1)}

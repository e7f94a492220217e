"""``varattn_marginal``: exact marginal likelihood log sum_i p(z=i) p(y | z=i).

With ``--alignment-topk k`` the sum runs over the prior's k most probable
positions with the prior renormalised over them: the exact likelihood of the
K-max model that generation then uses (a normalised distribution over y).
"""

from fairseq.criterions import register_criterion

from ..modules.losses import marginal_nll
from .base import LatentCriterionConfig, VarAttnCriterion


@register_criterion("varattn_marginal", dataclass=LatentCriterionConfig)
class MarginalCriterion(VarAttnCriterion):
    config_class = LatentCriterionConfig

    def token_terms(self, model, batch):
        prior = batch.prior
        used = prior.truncated(batch.head.alignment_topk)
        loss = marginal_nll(used.log_probs, batch.logp_y_on(used))
        terms = {"loss": loss, "entropy_p": prior.entropy()}
        if used is prior:
            terms["nll"] = loss.detach()
        return terms

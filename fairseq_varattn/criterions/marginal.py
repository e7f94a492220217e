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
        log_w, logp_y = batch.enumerate(prior, batch.head.alignment_topk)
        loss = marginal_nll(log_w, logp_y)
        terms = {"loss": loss, "entropy_p": prior.entropy()}
        if log_w is prior.log_probs:
            terms["nll"] = loss.detach()
        return terms

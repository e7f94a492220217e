"""``--estimator enum``: the exact expectation over every source position.

With ``--alignment-topk k`` the expectation is under dist truncated to its k
most probable positions and renormalised, and that truncated distribution is
what the caller's KL uses, so the objective stays a bound (docs/design.md,
"Criterions")."""

from ...modules.alignment import CategoricalAlignment
from ...modules.losses import expected_nll
from . import Estimator, Reconstruction, register_estimator


@register_estimator
class Enumeration(Estimator):
    name = "enum"

    def reconstruction(self, batch, dist) -> Reconstruction:
        topk = batch.head.alignment_topk
        if 0 < topk < dist.support_size:
            idx, log_w = dist.topk(topk)
            truncated = CategoricalAlignment.from_log_probs(log_w, index=idx)
            return Reconstruction(expected_nll(log_w, batch.logp_y_at(idx)), truncated, {})
        return Reconstruction(expected_nll(dist.log_probs, batch.logp_y_all()), dist, {})

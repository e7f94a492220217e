"""``--estimator enum``: the exact expectation over every source position.

With ``--alignment-topk k`` the expectation is under dist truncated to its k
most probable positions and renormalised, and that truncated distribution is
what the caller's KL uses, so the objective stays a bound (docs/design.md,
"Criterions")."""

from ...modules.losses import expected_nll
from . import Estimator, Reconstruction, register_estimator


@register_estimator
class Enumeration(Estimator):
    name = "enum"

    def reconstruction(self, batch, dist) -> Reconstruction:
        used = dist.truncated(batch.head.alignment_topk)
        return Reconstruction(expected_nll(used.log_probs, batch.logp_y_on(used)), used, {})

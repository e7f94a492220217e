"""``varattn_rws``: reweighted wake-sleep (Bornschein & Bengio 2015) for the
categorical alignment (docs/design.md, "Criterions").

K samples z_k ~ q(z | x, y) with self-normalised weights
w_k ∝ p(z_k) p(y | z_k) / q(z_k) drive both updates: wake-p follows
sum_k w_k grad log p(y, z_k) (which tends to grad log p(y) as K grows) and
wake-q follows sum_k w_k grad log q(z_k) (q towards the posterior).  The
logged ``loss`` is the importance-weighted NLL estimate -log (1/K) sum_k
p(y, z_k) / q(z_k); the gradient is the wake-p plus wake-q gradient.

The alignment updates are weighted maximum likelihood on q's own samples,
as in the paper's code (its control variates ``bp`` and ``bq`` are left at
0); ``--centred-weights`` subtracts them (docs/design.md, "Wake-sleep's
collapse").
"""

from dataclasses import dataclass, field

from fairseq.criterions import register_criterion

from ..modules.losses import reweighted_wake_sleep, value_with_gradient_of
from .base import LatentCriterionConfig, VarAttnCriterion
from .logged import COMMON, RAW


@dataclass
class RwsConfig(LatentCriterionConfig):
    # The paper's code draws 5 samples for wake-sleep (docs/design.md).
    num_samples: int = field(default=5, metadata={"help": "samples from q per target token"})
    centred_weights: bool = field(
        default=False,
        metadata={
            "help": "subtract control variates from the wake-phase weights of the prior's and q's "
            "updates (1/K for q, the self-normalised p/q ratios for the prior): no update "
            'where y does not depend on the alignment (docs/design.md, "Wake-sleep\'s collapse")'
        },
    )


@register_criterion("varattn_rws", dataclass=RwsConfig)
class RwsCriterion(VarAttnCriterion):
    config_class = RwsConfig
    needs_inference_network = True
    logged = {**COMMON, "ess": RAW}

    def token_terms(self, model, batch):
        prior, q = batch.prior, batch.q
        z = q.sample(self.num_samples)
        wake_p, wake_q, log_marginal, ess = reweighted_wake_sleep(
            batch.logp_y_at(z), prior.log_prob(z), q.log_prob(z), centred=self.cfg.centred_weights
        )
        return {
            "loss": value_with_gradient_of(-log_marginal, wake_p + wake_q),
            "ess": ess,
            "kl": q.kl(prior).detach(),
            "entropy_q": q.entropy(),
            "entropy_p": prior.entropy(),
        }

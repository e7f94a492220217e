"""``varattn_dirichlet``: relaxed variational attention, z_j on the simplex
(docs/design.md, "Criterions"; the paper's Sec. 4 "relaxed" baseline):

    E_{Dir(alpha_q)}[log p(y_j | context = sum_i z_i x~_i)] - KL(Dir_q || Dir_p)

The expectation is estimated with ``--num-samples`` reparameterised draws
(implicit gradients), the KL is closed form.  The marginal p(y_j) has no
closed form here, so ``nll_loss`` is an importance-sampled estimate with
``--nll-samples`` draws from the mixture (q + p) / 2 (an upper bound on the
NLL in expectation);
the log line's ``nll_samples`` field says how many.  Generation uses the
prior mean's context and never needs q.
"""

import logging
from dataclasses import dataclass, field

from fairseq.criterions import register_criterion

from ..modules.alignment import DirichletAlignment
from ..modules.losses import relaxed_nll
from .base import KLOptions, KLWeightMixin, LatentCriterionConfig, VarAttnCriterion
from .logged import COMMON, RAW

logger = logging.getLogger(__name__)


@dataclass
class DirichletConfig(KLOptions, LatentCriterionConfig):
    nll_samples: int = field(
        default=16,
        metadata={"help": "samples for the importance-sampled nll_loss (proposal: the mixture of q and the prior)"},
    )


@register_criterion("varattn_dirichlet", dataclass=DirichletConfig)
class DirichletCriterion(KLWeightMixin, VarAttnCriterion):
    config_class = DirichletConfig
    distribution_class = DirichletAlignment
    needs_inference_network = True
    # nll_samples: added to the logging output in forward, not a token term
    logged = {**COMMON, "nll_samples": RAW}

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        self.nll_samples = cfg.nll_samples
        logger.info(
            "varattn_dirichlet: nll_loss and ppl are importance-sampled estimates "
            "(%d samples from (q + p) / 2 per token), not exact",
            self.nll_samples,
        )

    def token_terms(self, model, batch):
        prior, q = batch.prior, batch.q
        kl = q.kl(prior)
        logp_y = batch.simplex_logp_y(q.rsample(self.num_samples))
        return {
            "loss": relaxed_nll(logp_y) + self.current_kl_weight(model) * kl,
            "kl": kl,
            "entropy_q": q.entropy(),
            "entropy_p": prior.entropy(),
        }

    def marginal_nll(self, batch):
        return batch.importance_nll(self.nll_samples)

    def forward(self, model, sample, reduce=True):
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if "nll_loss" in logging_output:
            # Per-token sum so that it survives fairseq's summing of logs.
            logging_output["nll_samples"] = float(self.nll_samples * sample["ntokens"])
        return loss, sample_size, logging_output

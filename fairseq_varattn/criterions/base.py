"""What every latent-alignment criterion shares: running the model, the
alignment bookkeeping, the exact marginal ``nll_loss`` and the logging.

A subclass implements ``token_terms(batch)`` returning per-token tensors: at
least ``loss`` (the negated objective, with the estimator's gradient) and
optionally ``nll`` (if it already has the exact marginal), ``kl``,
``entropy_q``, ``entropy_p`` and estimator diagnostics.
"""

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from ..modules.alignment import CategoricalAlignment, weighted_context
from ..modules.losses import (
    expected_nll,
    importance_log_marginal,
    kl_weight_at,
    marginal_nll,
    reinforce_nll,
    relaxed_nll,
)

# Summed logging keys that are per-token quantities in nats; reported in bits.
PER_TOKEN_KEYS = ("kl", "entropy_q", "entropy_p", "baseline_nll")
# Summed logging keys that are per-token averages already in their own units.
PER_TOKEN_RAW_KEYS = ("ess", "nll_samples")
# Mean-squared score-function weights without / with the baseline, per sample.
ESTIMATOR_KEYS = ("sf_reward_sq", "sf_advantage_sq")


@dataclass
class VarAttnCriterionConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")
    num_samples: int = field(default=1, metadata={"help": "samples of z per target token"})
    # A flag that turns work off: fairseq makes a bool field a store_true
    # option, so a field defaulting to True could never be disabled.
    skip_exact_nll_in_training: bool = field(
        default=False,
        metadata={"help": "do not compute the exact marginal nll_loss on training batches "
                          "(validation always does); sampling estimators then skip an "
                          "enumeration forward"},
    )


@dataclass
class VarAttnKLConfig(VarAttnCriterionConfig):
    kl_weight: float = field(default=1.0, metadata={"help": "weight of KL(q || p)"})
    kl_warmup_updates: int = field(
        default=0, metadata={"help": "anneal the KL weight linearly from 0 over this many updates"})


class LatentBatch:
    """Decoder features of one batch plus cached alignment log-likelihoods."""

    def __init__(self, model, features, extra, target, padding_idx):
        # the module holding the alignment distribution and output layer:
        # the decoder in translation, the answer head in VQA
        self.head = model.alignment_head
        self.output = self.head.output
        self.features = features  # the recurrence's attentional vectors (B, N, D)
        self.hidden = extra["hidden"]
        self.enc = extra["encoder_states"]
        self.enc_mask = extra["encoder_padding_mask"]
        self.scores = extra["scores"]
        self.q_scores = extra.get("q_scores")
        self.target = target
        self.token_mask = target.ne(padding_idx)
        self._logp_all = None

    # Cached: the objective and the logged exact nll both read the prior.
    @cached_property
    def prior(self):
        return self.head.alignment_distribution(self.scores, self.enc_mask)

    @cached_property
    def q(self):
        return self.head.alignment_distribution(self.q_scores, self.enc_mask)

    def logp_y_all(self) -> torch.Tensor:
        """log p(y_j | z_j = i) for every i: (B, N, T); computed once per batch."""
        if self._logp_all is None:
            self._logp_all = self.output.alignment_logprobs(self.hidden, self.enc, self.target)
        return self._logp_all

    def logp_y_at(self, positions) -> torch.Tensor:
        return self.output.alignment_logprobs(self.hidden, self.enc, self.target, positions)

    def enumerate(self, dist: CategoricalAlignment, topk: int):
        """(log weights, log p(y | z)) over every alignment or dist's top-k."""
        if 0 < topk < dist.support_size:
            idx, log_w = dist.topk(topk)
            return log_w, self.logp_y_at(idx)
        return dist.log_probs, self.logp_y_all()

    def soft_logp_y(self, dist: CategoricalAlignment) -> torch.Tensor:
        """log p(y_j | soft context E_dist[x~]): the REINFORCE baseline."""
        return self.output.context_logprobs(self.hidden, dist.expectation(self.enc), self.target)

    def simplex_logp_y(self, weights: torch.Tensor) -> torch.Tensor:
        """log p(y_j | context sum_i w_i x~_i) for K weight vectors per token,
        weights (B, N, K, T) -> (B, N, K): relaxed one-hots and Dirichlet samples."""
        return self.output.context_logprobs(self.hidden, weighted_context(weights, self.enc), self.target)

    def exact_nll(self) -> torch.Tensor:
        return marginal_nll(self.prior.log_probs, self.logp_y_all())

    def importance_nll(self, num_samples: int) -> torch.Tensor:
        """-log p(y_j) for a continuous z, estimated with ``num_samples`` draws
        (an upper bound on the NLL in expectation, see ``importance_log_marginal``).

        The proposal is the defensive mixture r = (q + p) / 2 (Hesterberg
        1995): the weights p / r are at most 2, whereas with q alone they
        have infinite variance as soon as q is more concentrated than the
        prior in one coordinate, which a trained q routinely is.
        """
        prior, q = self.prior, self.q
        log_z_q, log_z_p = q.rsample_log(num_samples), prior.rsample_log(num_samples)
        from_q = torch.rand(log_z_q.shape[:-1], device=log_z_q.device).lt(0.5).unsqueeze(-1)
        log_z = torch.where(from_q, log_z_q, log_z_p)
        log_prior = prior.log_prob_at_log(log_z)
        log_mixture = torch.logaddexp(q.log_prob_at_log(log_z), log_prior) - math.log(2.0)
        return -importance_log_marginal(self.simplex_logp_y(log_z.exp()), log_prior, log_mixture)


class VarAttnCriterion(FairseqCriterion):
    #: attention kinds this criterion can train
    attention_kinds = ("categorical",)
    needs_inference_network = False

    # fairseq builds criterions by matching __init__ parameters to config
    # fields, so subclasses spell out every parameter (no **kwargs).
    def __init__(self, task, sentence_avg, num_samples=1, skip_exact_nll_in_training=False,
                 kl_weight=1.0, kl_warmup_updates=0):
        super().__init__(task)
        if num_samples < 1:
            raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
        if kl_weight < 0:
            raise ValueError(f"--kl-weight must be >= 0, got {kl_weight}")
        if kl_warmup_updates < 0:
            raise ValueError(f"--kl-warmup-updates must be >= 0, got {kl_warmup_updates}")
        self.sentence_avg = sentence_avg
        self.num_samples = num_samples
        self.skip_exact_nll_in_training = skip_exact_nll_in_training
        self.kl_weight = kl_weight
        self.kl_warmup_updates = kl_warmup_updates

    # -- checks --------------------------------------------------------------
    def check_model(self, model):
        name = self.__class__.__name__
        kind = getattr(model, "attention_kind", None)
        if kind is None:
            raise ValueError(f"{name} trains latent-attention models (--arch varattn_lstm*, "
                             "varattn_vqa); this model has no latent alignment")
        if kind not in self.attention_kinds:
            raise ValueError(f"{name} needs --attention {' or '.join(self.attention_kinds)}, "
                             f"but the model has --attention {kind}")
        if self.needs_inference_network and getattr(model, "inference_network", None) is None:
            raise ValueError(f"{name} needs an inference network q(z | x, y): "
                             "add --inference-network birnn to the model")

    def current_kl_weight(self, model) -> float:
        return kl_weight_at(getattr(model, "num_updates", 0), self.kl_weight, self.kl_warmup_updates)

    # -- fairseq API -----------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        self.check_model(model)
        target = model.get_targets(sample, None)
        features, extra = model(
            **sample["net_input"],
            target=target if self.needs_inference_network else None,
            features_only=True,
        )
        batch = LatentBatch(model, features, extra, target, self.padding_idx)
        terms = self.token_terms(model, batch)
        if "nll" not in terms and not (self.skip_exact_nll_in_training and model.training):
            with torch.no_grad():
                terms["nll"] = self.marginal_nll(batch)

        mask = batch.token_mask
        sums = {k: torch.where(mask.unsqueeze(-1) if v.dim() > mask.dim() else mask, v,
                               torch.zeros_like(v)).sum()
                for k, v in terms.items()}
        loss = sums.pop("loss")
        ntokens = sample["ntokens"]
        nsentences = target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        if "nll" in sums:
            logging_output["nll_loss"] = sums.pop("nll").data
        for key, value in sums.items():
            logging_output[key] = value.data
        if any(k in sums for k in ESTIMATOR_KEYS):
            logging_output["sf_count"] = float(mask.sum() * self.num_samples)
        return loss, sample_size, logging_output

    def token_terms(self, model, batch: LatentBatch):
        raise NotImplementedError

    def marginal_nll(self, batch: LatentBatch) -> torch.Tensor:
        """The logged ``nll_loss``: exact for categorical alignments."""
        return batch.exact_nll()

    def reconstruction(self, model, batch: LatentBatch, dist: CategoricalAlignment, terms: dict):
        """-E_dist[log p(y | z)] by ``self.estimator``; adds diagnostics to ``terms``.

        Shared by hard attention (dist = prior) and the ELBO (dist = q).
        """
        if self.estimator == "enum":
            return expected_nll(*batch.enumerate(dist, batch.head.alignment_topk))
        if self.estimator == "reinforce":
            # Baseline: the soft-attention likelihood under dist's expected
            # context (DESIGN.md §8; the paper's Sec. 4 control variate).
            z = dist.sample(self.num_samples)
            logp_y = batch.logp_y_at(z)
            baseline = batch.soft_logp_y(dist)
            loss, advantage = reinforce_nll(logp_y, dist.log_prob(z), baseline)
            terms.update(self.score_function_stats(advantage, logp_y))
            terms["baseline_nll"] = -baseline.detach()
            return loss - baseline if self.train_baseline else loss
        if self.estimator == "gumbel":
            relaxed = dist.gumbel_softmax(self.num_samples, self.gumbel_temperature)
            return relaxed_nll(batch.simplex_logp_y(relaxed))
        raise ValueError(f"unknown estimator {self.estimator!r}")

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens = total("ntokens")
        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        # nll_loss: the exact marginal under the prior, so ppl compares across criterions.
        if any("nll_loss" in log for log in logging_outputs):
            metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        for key in PER_TOKEN_KEYS + PER_TOKEN_RAW_KEYS:
            if any(key in log for log in logging_outputs):
                scale = 1.0 if key in PER_TOKEN_RAW_KEYS else math.log(2)
                metrics.log_scalar(key, total(key) / ntokens / scale, ntokens, round=3)
        count = total("sf_count")
        if count > 0:
            reward_sq = total("sf_reward_sq") / count
            advantage_sq = total("sf_advantage_sq") / count
            metrics.log_scalar("sf_var_ratio", advantage_sq / max(reward_sq, 1e-12), count, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

    # -- shared estimator diagnostics ------------------------------------------
    @staticmethod
    def score_function_stats(advantage, reward) -> dict:
        """Sums over samples of squared score-function weights with/without baseline."""
        return {
            "sf_reward_sq": (reward.detach() ** 2).sum(-1),
            "sf_advantage_sq": (advantage**2).sum(-1),
        }

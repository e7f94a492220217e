"""What every latent-alignment criterion shares: running the model, the exact
marginal ``nll_loss``, the warm-ups (soft attention, exact marginal), option
checks and logging.

A criterion is ``__init__(cfg, task)`` (fairseq's convention) with a config
dataclass built from the option groups below, and implements
``token_terms(model, batch)`` returning per-token tensors: at least ``loss``
(the negated objective, with the estimator's gradient) and optionally ``nll``
(if it already has the exact marginal), ``kl``, ``entropy_q``, ``entropy_p``
and estimator diagnostics (docs/design.md, "Criterions").
"""

import math
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..modules import attention_kinds
from ..modules import latent_warmup as auto_warmup
from ..modules.alignment import CategoricalAlignment
from ..modules.losses import kl_weight_at
from .batch import LatentBatch
from .estimators import ESTIMATORS
from .logged import BITS, COMMON, RAW


# -- option groups ---------------------------------------------------------------
@dataclass
class LatentCriterionConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")
    num_samples: int = field(default=1, metadata={"help": "samples of z per target token"})
    # A flag that turns work off: fairseq makes a bool field a store_true
    # option, so a field defaulting to True could never be disabled.
    skip_exact_nll_in_training: bool = field(
        default=False,
        metadata={
            "help": "do not compute the exact marginal nll_loss on training batches "
            "(validation always does); sampling estimators then skip an "
            "enumeration forward"
        },
    )
    soft_warmup_updates: int = field(
        default=0,
        metadata={
            "help": "train the model as soft attention (the same parameters, output at "
            "the prior's expected context) for this many updates before the "
            "latent objective; q learns to copy the prior meanwhile"
        },
    )
    marginal_warmup_updates: int = field(
        default=0,
        metadata={
            "help": "train by the exact marginal likelihood (categorical attention) for "
            "this many updates before the latent objective; q learns to copy the "
            "exact posterior meanwhile"
        },
    )
    latent_warmup: ChoiceEnum(["auto", "off"]) = field(
        default="auto",
        metadata={
            "help": "auto: with an inference network and categorical attention (and no "
            "--*-warmup-updates), train by the exact marginal until q has caught up "
            "with the exact posterior, then by the criterion's objective; without it "
            'a lagging q can keep the alignment uniform (docs/design.md, "The '
            'automatic warm-up"); off: the objective from the first update'
        },
    )
    latent_warmup_max_updates: int = field(
        default=3000, metadata={"help": "--latent-warmup auto ends here at the latest"}
    )


@dataclass
class KLOptions:
    kl_weight: float = field(default=1.0, metadata={"help": "weight of KL(q || p)"})
    kl_warmup_updates: int = field(
        default=0, metadata={"help": "anneal the KL weight linearly from 0 over this many updates"}
    )


# Invalid values, checked once for whichever of these fields a config has.
OPTION_CHECKS = {
    "num_samples": (lambda v: v >= 1, ">= 1"),
    "soft_warmup_updates": (lambda v: v >= 0, ">= 0"),
    "marginal_warmup_updates": (lambda v: v >= 0, ">= 0"),
    "latent_warmup_max_updates": (lambda v: v >= 0, ">= 0"),
    "kl_weight": (lambda v: v >= 0, ">= 0"),
    "kl_warmup_updates": (lambda v: v >= 0, ">= 0"),
    "nll_samples": (lambda v: v >= 1, ">= 1"),
}


def check_options(cfg, criterion: str, distribution_class) -> None:
    for name, (ok, rule) in OPTION_CHECKS.items():
        if hasattr(cfg, name) and not ok(getattr(cfg, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(cfg, name)}")
    if getattr(cfg, "soft_warmup_updates", 0) > 0 and getattr(cfg, "marginal_warmup_updates", 0) > 0:
        raise ValueError(
            "--soft-warmup-updates and --marginal-warmup-updates are two warm-ups of the same updates: choose one"
        )
    if getattr(cfg, "marginal_warmup_updates", 0) > 0 and distribution_class is not CategoricalAlignment:
        raise ValueError(
            f"--marginal-warmup-updates needs the exact marginal, which {criterion} "
            "(a continuous alignment) does not have: use --soft-warmup-updates"
        )


# -- the criterion -------------------------------------------------------------------
class VarAttnCriterion(FairseqCriterion):
    #: the config dataclass this criterion is registered with
    config_class = LatentCriterionConfig
    #: the alignment distribution family this criterion trains (docs/design.md,
    #: "Adding an attention kind"): any --attention whose kind has it will do
    distribution_class = CategoricalAlignment
    needs_inference_network = False
    #: every key its token_terms may return besides ``loss`` and ``nll``, with its unit
    logged = COMMON
    #: the estimator classes its --estimator may name (criterions/estimators/)
    estimators = ()

    def __init__(self, cfg, task):
        super().__init__(task)
        check_options(cfg, self.__class__.__name__, self.distribution_class)
        self.cfg = cfg
        self.sentence_avg = cfg.sentence_avg
        self.num_samples = cfg.num_samples

    @classmethod
    def build(cls, task, sentence_avg=False, **options):
        """Without fairseq's option parsing (tests, benchmarks): options by name.
        The automatic warm-up, a training schedule, is off unless asked for:
        what is built is the criterion's objective from the first call."""
        options.setdefault("latent_warmup", "off")
        return cls(cls.config_class(sentence_avg=sentence_avg, **options), task)

    # -- checks --------------------------------------------------------------
    def check_model(self, model):
        name = self.__class__.__name__
        head = getattr(model, "alignment_head", None)
        if head is None:
            from fairseq.models import ARCH_MODEL_REGISTRY

            archs = ", ".join(sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith("varattn_")))
            raise ValueError(
                f"--criterion {self._registry_name()} trains the plugin's models (--arch {archs}); "
                f"this model ({type(model).__name__}) has no alignment head"
            )
        if head.kind.distribution_class is not self.distribution_class:
            fitting = [n for n, k in attention_kinds.KINDS.items() if k.distribution_class is self.distribution_class]
            raise ValueError(
                f"{name} needs --attention {' or '.join(fitting)}, but the model has --attention {head.kind.name}"
            )
        if self.needs_inference_network and getattr(model, "inference_network", None) is None:
            raise ValueError(
                f"{name} needs an inference network q(z | x, y): add --inference-network birnn to the model"
            )

    def _registry_name(self) -> str:
        from fairseq.criterions import CRITERION_REGISTRY

        return next((n for n, c in CRITERION_REGISTRY.items() if c is type(self)), type(self).__name__)

    def warmup_terms(self, model):
        """The warm-up objective's method while the model trains within its
        ``--*-warmup-updates``, else None."""
        if not model.training:
            return None
        updates = getattr(model, "num_updates", 0)
        if updates < self.cfg.soft_warmup_updates:
            return self.soft_warmup_terms
        if updates < self.cfg.marginal_warmup_updates:
            return self.marginal_warmup_terms
        if auto_warmup.applies(self.cfg, model, self) and auto_warmup.active(model, self.cfg.latent_warmup_max_updates):
            return self.automatic_warmup_terms
        return None

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
        warmup = self.warmup_terms(model)
        if warmup is not None:
            terms = warmup(batch)
        else:
            terms = self.token_terms(model, batch)
            if "nll" not in terms and not (self.cfg.skip_exact_nll_in_training and model.training):
                with torch.no_grad():
                    terms["nll"] = self.marginal_nll(batch)
        terms.update(batch.diagnostics())
        undeclared = set(terms) - set(self.logged) - {"loss", "nll"}
        if undeclared:
            raise KeyError(f"{type(self).__name__} logs {sorted(undeclared)} without declaring them in its `logged`")

        mask = batch.token_mask
        if warmup == self.automatic_warmup_terms:
            # the hand-over rule reads the batch's per-token means (modules/latent_warmup.py)
            count = mask.sum().clamp_min(1)
            info = ((terms["entropy_uniform"] - terms["entropy_post"]) * mask).sum() / count
            lead = ((terms["entropy_p"] - terms["entropy_q"]) * mask).sum() / count
            auto_warmup.update(model, info, lead)
        sums = {
            k: torch.where(mask.unsqueeze(-1) if v.dim() > mask.dim() else mask, v, torch.zeros_like(v)).sum()
            for k, v in terms.items()
        }
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
        return loss, sample_size, logging_output

    def token_terms(self, model, batch: LatentBatch):
        raise NotImplementedError

    def soft_warmup_terms(self, batch: LatentBatch) -> dict:
        """The warm-up objective: soft attention's NLL with the same
        parameters, so the prior and the output layer learn to attend before
        the latent objective starts (docs/design.md, "Is the latent attention
        learning?").  An inference network learns to copy the prior, so that
        at the switch KL(q || p) does not drag a sharp prior back to a
        uniform q.  ``loss`` here is this objective; ``soft_warmup`` says so."""
        soft = batch.soft_nll()
        terms = {"loss": soft, "nll": soft.detach(), "soft_warmup": torch.ones_like(soft)}
        if batch.q_scores is not None:
            terms["loss"] = soft + batch.q.kl(batch.prior.detached())
        return terms

    def marginal_warmup_terms(self, batch: LatentBatch) -> dict:
        """The other warm-up: the exact marginal's NLL, whose gradient moves
        the prior towards the exact posterior.  Where log p(y_j | z_j = i)
        hardly depends on i, q gets almost no signal from the ELBO and the KL
        holds the prior at a uniform q; the marginal has no q to wait for
        (docs/design.md, "Criterions").  q learns to copy the exact
        posterior, so the ELBO starts from q close to it: the ELBO is then
        close to the marginal it bounds.  The value,
        -log p(y) + KL(q || posterior), is the negative ELBO itself; only the
        gradient differs, the posterior being a fixed target (EM's E-step):
        the prior moves towards the posterior rather than towards q, and the
        output layer follows the posterior rather than q.
        ``marginal_warmup`` says so in the log."""
        nll = batch.exact_nll()
        terms = {"loss": nll, "nll": nll.detach(), "marginal_warmup": torch.ones_like(nll)}
        if batch.q_scores is not None:
            posterior = batch.prior.detached().posterior(batch.logp_y_all().detach())
            kl_post = batch.q.kl(posterior)
            terms["loss"] = nll + kl_post
            terms.update(
                kl_post=kl_post.detach(), entropy_q=batch.q.entropy().detach(), entropy_p=batch.prior.entropy().detach()
            )
        return terms

    def automatic_warmup_terms(self, batch: LatentBatch) -> dict:
        """``--latent-warmup auto``: the marginal warm-up's objective, for as
        long as the model's warm-up state says q has not caught up."""
        return self.marginal_warmup_terms(batch)

    def marginal_nll(self, batch: LatentBatch) -> torch.Tensor:
        """The logged ``nll_loss``: exact for categorical alignments."""
        return batch.exact_nll()

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
        for key, unit in cls.logged.items():
            if unit in (BITS, RAW) and any(key in log for log in logging_outputs):
                scale = math.log(2) if unit == BITS else 1.0
                # q's gradients are small numbers: 3 decimals would round them away
                digits = 6 if key.startswith("qgrad") else 3
                metrics.log_scalar(key, total(key) / ntokens / scale, ntokens, round=digits)
        for estimator in cls.estimators:
            estimator.reduce_metrics(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


# -- what several criterions add ---------------------------------------------------------
class KLWeightMixin:
    """``--kl-weight`` annealed over ``--kl-warmup-updates`` (needs ``KLOptions``)."""

    def current_kl_weight(self, model) -> float:
        return kl_weight_at(getattr(model, "num_updates", 0), self.cfg.kl_weight, self.cfg.kl_warmup_updates)


class EstimatorMixin:
    """``--estimator``: one of the criterion's ``estimators`` (criterions/estimators/),
    built once; every one of them checks its options, chosen or not."""

    def __init__(self, cfg, task):
        super().__init__(cfg, task)
        for estimator in self.estimators:
            estimator.check(cfg)
        if cfg.estimator not in {e.name for e in self.estimators}:
            raise ValueError(
                f"--estimator must be one of {[e.name for e in self.estimators]} for "
                f"{type(self).__name__}, got {cfg.estimator!r}"
            )
        self.estimator = ESTIMATORS[cfg.estimator](cfg)

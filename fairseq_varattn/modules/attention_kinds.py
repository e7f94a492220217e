"""Attention kinds (``--attention``): one class each, in one registry.

An attention kind says what the scores of an alignment head mean:

* ``distribution(scores, mask)``: the alignment distribution they define (the
  prior from the model's scores, q from the inference network's), an object
  of ``distribution_class`` with ``mean``, ``entropy``, ``kl`` and sampling;
* ``expected_weights(scores, mask)``: the weights of the expected context
  that input feeding (and soft attention's output) use;
* ``output(layer, features, step, topk, cache)``: what the model returns at
  generation time from its output layer and ``AlignmentStep``, logits or
  normalised log-probabilities;
* what it can be trained with: latent criterions declare the
  ``distribution_class`` they need and check it against the model's kind;
  ``latent`` says whether an inference network (a posterior over z) makes
  sense, ``supports_topk`` whether ``--alignment-topk`` does.

To add a kind: subclass ``AttentionKind`` here and ``register`` it.  Its
position in ``KIND_IDS`` is saved in checkpoints, so new kinds are appended
(docs/design.md, "Adding an attention kind").
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .alignment import CategoricalAlignment, DirichletAlignment

# Dirichlet concentrations are link(score) + floor; the floor keeps
# lgamma/digamma away from their pole at 0.  Two links
# (--dirichlet-concentration; docs/design.md, "Dirichlet concentrations"):
# softplus, the default and the paper's code's, smooth and non-saturating;
# and exp, under which the mean is softmax(score) whatever the total
# concentration.  Under softplus, once the scores are large, alpha_i ~ s_i
# and the mean's sensitivity to the scores falls as 1 / sum_i alpha_i:
# the total that makes samples less noisy also freezes the mean.
DIRICHLET_FLOOR = 1e-3
# exp's scores are capped here (alpha <= e^12 ~ 1.6e5, samples at the mean
# to 3 digits already): beyond it lgamma of the total loses float32 precision
DIRICHLET_EXP_CAP = 12.0
DIRICHLET_LINKS = {
    "softplus": F.softplus,
    "exp": lambda s: s.clamp(max=DIRICHLET_EXP_CAP).exp(),
}
# saved in checkpoints as an index (KindOption.marker): append, never reorder
DIRICHLET_LINK_IDS = list(DIRICHLET_LINKS)


@dataclass(frozen=True)
class KindOption:
    """An option of one attention kind.  The alignment head turns it into a
    command-line flag (``--NAME`` with dashes), its default, the check that
    it is given only with its kind, and a checkpoint buffer ``marker`` holding
    the index of its choice (its options share every parameter, so only the
    marker tells their checkpoints apart).  ``default`` is also what a
    checkpoint from before the option was trained with."""

    name: str
    choices: Tuple[str, ...]
    default: str
    marker: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _per_row(mask: Optional[Tensor], scores: Tensor) -> Optional[Tensor]:
    """A (B, T) padding mask for (B, N, T) scores."""
    if mask is not None and mask.dim() < scores.dim():
        mask = mask.unsqueeze(1).expand_as(scores)
    return mask


def dirichlet_alpha(scores: Tensor, mask: Optional[Tensor], link: str = "softplus") -> Tensor:
    alpha = DIRICHLET_LINKS[link](scores.float().masked_fill(torch.isinf(scores), 0.0)) + DIRICHLET_FLOOR
    return alpha if mask is None else alpha.masked_fill(_per_row(mask, scores), 0.0)


class AttentionKind:
    name: str = ""
    #: the alignment distribution family, or None for a deterministic attention
    distribution_class = None
    #: whether z is a latent variable (so an inference network can infer it)
    latent = False
    supports_topk = False
    #: whether ``output`` is already normalised log p(y | x) (the mixture), not logits
    output_normalised = False
    #: how the alignment tools label the head's attention
    label = ""
    #: this kind's model options (``KindOption``), passed to ``distribution`` as keywords
    options: Tuple[KindOption, ...] = ()

    def distribution(self, scores: Tensor, mask: Optional[Tensor], **options):
        raise NotImplementedError

    def expected_weights(self, scores: Tensor, mask: Optional[Tensor], **options) -> Tensor:
        return self.distribution(scores, mask, **options).mean().type_as(scores)

    def output(self, layer, features: Tensor, step, topk: int = 0, cache=None) -> Tensor:
        """Logits at the expected context (soft attention's output)."""
        return layer.expected_logits(features, step)


class SoftAttention(AttentionKind):
    """Classic attention: the output at the expected context, no latent z."""

    name = "soft"
    label = "soft attention"

    def distribution(self, scores, mask, **options):
        return CategoricalAlignment(scores)  # the attention weights, for tools


class CategoricalAttention(AttentionKind):
    """z_j a source position; the output is the mixture over z_j (exact or top-k)."""

    name = "categorical"
    distribution_class = CategoricalAlignment
    latent = True
    supports_topk = True
    output_normalised = True
    label = "categorical prior p(z|x)"

    def distribution(self, scores, mask, **options):
        return CategoricalAlignment(scores)

    def output(self, layer, features, step, topk=0, cache=None):
        cached = {} if cache is None else {"cache": cache}  # the output layer's source_cache in beam search
        return layer.mixture_logprobs(
            step.hidden,
            step.encoder_states,
            CategoricalAlignment(step.scores),
            topk,
            source_tokens=step.source_tokens,
            **cached,
        )


class DirichletAttention(AttentionKind):
    """z_j a point on the simplex, the context sum_i z_ji x~_i; generation uses
    the prior's mean, i.e. soft attention's output with Dirichlet-mean weights."""

    name = "dirichlet"
    distribution_class = DirichletAlignment
    latent = True
    label = "dirichlet prior p(z|x)"
    options = (
        KindOption(
            "dirichlet_concentration",
            tuple(DIRICHLET_LINK_IDS),
            "softplus",
            marker="dirichlet_link_id",
            help="alpha = softplus(score) (the paper's code) or exp(score), whose mean is "
            "softmax(score) at any total concentration",
        ),
    )

    def distribution(self, scores, mask, dirichlet_concentration="softplus"):
        mask = _per_row(mask, scores)
        return DirichletAlignment(dirichlet_alpha(scores, mask, dirichlet_concentration), mask)


KINDS: Dict[str, AttentionKind] = {}
# saved in checkpoints as an index: append, never reorder
KIND_IDS = []


def register(kind: AttentionKind) -> AttentionKind:
    KINDS[kind.name] = kind
    KIND_IDS.append(kind.name)
    return kind


for _kind in (SoftAttention(), CategoricalAttention(), DirichletAttention()):
    register(_kind)


def all_options() -> Tuple[KindOption, ...]:
    """Every registered kind's options, in registry order."""
    return tuple(option for kind in KINDS.values() for option in kind.options)


def get(name: str) -> AttentionKind:
    if name not in KINDS:
        raise ValueError(f"unknown attention kind {name!r}; choose from {list(KINDS)}")
    return KINDS[name]

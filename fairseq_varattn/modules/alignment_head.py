"""What an attention kind means for a model's output, shared by the
translation decoder and the VQA answer head (DESIGN.md §1, §6).

A class mixing this in provides ``attention_kind``, ``alignment_topk``,
``output`` (an ``AlignmentOutputLayer``); latent criterions read exactly
these plus ``alignment_distribution``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .alignment import CategoricalAlignment, DirichletAlignment

ATTENTION_KINDS = ("soft", "categorical", "dirichlet")
# Dirichlet concentrations are softplus(score) + floor: softplus keeps the
# map smooth and non-saturating for large scores (exp overflows in fp16), and
# the floor keeps lgamma/digamma away from their pole at 0.
DIRICHLET_FLOOR = 1e-3


def dirichlet_concentration(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    alpha = F.softplus(scores.float().masked_fill(torch.isinf(scores), 0.0)) + DIRICHLET_FLOOR
    return alpha if mask is None else alpha.masked_fill(mask, 0.0)


def check_alignment_args(args) -> None:
    """The option checks every model with an alignment head shares (the fix in the message)."""
    if args.alignment_topk < 0:
        raise ValueError(f"--alignment-topk must be >= 0 (0 = exact), got {args.alignment_topk}")
    if args.alignment_topk > 0 and args.attention != "categorical":
        raise ValueError("--alignment-topk only applies to --attention categorical "
                         f"(got --attention {args.attention})")
    if args.attention == "soft" and args.inference_network != "none":
        raise ValueError("--inference-network needs a latent attention "
                         "(--attention categorical or dirichlet); soft attention has no z to infer")


def _per_row(mask: Optional[Tensor], scores: Tensor) -> Optional[Tensor]:
    """A (B, T) padding mask for (B, N, T) scores."""
    if mask is not None and mask.dim() < scores.dim():
        mask = mask.unsqueeze(1).expand_as(scores)
    return mask


class AlignmentHeadMixin:
    def alignment_distribution(self, scores: Tensor, mask: Optional[Tensor]):
        """The distribution family of this attention kind, from scores (-inf
        at padding): the prior from the model's scores, q from the
        inference network's."""
        if self.attention_kind == "dirichlet":
            mask = _per_row(mask, scores)
            return DirichletAlignment(dirichlet_concentration(scores, mask), mask)
        return CategoricalAlignment(scores)

    def expected_weights(self, scores: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The prior's mean: soft attention weights, categorical probabilities
        or the Dirichlet mean; what input feeding and generation use."""
        if self.attention_kind == "dirichlet":
            alpha = dirichlet_concentration(scores, _per_row(mask, scores))
            return (alpha / alpha.sum(-1, keepdim=True)).type_as(scores)
        return F.softmax(scores.float(), dim=-1).type_as(scores)

    def output_layer(self, features, extra=None):
        """Soft: logits.  Categorical: normalised log p(y | x) of the mixture."""
        if self.attention_kind != "categorical":
            # Dirichlet at test time uses the prior mean's context, which is
            # exactly soft attention's context.
            return self.output.soft_logits(features, extra["hidden"], extra["context"])
        prior = CategoricalAlignment(extra["scores"])
        cached = {"cache": extra["source_cache"]} if "source_cache" in extra else {}
        return self.output.mixture_logprobs(extra["hidden"], extra["encoder_states"], prior,
                                            topk=self.alignment_topk, **cached)

    def normalized_output(self, net_output, log_probs):
        """``get_normalized_probs`` for every kind.

        A categorical model's output is already the mixture's normalised
        log p(y_j | x, y_<j); it is normalised again because fairseq's
        generator divides the decoder output by ``--temperature`` before
        asking for normalised probabilities.  Temperature T then means what
        it means for a softmax model: p(y)^(1/T) renormalised over the
        vocabulary (docs/design.md, "Generation").
        """
        out = net_output[0].float()
        return F.log_softmax(out, dim=-1) if log_probs else F.softmax(out, dim=-1)

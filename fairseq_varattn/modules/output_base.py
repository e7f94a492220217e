"""What the joint and factored output layers share: their parameters (so
the two are compared at equal size and one's checkpoint has the other's
names) and the attentional vector input feeding reads."""

import torch
import torch.nn as nn
from fairseq.models.lstm import Linear

from .alignment import weighted_context

#: --output-activation: what the output layer applies to W_h h and W_c x~ before W_o.
#: tanh is the paper's (Luong's attentional layer); linear leaves them as they are,
#: as fairseq's Transformer projects its layer-normed states directly (a tanh
#: there slows learning: docs/design.md, "Output layers").  Saved in checkpoints as
#: an index (models/latent_model.py): append, never reorder.
OUTPUT_ACTIVATIONS = ("tanh", "linear")


class OutputLayerBase(nn.Module):
    #: log p(y | z = i) at a few positions costs about what all of them do
    enumeration_is_cheap = False

    def __init__(self, hidden_dim, context_dim, embed_dim, vocab_size, dropout=0.0, activation="tanh"):
        super().__init__()
        if activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"unknown output activation {activation!r}; choose from {OUTPUT_ACTIVATIONS}")
        self.activation = activation
        self.hidden_proj = Linear(hidden_dim, embed_dim, bias=False)
        self.context_proj = Linear(context_dim, embed_dim, bias=False)
        self.fc_out = Linear(embed_dim, vocab_size)
        if activation == "linear" and hidden_dim == embed_dim:
            # W_o W_h h is then one linear map of h: starting W_h at the identity starts
            # a_j as fairseq's own output projection of h (its small random init slowed
            # learning; docs/design.md, "Output layers")
            with torch.no_grad():
                self.hidden_proj.weight.copy_(torch.eye(embed_dim))
        self.dropout = nn.Dropout(dropout)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) if self.activation == "tanh" else x

    def attentional(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """act(W_c [h; ctx]): the input-feeding vector (and the joint layer's soft features)."""
        return self.act(self.hidden_proj(h) + self.context_proj(ctx))

    def weighted_logprobs(self, h, weights, enc, target=None, masks=None, source_tokens=None):
        """log p(y_j | alignment weights w over the source): the output at the
        context sum_i w_i x~_i; weights (B, N, T) or (B, N, M, T) (soft
        attention's, q's mean for the REINFORCE baseline, relaxed samples)."""
        return self.context_logprobs(h, weighted_context(weights, enc), target, masks=masks)

    def expected_logits(self, features, step):
        """Soft attention's output for an ``AlignmentStep``: at the expected context."""
        return self.soft_logits(features, step.hidden, step.context)

    def batch_terms(self, h, enc, masks, source_tokens=None) -> dict:
        """What every path of one batch reads unchanged under one dropout
        draw ``masks``, computed once by the caller (``LatentBatch``) and
        passed back to alignment_logprobs and weighted_logprobs as keywords:
        nothing here."""
        return {}

    def source_cache(self, step):
        """What beam search computes once per sentence from the source alone
        (``AlignmentHead.output_logits``), or None: nothing to cache."""
        return None

    @staticmethod
    def reorder_source_cache(cache, new_order):
        raise NotImplementedError

    @staticmethod
    def _select(log_probs, target):
        """log-probs at ``target`` (or all of them when it is None)."""
        if target is None:
            return log_probs
        index = target.view(*target.shape, *([1] * (log_probs.dim() - target.dim())))
        index = index.expand(*log_probs.shape[:-1], 1)
        return log_probs.gather(-1, index).squeeze(-1)

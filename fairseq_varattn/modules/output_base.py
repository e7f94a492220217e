"""What the joint and factored output layers share: their parameters (so
the two are compared at equal size and one's checkpoint has the other's
names) and the attentional vector input feeding reads."""

import torch
import torch.nn as nn
from fairseq.models.lstm import Linear


class OutputLayerBase(nn.Module):
    #: log p(y | z = i) at a few positions costs about what all of them do
    enumeration_is_cheap = False

    def __init__(self, hidden_dim, context_dim, embed_dim, vocab_size, dropout=0.0):
        super().__init__()
        self.hidden_proj = Linear(hidden_dim, embed_dim, bias=False)
        self.context_proj = Linear(context_dim, embed_dim, bias=False)
        self.fc_out = Linear(embed_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def attentional(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """tanh(W_c [h; ctx]): the input-feeding vector (and the joint layer's soft features)."""
        return torch.tanh(self.hidden_proj(h) + self.context_proj(ctx))

    @staticmethod
    def _select(log_probs, target):
        """log-probs at ``target`` (or all of them when it is None)."""
        if target is None:
            return log_probs
        index = target.view(*target.shape, *([1] * (log_probs.dim() - target.dim())))
        index = index.expand(*log_probs.shape[:-1], 1)
        return log_probs.gather(-1, index).squeeze(-1)

"""Attention scores score(query, key_i): the unnormalised prior (and q) logits."""

import torch
import torch.nn as nn
from fairseq.models.lstm import Linear

# The mlp score's hidden layer (B, N, T, A) is built for a few query rows at
# a time, each piece about this many elements (8 MB in float32): tanh, its
# backward and the reductions over T and N then run on a piece still in
# cache: the inference network's (160, 16, 15, 256) scores take 53 ms
# forward and backward on a 2-core CPU against 118 ms as one (B, N, T, A)
# tensor (benchmarks/q_network.py; the same arithmetic, so the same numbers).
MLP_PIECE_ELEMENTS = 1 << 21


class AttentionScorer(nn.Module):
    """``general`` (Luong): q^T W k.  ``mlp`` (Bahdanau): v^T tanh(W_q q + W_k k).
    ``dot`` (Vaswani, one head): (W_q q)^T (W_k k) / sqrt(d), the Transformer's
    choice: a batched product instead of a (N, T, d) tanh, so the alignment
    head costs about one more cross-attention head.

    ``prepare`` does the per-sentence key projection once, so the decoder's
    per-step cost is the same as fairseq's own LSTM attention.
    """

    KINDS = ("general", "mlp", "dot")

    def __init__(self, query_dim, key_dim, attn_dim=None, kind="general"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown attention score {kind!r}; choose from {self.KINDS}")
        self.kind = kind
        if kind == "general":
            self.query_proj = Linear(query_dim, key_dim, bias=False)
        elif kind == "dot":
            attn_dim = attn_dim or key_dim
            self.query_proj = Linear(query_dim, attn_dim, bias=False)
            self.key_proj = Linear(key_dim, attn_dim, bias=False)
            self.scale = attn_dim**-0.5
        else:
            attn_dim = attn_dim or key_dim
            self.query_proj = Linear(query_dim, attn_dim, bias=True)
            self.key_proj = Linear(key_dim, attn_dim, bias=False)
            self.v = Linear(attn_dim, 1, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: (B, T, C) -> whatever ``score`` consumes."""
        return keys if self.kind == "general" else self.key_proj(keys)

    def forward(self, query: torch.Tensor, prepared: torch.Tensor, mask=None) -> torch.Tensor:
        """query (B, Q) or (B, N, Q) -> scores (B, T) or (B, N, T), -inf at ``mask``."""
        single = query.dim() == 2
        if single:
            query = query.unsqueeze(1)
        if self.kind == "general":
            scores = torch.bmm(self.query_proj(query), prepared.transpose(1, 2))
        elif self.kind == "dot":
            scores = torch.bmm(self.query_proj(query), prepared.transpose(1, 2)) * self.scale
        else:
            scores = self._mlp_scores(self.query_proj(query), prepared)
        if mask is not None:
            scores = scores.float().masked_fill(mask.unsqueeze(1), float("-inf")).type_as(scores)
        return scores.squeeze(1) if single else scores

    def _mlp_scores(self, projected: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """v^T tanh(W_q q_j + W_k k_i) for projected queries (B, N, A) and keys (B, T, A): (B, N, T)."""
        rows = max(1, MLP_PIECE_ELEMENTS // max(1, prepared.numel()))
        # v as a matrix-vector product, the same function as the Linear it is stored in
        v = self.v.weight.view(-1)
        pieces = [
            torch.matmul(torch.tanh(part.unsqueeze(2) + prepared.unsqueeze(1)), v)
            for part in projected.split(rows, dim=1)
        ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

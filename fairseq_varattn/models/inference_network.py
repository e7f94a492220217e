"""Amortised posterior q(z | x, y) over source positions (docs/design.md, "The inference network").

A bidirectional LSTM reads the whole target y (so g_j sees y_j and its
future, which the prior cannot), and q(z_j = i) = softmax_i(score_q(g_j, x~_i))
against the encoder's annotations.  It only exists in training: nothing at
generation time calls it.
"""

import torch
import torch.nn as nn
from fairseq.models.lstm import LSTM, Embedding

from ..modules.scorer import AttentionScorer


class InferenceNetwork(nn.Module):
    def __init__(self, dictionary, embed_dim, hidden_size, context_dim, num_layers=1,
                 dropout=0.0, score="general", attention_dim=None):
        super().__init__()
        self.padding_idx = dictionary.pad()
        self.embed_tokens = Embedding(len(dictionary), embed_dim, self.padding_idx)
        self.lstm = LSTM(embed_dim, hidden_size, num_layers=num_layers, bidirectional=True,
                         batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.scorer = AttentionScorer(2 * hidden_size, context_dim, attention_dim, kind=score)

    def encode_target(self, target: torch.Tensor) -> torch.Tensor:
        """target (B, N), right-padded -> g (B, N, 2H)."""
        lengths = target.ne(self.padding_idx).sum(1).clamp_min(1)
        emb = self.dropout(self.embed_tokens(target))
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=target.size(1))
        return self.dropout(out)

    def forward(self, target, encoder_states, encoder_padding_mask):
        """-> unnormalised scores (B, N, T), -inf at source padding."""
        g = self.encode_target(target)
        return self.scorer(g, self.scorer.prepare(encoder_states), encoder_padding_mask)

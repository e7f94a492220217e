"""fairseq's bidirectional ``LSTMEncoder`` with outputs where the source tokens are.

fairseq's LSTMEncoder turns left-padded sources into right-padded ones for
``pack_padded_sequence`` and returns its annotations right-aligned.
Attention over those positions is then shifted, for every sentence shorter
than the longest in its batch, against ``src_tokens``, which is what
``--print-alignment`` (fairseq's ``extract_hard_alignment``) and our
alignment tools index.  This subclass moves the annotations and the padding
mask back to the source tokens' layout; the decoder sees the same vectors
under the same mask, so scores and losses are unchanged.  A fifth output
holds the source tokens, which the shortlist output layer reads.
"""

import torch
from fairseq.models.lstm import LSTMEncoder


class VarAttnLSTMEncoder(LSTMEncoder):
    def forward(self, src_tokens, src_lengths, enforce_sorted: bool = True):
        x, hiddens, cells, _ = super().forward(src_tokens, src_lengths, enforce_sorted)
        padding_mask = src_tokens.eq(self.padding_idx)  # B x T, in src_tokens' layout
        if self.left_pad and padding_mask.any():
            seqlen = src_tokens.size(1)
            num_pads = padding_mask.sum(1, keepdim=True)  # B x 1
            positions = torch.arange(seqlen, device=x.device).unsqueeze(0)
            # left-padded position t holds right-aligned output t - num_pads (mod T)
            source = (positions - num_pads) % seqlen  # B x T
            index = source.t().unsqueeze(-1).expand(-1, -1, x.size(-1))  # T x B x C
            x = x.gather(0, index)
        return x, hiddens, cells, padding_mask.t(), src_tokens

    def reorder_encoder_out(self, encoder_out, new_order):
        """fairseq's four outputs, and the source tokens (B x T) the shortlist layer reads."""
        return tuple(super().reorder_encoder_out(encoder_out[:4], new_order)) + (
            encoder_out[4].index_select(0, new_order),
        )

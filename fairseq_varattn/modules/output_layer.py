"""p(y | h, c) = softmax(W_o dropout(f(W_h h + W_c c))) with f the output
activation, tanh or none (docs/design.md, "Output layers").

A Linear on the concatenation [h; c] is W_h h + W_c c, so the T
per-alignment features tanh(W_h h_j + W_c x~_i) cost one (B, N, D) and one
(B, T, D) projection plus a broadcast add, instead of T projections of
[h_j; x~_i].  The expensive part is the vocabulary softmax per (j, i) pair:
B x N x T x V.  It is computed in chunks of source positions, and each
chunk is recomputed in the backward pass (activation checkpointing), so peak
memory is bounded by ``chunk_size`` rather than by T.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .alignment import CategoricalAlignment
from .factored_output import FactoredOutputLayer
from .output_base import OutputLayerBase
from .sentence_shortlist import SentenceShortlistOutputLayer
from .shortlist_output import ShortlistOutputLayer

# the layers that read the lexical table (modules/lexical.py)
SHORTLIST_LAYERS = {"shortlist": ShortlistOutputLayer, "sentence-shortlist": SentenceShortlistOutputLayer}


def gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """values (B, T, D), positions (B, N, K) -> (B, N, K, D)."""
    bsz, n, k = positions.shape
    flat = positions.reshape(bsz, n * k, 1).expand(-1, -1, values.size(-1))
    return values.gather(1, flat).view(bsz, n, k, values.size(-1))


class AlignmentOutputLayer(OutputLayerBase):
    """The joint layer, ``--output-layer joint`` (the paper's)."""

    def __init__(
        self,
        hidden_dim,
        context_dim,
        embed_dim,
        vocab_size,
        dropout=0.0,
        chunk_size=0,
        shared_dropout=True,
        activation="tanh",
    ):
        super().__init__(hidden_dim, context_dim, embed_dim, vocab_size, dropout, activation)
        self.chunk_size = chunk_size
        self.shared_dropout = shared_dropout

    # -- pieces -----------------------------------------------------------
    def soft_logits(self, features, h, ctx):
        """Soft attention's output: W_o of the attentional vector ``features``
        (= tanh(W_c [h; ctx]) with the decoder's dropout), computed once by the recurrence."""
        return self.fc_out(features)

    def dropout_masks(self, h):
        """The dropout mask of one batch: one per target token (B, N, D),
        shared by all of its alignments, samples and the soft baseline; None
        outside training (or with ``--alignment-dropout independent``, the
        paper's code, a fresh mask per (j, i) pair).

        With a mask per (j, i), log p(y_j | z_j = i) differs across i by
        dropout noise alone: on fresh weights that noise is several times the
        real differences, the posterior follows it, and the prior, fitted to
        random posteriors, is pulled to their average, the uniform
        distribution (docs/design.md, "Is the latent attention learning?").
        """
        p = self.dropout.p
        if not (self.shared_dropout and self.training and p > 0):
            return None
        return h.new_empty(*h.shape[:-1], self.fc_out.in_features).bernoulli_(1 - p) / (1 - p)

    def _logits(self, hidden_part, context_part, mask=None):
        """hidden_part (B, N, [1,] D) + context_part, mask (B, N, D) or None."""
        features = self.act(hidden_part + context_part)
        if not self.shared_dropout:
            features = self.dropout(features)
        elif mask is not None:
            features = features * (mask.unsqueeze(-2) if features.dim() > mask.dim() else mask)
        return self.fc_out(features).float()

    # -- log p(y | h, explicit context) ----------------------------------
    def context_logprobs(self, h, ctx, target=None, masks=None):
        """h (B, N, H); ctx (B, N, C) or K contexts per token (B, N, K, C).

        Returns log p(y_j | ctx) at ``target`` (B, N[, K]) or over the
        vocabulary (..., V).  Used by the soft baseline, Gumbel-softmax and
        Dirichlet samples: one softmax per context, not per source position.
        """
        masks = self.dropout_masks(h) if masks is None else masks
        hidden_part = self.hidden_proj(h)
        if ctx.dim() == 4:
            hidden_part = hidden_part.unsqueeze(2)
        log_probs = F.log_softmax(self._logits(hidden_part, self.context_proj(ctx), masks), dim=-1)
        return self._select(log_probs, target)

    # -- log p(y_j | z_j = i) for the gold target --------------------------
    def _target_logprobs(self, hidden_part, context_part, target, mask=None):
        logits = self._logits(hidden_part, context_part, mask)  # B, N, t, V
        gold = logits.gather(-1, target.view(*target.shape, 1, 1).expand(*logits.shape[:-1], 1))
        return gold.squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def alignment_logprobs(
        self, h, enc, target, positions: Optional[torch.Tensor] = None, masks=None, source_tokens=None
    ):
        """log p(y_j | x, y_<j, z_j = i).

        h (B, N, H) decoder states, enc (B, T, C) annotations, target (B, N).
        ``positions`` (B, N, K) restricts i to given source positions
        (samples, top-k); otherwise every i: output (B, N, T).
        """
        mask = self.dropout_masks(h) if masks is None else masks
        hidden_part = self.hidden_proj(h).unsqueeze(2)
        context_part = self.context_proj(enc)
        if positions is not None:
            return self._target_logprobs(hidden_part, gather_positions(context_part, positions), target, mask)
        return torch.cat(
            [
                self._run_chunk(self._target_logprobs, hidden_part, chunk.unsqueeze(1), target, mask)
                for chunk in self._chunks(context_part)
            ],
            dim=-1,
        )

    # -- the mixture over the vocabulary (generation, scoring) -------------
    def mixture_logprobs(self, h, enc, prior: CategoricalAlignment, topk: int = 0, source_tokens=None):
        """log sum_i p(z_j = i) p(y_j = v | z_j = i) for every v: (B, N, V).

        ``topk`` > 0 sums over the k most probable alignments only, with the
        prior renormalised over them (the paper's K-max decoding).
        """
        mask = self.dropout_masks(h)
        hidden_part = self.hidden_proj(h).unsqueeze(2)
        context_part = self.context_proj(enc)
        used = prior.truncated(topk)
        if used is not prior:
            positions = gather_positions(context_part, used.index)
            log_py = F.log_softmax(self._logits(hidden_part, positions, mask), dim=-1)
            return torch.logsumexp(log_py + used.log_probs.unsqueeze(-1), dim=2)
        total = None
        start = 0
        for chunk in self._chunks(context_part):
            width = chunk.size(1)
            # A chunk that is all padding would be a logsumexp over -inf only,
            # whose gradient is NaN; exp(-1e4) is exactly 0 in fp16/32 alike.
            log_w = prior.log_probs[:, :, start : start + width].clamp_min(-1e4).unsqueeze(-1)
            start += width
            part = self._run_chunk(self._weighted_mixture, hidden_part, chunk.unsqueeze(1), log_w, mask)
            total = part if total is None else torch.logaddexp(total, part)
        return total

    def _weighted_mixture(self, hidden_part, context_part, log_w, mask=None):
        log_py = F.log_softmax(self._logits(hidden_part, context_part, mask), dim=-1)
        return torch.logsumexp(log_py + log_w, dim=2)

    # -- chunking ----------------------------------------------------------
    def _chunks(self, context_part):
        size = self.chunk_size if self.chunk_size > 0 else context_part.size(1)
        return context_part.split(size, dim=1)

    def _run_chunk(self, fn, *args):
        # Recompute the chunk's B x N x t x V logits in backward instead of
        # storing them: this is what bounds training memory.
        if self.chunk_size > 0 and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def build_output_layer(
    kind,
    hidden_dim,
    context_dim,
    embed_dim,
    vocab_size,
    dropout=0.0,
    chunk_size=0,
    shared_dropout=True,
    source_rank=0,
    activation="tanh",
    source_vocab=None,
    shortlist_size=0,
    pad=None,
):
    """``--output-layer joint|factored|shortlist|sentence-shortlist``: all have
    the same parameters (but for the factored layer's optional low-rank source
    side); the shortlist layers add their lexical table, (source_vocab, shortlist_size)."""
    if kind == "joint":
        return AlignmentOutputLayer(
            hidden_dim, context_dim, embed_dim, vocab_size, dropout, chunk_size, shared_dropout, activation
        )
    if kind == "factored":
        return FactoredOutputLayer(hidden_dim, context_dim, embed_dim, vocab_size, dropout, source_rank, activation)
    if kind in SHORTLIST_LAYERS:
        if source_vocab is None or pad is None:
            raise ValueError(f"--output-layer {kind} needs a source vocabulary (a translation model)")
        return SHORTLIST_LAYERS[kind](
            hidden_dim, context_dim, embed_dim, vocab_size, source_vocab, shortlist_size, pad, dropout, activation
        )
    raise ValueError(f"unknown output layer {kind!r}; choose joint, factored, shortlist or sentence-shortlist")

"""Amortised posterior q(z | x, y) over source positions (docs/design.md, "The inference network").

A bidirectional LSTM reads the whole target y (so g_j sees y_j and its
future, which the prior cannot), and q(z_j = i) = softmax_i(score_q(g_j, x~_i))
against the encoder's annotations.  It only exists in training: nothing at
generation time calls it.
"""

import torch
import torch.nn as nn
from fairseq.models.lstm import LSTM, Embedding
from fairseq.modules import PositionalEmbedding

from ..modules.scorer import AttentionScorer

#: --inference-embeddings: whose target embeddings q reads
INFERENCE_EMBEDDINGS = ("decoder", "own")


def add_inference_embedding_args(parser):
    # The parser's default is "decoder"; base architectures fall back to "own",
    # which is what a checkpoint from before the option holds (docs/design.md,
    # "The inference network").
    parser.add_argument(
        "--inference-embeddings",
        choices=INFERENCE_EMBEDDINGS,
        default="decoder",
        help="decoder: q reads the decoder's target embeddings (the paper's code; "
        "no second V x d table to train and store); own: a table of its own",
    )


def shared_target_embeddings(args, decoder_embed_tokens):
    """The embedding module q should use: the decoder's, or None (its own)."""
    if getattr(args, "inference_embeddings", "own") == "own":
        return None
    if args.inference_embed_dim != decoder_embed_tokens.embedding_dim:
        raise ValueError(
            f"--inference-embeddings decoder reads the decoder's {decoder_embed_tokens.embedding_dim}-d "
            f"target embeddings, but --inference-embed-dim is {args.inference_embed_dim}: drop "
            "--inference-embed-dim or use --inference-embeddings own"
        )
    return decoder_embed_tokens


def build_inference_network(args, dictionary, context_dim, decoder_embed_tokens, heads, max_positions):
    """q for ``--inference-network`` (None for ``none``), as both translation
    models build it: its scores against ``context_dim``-wide annotations,
    the decoder's target embeddings unless ``--inference-embeddings own``;
    ``heads`` and ``max_positions`` size the self-attention q."""
    if args.inference_network == "none":
        return None
    common = dict(
        dropout=args.dropout,
        score=args.inference_score,
        attention_dim=args.attention_dim,
        embed_tokens=shared_target_embeddings(args, decoder_embed_tokens),
    )
    if args.inference_network == "birnn":
        return InferenceNetwork(
            dictionary,
            args.inference_embed_dim,
            args.inference_hidden_size,
            context_dim,
            num_layers=getattr(args, "inference_layers", 1),
            **common,
        )
    if args.inference_network == "transformer":
        return TransformerInferenceNetwork(
            dictionary, args.inference_embed_dim, context_dim, heads=heads, max_positions=max_positions, **common
        )
    raise ValueError(f"unknown --inference-network {args.inference_network!r}")


def check_shared_embeddings(model, state_dict):
    """A checkpoint whose q has its own embeddings, loaded into a model whose q
    shares the decoder's, would overwrite the decoder's table with q's: refuse."""
    q = getattr(model, "inference_network", None)
    if q is None or q.embed_tokens is not model.decoder.embed_tokens:
        return
    mine, theirs = "decoder.embed_tokens.weight", "inference_network.embed_tokens.weight"
    if mine in state_dict and theirs in state_dict and not torch.equal(state_dict[mine], state_dict[theirs]):
        raise ValueError(
            "this checkpoint's inference network has target embeddings of its own; load it "
            "with --inference-embeddings own (or --model-overrides "
            "\"{'inference_embeddings': 'own'}\")"
        )


class InferenceNetwork(nn.Module):
    def __init__(
        self,
        dictionary,
        embed_dim,
        hidden_size,
        context_dim,
        num_layers=1,
        dropout=0.0,
        score="general",
        attention_dim=None,
        embed_tokens=None,
    ):
        super().__init__()
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens or Embedding(len(dictionary), embed_dim, self.padding_idx)
        self.lstm = LSTM(
            embed_dim,
            hidden_size,
            num_layers=num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.scorer = AttentionScorer(2 * hidden_size, context_dim, attention_dim, kind=score)

    def encode_target(self, target: torch.Tensor) -> torch.Tensor:
        """target (B, N), right-padded -> g (B, N, 2H)."""
        lengths = target.ne(self.padding_idx).sum(1).clamp_min(1)
        emb = self.dropout(self.embed_tokens(target))
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=target.size(1))
        return self.dropout(out)

    def forward(self, target, encoder_states, encoder_padding_mask):
        """-> unnormalised scores (B, N, T), -inf at source padding."""
        g = self.encode_target(target)
        return self.scorer(g, self.scorer.prepare(encoder_states), encoder_padding_mask)


class TransformerInferenceNetwork(nn.Module):
    """q(z | x, y) from one bidirectional self-attention layer over the whole
    target (``--inference-network transformer``).

    The BiLSTM runs its 2N steps one after the other; a self-attention layer
    over the target is one parallel pass (benchmarks/README.md, "The
    shortlist layer at the converged comparison's sizes", for the times of
    both at varattn_lstm's converged sizes)."""

    def __init__(
        self,
        dictionary,
        embed_dim,
        context_dim,
        heads=4,
        ffn_dim=None,
        dropout=0.0,
        score="dot",
        attention_dim=None,
        max_positions=1024,
        embed_tokens=None,
    ):
        super().__init__()
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens or Embedding(len(dictionary), embed_dim, self.padding_idx)
        self.embed_scale = embed_dim**0.5
        self.embed_positions = PositionalEmbedding(max_positions, embed_dim, self.padding_idx, learned=False)
        self.layer = nn.TransformerEncoderLayer(embed_dim, heads, ffn_dim or 2 * embed_dim, dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.scorer = AttentionScorer(embed_dim, context_dim, attention_dim, kind=score)

    def encode_target(self, target: torch.Tensor) -> torch.Tensor:
        """target (B, N), right-padded -> g (B, N, embed_dim)."""
        x = self.embed_scale * self.embed_tokens(target) + self.embed_positions(target)
        return self.layer(self.dropout(x), src_key_padding_mask=target.eq(self.padding_idx))

    def forward(self, target, encoder_states, encoder_padding_mask):
        """-> unnormalised scores (B, N, T), -inf at source padding."""
        g = self.encode_target(target)
        return self.scorer(g, self.scorer.prepare(encoder_states), encoder_padding_mask)

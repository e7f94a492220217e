"""``varattn_transformer``: fairseq's Transformer with a latent alignment head.

fairseq's own encoder and decoder (reused, not copied) compute the top
decoder states h_j.  On them sits the same alignment head as in
``varattn_lstm`` (docs/design.md, "The Transformer"):

* the prior p(z_j = i | x, y_<j) = softmax_i(score(h_j, x~_i)) from a
  dedicated scaled dot-product head over the encoder outputs x~ (not one of the
  cross-attention heads: those are trained to carry information to the next
  layer, several of them at once, and would be pulled between that job and
  being the alignment; a dedicated head is one extra attention, about 1% of
  the model's time);
* p(y_j | x, y_<j, z_j = i) from the output layer (``--output-layer``) at
  context x~_i; soft attention is the output at E_p[x~].

The decoder's own output projection is not built: the alignment head's
output layer replaces it, and ``--share-decoder-input-output-embed`` ties
that layer's vocabulary matrix to the decoder's input embeddings.  The
inference network q(z | x, y) is the LSTM model's: a bidirectional LSTM over
the target scoring the encoder outputs (``--inference-network birnn``, the
same module as the LSTM model's) or one bidirectional self-attention layer
over the target (``--inference-network transformer``: one parallel pass where
the BiLSTM takes 2N sequential steps; the faster choice on CPUs).
"""

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerEncoder, TransformerModel, transformer_iwslt_de_en
from fairseq.models.transformer import base_architecture as transformer_base

from ..compat import warn_if_sentences_dropped
from ..data_check import check_data_dir
from ..modules.alignment_head import (
    AlignmentHead,
    AlignmentStep,
    add_alignment_args,
    alignment_defaults,
    check_alignment_args,
)
from .inference_network import add_inference_embedding_args, build_inference_network
from .latent_model import LatentModelMixin, set_table_builder

INFERENCE_NETWORKS = ("none", "birnn", "transformer")


class VarAttnTransformerEncoder(TransformerEncoder):
    """fairseq's encoder, with the source tokens in its output (fairseq leaves
    ``src_tokens`` empty; its ``reorder_encoder_out`` already reorders them):
    the shortlist output layer reads the source words."""

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens: bool = False, token_embeddings=None):
        out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        out["src_tokens"] = [src_tokens]
        return out


class VarAttnTransformerDecoder(TransformerDecoder):
    """fairseq's decoder; ``init_alignment_head`` adds the head (fairseq builds
    decoders from its own config, which does not carry the alignment options)."""

    def init_alignment_head(self, args, source_dict=None):
        self.head = AlignmentHead.build(
            args,
            self.output_embed_dim,
            args.encoder_embed_dim,
            args.decoder_output_dim,
            len(self.dictionary),
            dropout=args.dropout,
            source_dict=source_dict,
            pad=self.dictionary.pad(),
        )
        if args.share_decoder_input_output_embed:
            if self.embed_tokens.embedding_dim != args.decoder_output_dim:
                raise ValueError(
                    "--share-decoder-input-output-embed needs --decoder-output-dim equal to "
                    f"--decoder-embed-dim ({self.embed_tokens.embedding_dim})"
                )
            self.head.output.fc_out.weight = self.embed_tokens.weight

    def build_output_projection(self, args, dictionary, embed_tokens):
        self.output_projection = None  # the alignment head's output layer takes its place

    def upgrade_state_dict_named(self, state_dict, name):
        state_dict = super().upgrade_state_dict_named(state_dict, name)
        # fairseq adds the projection it expects from tied embeddings; we have none
        state_dict.pop(f"{name}.output_projection.weight", None)
        return state_dict

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False, **kwargs):
        h, inner = self.extract_features(
            prev_output_tokens, encoder_out=encoder_out, incremental_state=incremental_state
        )
        enc = encoder_out["encoder_out"][0].transpose(0, 1)  # B x T x C
        masks = encoder_out["encoder_padding_mask"]
        enc_mask = masks[0] if len(masks) > 0 else torch.zeros(enc.shape[:2], dtype=torch.bool, device=enc.device)
        scores, weights, context = self.head.attend(h, self.head.prepared_keys(enc, incremental_state), enc, enc_mask)
        features = self.dropout_module(self.head.output.attentional(h, context))
        tokens = encoder_out.get("src_tokens", [])
        step = AlignmentStep(
            scores, weights, h, context, enc, enc_mask, source_tokens=tokens[0] if len(tokens) > 0 else None
        )
        # fairseq's --print-alignment reads attn[0]
        extra = step.extra(attn=[weights], inner_states=inner["inner_states"])
        if features_only:
            return features, extra
        return self.head.decoder_output(features, step, extra, incremental_state)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.head.normalized_output(net_output, log_probs)


@register_model("varattn_transformer")
class VarAttnTransformerModel(LatentModelMixin, TransformerModel):
    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)

    @classmethod
    def add_args(cls, parser):
        TransformerModel.add_args(parser)
        # fmt: off
        parser.add_argument('--inference-embed-dim', type=int, metavar='N',
                            help='q(z | x, y): target embedding size of its own table (--inference-embeddings own)')
        parser.add_argument('--inference-hidden-size', type=int, metavar='N',
                            help='q(z | x, y) with --inference-network birnn: units per direction '
                                 'of its BiLSTM over the target')
        add_inference_embedding_args(parser)
        add_alignment_args(parser, INFERENCE_NETWORKS)
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        check_alignment_args(args)
        if getattr(args, "adaptive_softmax_cutoff", None):
            # fairseq would build an adaptive softmax that no path reads: the
            # alignment head's output layer replaces fairseq's projection
            raise ValueError(
                "varattn_transformer's output layer is the alignment head's (--output-layer "
                "joint|factored); fairseq's --adaptive-softmax-cutoff does not apply: drop it"
            )
        warn_if_sentences_dropped(args)
        model = super().build_model(args, task)  # fairseq's encoder and our decoder
        model.decoder.init_alignment_head(args, task.source_dictionary)
        set_table_builder(model.decoder.head.output, args, task)
        inference_network = build_inference_network(
            args,
            task.target_dictionary,
            context_dim=args.encoder_embed_dim,
            decoder_embed_tokens=model.decoder.embed_tokens,
            heads=args.decoder_attention_heads,
            max_positions=args.max_target_positions,
        )
        model.init_latent(inference_network, args.inference_annotations)
        return model

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        return VarAttnTransformerEncoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        # fairseq's own build_decoder passes --no-cross-attention on; an
        # override that drops it would keep cross-attention without a word
        return VarAttnTransformerDecoder(
            cfg, tgt_dict, embed_tokens, no_encoder_attn=getattr(cfg, "no_cross_attention", False)
        )

    def forward(self, src_tokens, src_lengths, prev_output_tokens, target=None, features_only=False, **kwargs):
        """With ``target``, also returns q's scores in ``extra["q_scores"]``."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only)
        return x, self.add_q_scores(extra, target)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.decoder.get_normalized_probs(net_output, log_probs, sample)


@register_model_architecture("varattn_transformer", "varattn_transformer")
def base_architecture(args):
    check_data_dir(args)
    # scaled dot-product scores, as the Transformer's own attention: a batched
    # product (MLP scores cost a (N, T, d) tanh, 12% of a small model's step)
    args.attention_score = getattr(args, "attention_score", "dot")
    # fairseq's Transformer projects its layer-normed states straight to the
    # vocabulary, and a tanh layer on top of them slows learning (docs/design.md,
    # "Output layers").  With a linear activation the joint and factored layers
    # compute the same logits a_j + b_i, and the factored one enumerates
    # alignments at soft attention's cost.
    args.output_activation = getattr(args, "output_activation", "linear")
    args.output_layer = getattr(args, "output_layer", "factored")
    alignment_defaults(args)
    transformer_base(args)
    args.inference_embed_dim = getattr(args, "inference_embed_dim", args.decoder_embed_dim)
    args.inference_hidden_size = getattr(args, "inference_hidden_size", args.encoder_embed_dim // 2)
    args.inference_embeddings = getattr(args, "inference_embeddings", "own")  # see add_inference_embedding_args


@register_model_architecture("varattn_transformer", "varattn_transformer_iwslt_de_en")
def varattn_transformer_iwslt_de_en(args):
    """fairseq's ``transformer_iwslt_de_en`` with the alignment head."""
    transformer_iwslt_de_en(args)
    base_architecture(args)


@register_model_architecture("varattn_transformer", "varattn_transformer_tiny")
def varattn_transformer_tiny(args):
    """Small enough for tests and CPU runs."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 2)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 64)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 128)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 2)
    base_architecture(args)

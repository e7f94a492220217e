"""``varattn_lstm``: attention LSTM whose alignment can be a latent variable.

The recurrence is the same for every attention kind (docs/design.md, "The model"): a
bidirectional LSTM encoder, an input-feeding LSTM decoder, and at each step
the prior p(z_j | x, y_<j) = softmax(score(h_j, x~)).  What differs is how
the output distribution uses the alignment, which is delegated to
``AlignmentOutputLayer``:

* ``soft``: p(y_j) = softmax(W_o tanh(W_c [h_j; E_p[x~]])) -- classic attention;
* ``categorical``: p(y_j) = sum_i p(z_j = i) softmax(W_o tanh(W_c [h_j; x~_i]));
* ``dirichlet``: z_j ~ Dir(alpha(h_j, x~)), context sum_i z_ji x~_i; at test
  time the context under the prior's mean.

Input feeding always feeds tanh(W_c [h_j; E_p[x~]]), the expected
attentional vector under the prior, in training and at test time, as the
paper's code does (harvardnlp/var-attn ``ViRNNDecoder``: input_feed is the
prior's soft context).  Feeding q's expectation instead would make the
decoder states depend on the target, so the exact marginal under the prior
(``nll_loss``) would need a second decoder pass and training states would
differ from generation states.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.models import (
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.models.lstm import Embedding, Linear, LSTMCell
from fairseq.modules import FairseqDropout
from torch import Tensor

from ..compat import warn_if_sentences_dropped
from ..data_check import check_data_dir
from ..modules.alignment_head import (
    AlignmentHead,
    AlignmentStep,
    add_alignment_args,
    alignment_defaults,
    check_alignment_args,
    kind_options_of,
)
from ..modules.output_layer import build_output_layer
from ..modules.scorer import AttentionScorer
from .encoder import VarAttnLSTMEncoder
from .inference_network import add_inference_embedding_args, build_inference_network
from .latent_model import LatentModelMixin, set_table_builder

DEFAULT_MAX_POSITIONS = 1024
INFERENCE_NETWORKS = ("none", "birnn", "transformer")
INPUT_FEEDS = ("attentional", "context")


class VarAttnLSTMDecoder(FairseqIncrementalDecoder):
    def __init__(
        self,
        dictionary,
        embed_dim,
        hidden_size,
        out_embed_dim,
        num_layers,
        dropout_in,
        dropout_out,
        encoder_output_units,
        encoder_layers,
        attention="soft",
        attention_score="general",
        attention_dim=None,
        alignment_topk=0,
        alignment_chunk_size=0,
        input_feed="attentional",
        output_layer="joint",
        alignment_dropout="shared",
        factored_source_rank=0,
        output_activation="tanh",
        kind_options=None,
        max_target_positions=DEFAULT_MAX_POSITIONS,
        source_vocab=None,
        shortlist_size=0,
    ):
        super().__init__(dictionary)
        self.input_feed = input_feed
        self.num_layers = num_layers
        self.encoder_layers = encoder_layers
        self.hidden_size = hidden_size
        self.out_embed_dim = out_embed_dim
        self.max_target_positions = max_target_positions
        self.dropout_in_module = FairseqDropout(dropout_in, module_name=self.__class__.__name__)
        self.dropout_out_module = FairseqDropout(dropout_out, module_name=self.__class__.__name__)

        self.embed_tokens = Embedding(len(dictionary), embed_dim, dictionary.pad())
        if encoder_output_units != hidden_size:
            self.encoder_hidden_proj = Linear(encoder_output_units, hidden_size)
            self.encoder_cell_proj = Linear(encoder_output_units, hidden_size)
        else:
            self.encoder_hidden_proj = self.encoder_cell_proj = None
        self.input_feed_dim = out_embed_dim if input_feed == "attentional" else encoder_output_units
        self.layers = nn.ModuleList(
            LSTMCell(embed_dim + self.input_feed_dim if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.head = AlignmentHead(
            AttentionScorer(hidden_size, encoder_output_units, attention_dim, kind=attention_score),
            build_output_layer(
                output_layer,
                hidden_size,
                encoder_output_units,
                out_embed_dim,
                len(dictionary),
                dropout=dropout_out,
                chunk_size=alignment_chunk_size,
                shared_dropout=alignment_dropout == "shared",
                source_rank=factored_source_rank,
                activation=output_activation,
                source_vocab=source_vocab,
                shortlist_size=shortlist_size,
                pad=dictionary.pad(),
            ),
            attention,
            alignment_topk,
            kind_options,
        )

    # -- recurrence -------------------------------------------------------
    def forward(
        self,
        prev_output_tokens,
        encoder_out=None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        **kwargs,
    ):
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if features_only:
            return x, extra
        return self.head.decoder_output(x, AlignmentStep.of(extra), extra, incremental_state)

    def _initial_state(self, encoder_out, bsz, like):
        enc_hiddens, enc_cells = encoder_out[1], encoder_out[2]
        hiddens, cells = [], []
        for i in range(self.num_layers):
            # Deeper decoders than encoders reuse the top encoder layer's state.
            src = min(i, self.encoder_layers - 1)
            h, c = enc_hiddens[src], enc_cells[src]
            if self.encoder_hidden_proj is not None:
                h, c = self.encoder_hidden_proj(h), self.encoder_cell_proj(c)
            hiddens.append(h)
            cells.append(c)
        return hiddens, cells, like.new_zeros(bsz, self.input_feed_dim)

    def extract_features(
        self,
        prev_output_tokens,
        encoder_out,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
    ):
        if encoder_out is None:
            raise ValueError("varattn_lstm's decoder needs encoder outputs (it is not a language model)")
        enc = encoder_out[0].transpose(0, 1)  # B x T x C
        enc_mask = encoder_out[3].t()  # B x T, True at padding
        source_tokens = encoder_out[4] if len(encoder_out) > 4 else None  # B x T
        incremental = incremental_state is not None and len(incremental_state) > 0
        if incremental:
            prev_output_tokens = prev_output_tokens[:, -1:]
        bsz, seqlen = prev_output_tokens.size()

        x = self.dropout_in_module(self.embed_tokens(prev_output_tokens)).transpose(0, 1)
        if incremental:
            hiddens, cells, input_feed = self._cached_state(incremental_state)
        else:
            hiddens, cells, input_feed = self._initial_state(encoder_out, bsz, x)

        keys = self.head.prepared_keys(enc, incremental_state)
        outs, tops, scores_all, weights_all, contexts = [], [], [], [], []
        for j in range(seqlen):
            layer_input = torch.cat((x[j], input_feed), dim=1)
            for i, cell in enumerate(self.layers):
                hiddens[i], cells[i] = cell(layer_input, (hiddens[i], cells[i]))
                layer_input = self.dropout_out_module(hiddens[i])
            top = hiddens[-1]
            scores, weights, context = (t.squeeze(1) for t in self.head.attend(top.unsqueeze(1), keys, enc, enc_mask))
            attentional = self.dropout_out_module(self.head.output.attentional(top, context))
            input_feed = attentional if self.input_feed == "attentional" else context
            outs.append(attentional)
            tops.append(top)
            scores_all.append(scores)
            weights_all.append(weights)
            contexts.append(context)

        self.set_incremental_state(
            incremental_state,
            "cached_state",
            {
                "prev_hiddens": torch.stack(hiddens),
                "prev_cells": torch.stack(cells),
                "input_feed": input_feed,
            },
        )
        step = AlignmentStep(
            scores=torch.stack(scores_all, dim=1),
            weights=torch.stack(weights_all, dim=1),
            hidden=torch.stack(tops, dim=1),
            context=torch.stack(contexts, dim=1),
            encoder_states=enc,
            encoder_padding_mask=enc_mask,
            source_tokens=source_tokens,
        )
        return torch.stack(outs, dim=1), step.extra()

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.head.normalized_output(net_output, log_probs)

    # -- incremental state ------------------------------------------------
    def _cached_state(self, incremental_state) -> Tuple[List[Tensor], List[Tensor], Tensor]:
        cached = self.get_incremental_state(incremental_state, "cached_state")
        assert cached is not None
        hiddens = list(cached["prev_hiddens"].unbind(0))
        cells = list(cached["prev_cells"].unbind(0))
        return hiddens, cells, cached["input_feed"]

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        if incremental_state is None or len(incremental_state) == 0:
            return
        cached = self.get_incremental_state(incremental_state, "cached_state")
        if cached is None:
            return
        self.set_incremental_state(
            incremental_state,
            "cached_state",
            {
                "prev_hiddens": cached["prev_hiddens"].index_select(1, new_order),
                "prev_cells": cached["prev_cells"].index_select(1, new_order),
                "input_feed": cached["input_feed"].index_select(0, new_order),
            },
        )  # the head reorders its own caches (fairseq visits every module)

    def max_positions(self):
        return self.max_target_positions


@register_model("varattn_lstm")
class VarAttnLSTMModel(LatentModelMixin, FairseqEncoderDecoderModel):
    def __init__(self, encoder, decoder, inference_network=None, inference_annotations="detached"):
        super().__init__(encoder, decoder)
        self.init_latent(inference_network, inference_annotations)

    @staticmethod
    def add_args(parser):
        # fmt: off
        parser.add_argument('--dropout', type=float, metavar='D', help='dropout probability')
        parser.add_argument('--encoder-embed-dim', type=int, metavar='N', help='source embedding size')
        parser.add_argument('--encoder-hidden-size', type=int, metavar='N',
                            help='per direction: annotations are twice this')
        parser.add_argument('--encoder-layers', type=int, metavar='N', help='BiLSTM encoder layers')
        parser.add_argument('--encoder-dropout-in', type=float, metavar='D',
                            help='dropout on the source embeddings')
        parser.add_argument('--encoder-dropout-out', type=float, metavar='D',
                            help='dropout on the annotations')
        parser.add_argument('--decoder-embed-dim', type=int, metavar='N', help='target embedding size')
        parser.add_argument('--decoder-hidden-size', type=int, metavar='N', help='decoder LSTM units')
        parser.add_argument('--decoder-layers', type=int, metavar='N', help='decoder LSTM layers')
        parser.add_argument('--decoder-out-embed-dim', type=int, metavar='N',
                            help='size of tanh(W_c [h; context]), the input-feeding vector')
        parser.add_argument('--decoder-dropout-in', type=float, metavar='D',
                            help='dropout on the target embeddings')
        parser.add_argument('--decoder-dropout-out', type=float, metavar='D',
                            help='dropout on the decoder states')
        parser.add_argument('--input-feed', choices=INPUT_FEEDS,
                            help='what the decoder reads back at the next step: the attentional '
                                 'vector tanh(W_c [h; c]) (fairseq, Luong) or the raw context c '
                                 '(the paper\'s code)')
        parser.add_argument('--inference-embed-dim', type=int, metavar='N',
                            help='q(z | x, y): target embedding size of its own table (--inference-embeddings own)')
        parser.add_argument('--inference-hidden-size', type=int, metavar='N',
                            help='q(z | x, y): units per direction of its BiLSTM over the target')
        parser.add_argument('--inference-layers', type=int, metavar='N',
                            help='q(z | x, y): layers of its BiLSTM over the target')
        parser.add_argument('--inference-heads', type=int, metavar='N',
                            help='q(z | x, y) with --inference-network transformer: heads of its '
                                 'self-attention layer over the target')
        add_inference_embedding_args(parser)
        parser.add_argument('--alignment-chunk-size', type=int, metavar='N',
                            help='source positions per chunk of the joint output layer; '
                                 'bounds peak memory (0 = all at once)')
        add_alignment_args(parser, INFERENCE_NETWORKS)
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        check_args(args)
        warn_if_sentences_dropped(args)
        max_source = getattr(args, "max_source_positions", DEFAULT_MAX_POSITIONS)
        max_target = getattr(args, "max_target_positions", DEFAULT_MAX_POSITIONS)
        encoder = VarAttnLSTMEncoder(
            dictionary=task.source_dictionary,
            embed_dim=args.encoder_embed_dim,
            hidden_size=args.encoder_hidden_size,
            num_layers=args.encoder_layers,
            dropout_in=args.encoder_dropout_in,
            dropout_out=args.encoder_dropout_out,
            bidirectional=True,
            left_pad=getattr(args, "left_pad_source", True),
            max_source_positions=max_source,
        )
        decoder = VarAttnLSTMDecoder(
            dictionary=task.target_dictionary,
            embed_dim=args.decoder_embed_dim,
            hidden_size=args.decoder_hidden_size,
            out_embed_dim=args.decoder_out_embed_dim,
            num_layers=args.decoder_layers,
            dropout_in=args.decoder_dropout_in,
            dropout_out=args.decoder_dropout_out,
            encoder_output_units=encoder.output_units,
            encoder_layers=args.encoder_layers,
            attention=args.attention,
            attention_score=args.attention_score,
            attention_dim=args.attention_dim,
            alignment_topk=args.alignment_topk,
            alignment_chunk_size=args.alignment_chunk_size,
            input_feed=args.input_feed,
            output_layer=args.output_layer,
            alignment_dropout=args.alignment_dropout,
            factored_source_rank=args.factored_source_rank,
            output_activation=args.output_activation,
            kind_options=kind_options_of(args),
            max_target_positions=max_target,
            source_vocab=len(task.source_dictionary),
            shortlist_size=args.shortlist_size,
        )
        set_table_builder(decoder.head.output, args, task)
        inference_network = build_inference_network(
            args,
            task.target_dictionary,
            context_dim=encoder.output_units,
            decoder_embed_tokens=decoder.embed_tokens,
            heads=args.inference_heads,
            max_positions=max_target,
        )
        return cls(encoder, decoder, inference_network, args.inference_annotations)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, target=None, features_only: bool = False, **kwargs):
        """With ``target``, also returns q's scores in ``extra["q_scores"]``."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only)
        return x, self.add_q_scores(extra, target)


def check_args(args):
    """Reject invalid combinations when the model is built, with the fix in the message."""
    check_alignment_args(args)
    if args.alignment_chunk_size < 0:
        raise ValueError(f"--alignment-chunk-size must be >= 0, got {args.alignment_chunk_size}")
    max_source = getattr(args, "max_source_positions", DEFAULT_MAX_POSITIONS)
    if args.alignment_topk > max_source:
        raise ValueError(
            f"--alignment-topk {args.alignment_topk} is larger than the longest allowed "
            f"source ({max_source} positions): use 0 for exact enumeration"
        )
    if args.inference_network == "transformer":
        if args.inference_embed_dim % args.inference_heads:
            raise ValueError(
                f"--inference-heads {args.inference_heads} must divide q's embedding size "
                f"{args.inference_embed_dim} (--inference-embed-dim)"
            )
        if args.inference_layers != 1:
            raise ValueError(
                "--inference-layers counts the layers of q's BiLSTM (--inference-network birnn); "
                "--inference-network transformer has one self-attention layer: drop --inference-layers"
            )


@register_model_architecture("varattn_lstm", "varattn_lstm")
def base_architecture(args):
    check_data_dir(args)
    args.dropout = getattr(args, "dropout", 0.1)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 256)
    args.encoder_layers = getattr(args, "encoder_layers", 1)
    args.encoder_dropout_in = getattr(args, "encoder_dropout_in", args.dropout)
    args.encoder_dropout_out = getattr(args, "encoder_dropout_out", args.dropout)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 256)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 512)
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    args.decoder_out_embed_dim = getattr(args, "decoder_out_embed_dim", 256)
    args.decoder_dropout_in = getattr(args, "decoder_dropout_in", args.dropout)
    args.decoder_dropout_out = getattr(args, "decoder_dropout_out", args.dropout)
    # categorical attention gets the factored layer: with the joint one the
    # output barely depends on the alignment early on, and the prior and q can
    # stay uniform (docs/design.md, "Is the latent attention learning?"); soft and
    # Dirichlet attention keep the paper's joint layer
    args.output_layer = getattr(
        args, "output_layer", "factored" if getattr(args, "attention", "soft") == "categorical" else "joint"
    )
    alignment_defaults(args)
    args.inference_embed_dim = getattr(args, "inference_embed_dim", args.decoder_embed_dim)
    args.inference_hidden_size = getattr(args, "inference_hidden_size", args.encoder_hidden_size)
    args.inference_layers = getattr(args, "inference_layers", 1)
    args.inference_heads = getattr(args, "inference_heads", 4)
    args.inference_embeddings = getattr(args, "inference_embeddings", "own")  # see add_inference_embedding_args
    args.alignment_chunk_size = getattr(args, "alignment_chunk_size", 0)
    args.input_feed = getattr(args, "input_feed", "attentional")


@register_model_architecture("varattn_lstm", "varattn_lstm_iwslt_de_en")
def varattn_lstm_iwslt_de_en(args):
    """The paper's IWSLT14 De-En settings (harvardnlp/var-attn ``va.sh``):
    512-d embeddings, 2-layer BiLSTM encoder with 1024-d annotations, 2-layer
    768-unit input-feeding decoder, MLP attention of size 512, dropout 0.3,
    a 512-unit bidirectional inference network.  Train with Adam lr 3e-4,
    batch 6 sentences, clip 5 (see examples/translation/README.md)."""
    args.dropout = getattr(args, "dropout", 0.3)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 512)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 512)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 768)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_out_embed_dim = getattr(args, "decoder_out_embed_dim", 768)
    args.attention_dim = getattr(args, "attention_dim", 512)
    args.inference_hidden_size = getattr(args, "inference_hidden_size", 512)
    base_architecture(args)


@register_model_architecture("varattn_lstm", "varattn_lstm_tiny")
def varattn_lstm_tiny(args):
    """Small enough for tests and CPU demos."""
    args.dropout = getattr(args, "dropout", 0.1)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_hidden_size = getattr(args, "encoder_hidden_size", 64)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 64)
    args.decoder_hidden_size = getattr(args, "decoder_hidden_size", 128)
    args.decoder_out_embed_dim = getattr(args, "decoder_out_embed_dim", 64)
    base_architecture(args)

"""The alignment head every model with latent attention shares (the
translation decoders, the VQA answer head): one module that owns the
prior's scorer, the attention kind with its options, the output layer, the
beam-search caches and the checkpoint markers, and one typed result of a
pass, ``AlignmentStep`` (docs/design.md, "How the parts meet").  Its options,
their defaults and checks are here too.

Latent criterions read ``model.alignment_head`` (an ``AlignmentHead``) and
``AlignmentStep.of(extra)``.
"""

from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor

from . import attention_kinds
from .factored_output import FactoredOutputLayer
from .output_base import OUTPUT_ACTIVATIONS
from .output_layer import SHORTLIST_LAYERS, build_output_layer
from .scorer import AttentionScorer
from .sentence_shortlist import SentenceShortlistOutputLayer
from .shortlist_output import ShortlistOutputLayer

#: saved in checkpoints as an index (``output_layer_id``): append, never reorder
OUTPUT_LAYERS = ("joint", "factored", "shortlist", "sentence-shortlist")
#: --shortlist-size's default: candidates per source word type.  The
#: sentence-shortlist layer's is larger: its cost grows with the sentence's
#: candidate words, not with K, and on a quarter of Multi30k K = 128 came
#: within 8% of the factored layer's test PPL where K = 32 was 25% behind
#: (examples/translation/README.md, "Screening a variant")
SHORTLIST_SIZE = 32
SENTENCE_SHORTLIST_SIZE = 128
ALIGNMENT_DROPOUTS = ("shared", "independent")
#: --inference-annotations: whether q's gradient trains the annotations it reads
INFERENCE_ANNOTATIONS = ("detached", "trained")
#: ``extra``'s copy of a normalised output's first column (``AlignmentHead.decoder_output``)
NORMALISED_COLUMN = "normalised_column"


def add_alignment_args(parser, inference_networks, output_layers=OUTPUT_LAYERS):
    """The alignment options of a model (fairseq ``add_args`` style)."""
    # fmt: off
    parser.add_argument('--attention', choices=list(attention_kinds.KINDS),
                        help='soft: classic attention; categorical: z_j is a latent source position '
                             '(or region); dirichlet: z_j is a latent point on the simplex')
    parser.add_argument('--inference-network', choices=inference_networks,
                        help='q(z | x, y) for variational criterions (training only)')
    parser.add_argument('--inference-annotations', choices=INFERENCE_ANNOTATIONS,
                        help='detached (default): q reads the encoder\'s annotations without training '
                             'them, as if it had an encoder of its own (the paper\'s code); trained: q\'s '
                             'gradient also trains the encoder, which can pull the annotations together '
                             '(docs/design.md, "The inference network")')
    parser.add_argument('--attention-score', choices=AttentionScorer.KINDS,
                        help='general (bilinear, Luong) or mlp (Bahdanau) scores')
    parser.add_argument('--attention-dim', type=int, metavar='N', help='hidden size of mlp attention scores')
    parser.add_argument('--inference-score', choices=AttentionScorer.KINDS,
                        help='q\'s scores against the annotations (default: --attention-score\'s kind); '
                             'general: (W g_j) . x~_i, the paper\'s q, one batched product where mlp '
                             'builds an (N, T, d) tanh per sentence')
    parser.add_argument('--alignment-topk', type=int, metavar='K',
                        help='sum the output mixture over the K most probable alignments '
                             '(0 = exact); also applies at generation')
    parser.add_argument('--alignment-dropout', choices=ALIGNMENT_DROPOUTS,
                        help='dropout in the joint output layer: one mask per target token shared '
                             'by all its alignments (default), or one per alignment (the paper\'s '
                             'code; its noise keeps the prior uniform)')
    for kind in attention_kinds.KINDS.values():
        for option in kind.options:
            parser.add_argument(option.flag, choices=list(option.choices),
                                help=f'--attention {kind.name}: {option.help}')
    if len(output_layers) > 1:
        parser.add_argument('--output-layer', choices=output_layers,
                            help='joint: softmax(W_o tanh(W_c [h_j; x~_i])), one vocabulary softmax per '
                                 'alignment (the paper); factored: logits a(h_j) + b(x~_i), exact '
                                 'enumeration at about soft attention\'s cost; shortlist: b only on the '
                                 'K words each source word translates to most often (an IBM model 1 '
                                 'table from the train split), cheaper still; sentence-shortlist: b on the '
                                 'sentence\'s candidate words, each position raising or lowering any of them')
        parser.add_argument('--output-activation', choices=OUTPUT_ACTIVATIONS,
                            help='what the output layer applies to W_h h_j and W_c x~_i before W_o: '
                                 'tanh (the paper\'s; varattn_lstm\'s default) or linear '
                                 '(varattn_transformer\'s default, as fairseq\'s Transformer projects '
                                 'its states directly)')
        parser.add_argument('--factored-source-rank', type=int, metavar='R',
                            help='factored layer: b_i through a rank-R vocabulary matrix of its own '
                                 '(0, the default: through the decoder side\'s W_o)')
        parser.add_argument('--shortlist-size', type=int, metavar='K',
                            help=f'shortlist layers: candidates per source word type (default {SHORTLIST_SIZE}; '
                                 f'{SENTENCE_SHORTLIST_SIZE} for sentence-shortlist)')
    # fmt: on


def alignment_defaults(args) -> None:
    """Defaults of the alignment options (inside a ``base_architecture``)."""
    args.attention = getattr(args, "attention", "soft")
    args.inference_network = getattr(args, "inference_network", "none")
    args.inference_annotations = getattr(args, "inference_annotations", "detached")
    # MLP scores, as the paper's code: bilinear ("general") scores with this
    # initialisation saturate the softmax early and attention collapses onto
    # one source position (docs/design.md, "The model").
    args.attention_score = getattr(args, "attention_score", "mlp")
    # q scores with the prior's kind unless told otherwise, as every
    # checkpoint from before --inference-score was trained
    args.inference_score = getattr(args, "inference_score", None) or args.attention_score
    args.attention_dim = getattr(args, "attention_dim", None)
    args.alignment_topk = getattr(args, "alignment_topk", 0)
    args.alignment_dropout = getattr(args, "alignment_dropout", "shared")
    for option in attention_kinds.all_options():
        setattr(args, option.name, getattr(args, option.name, option.default))
    args.output_layer = getattr(args, "output_layer", "joint")
    args.factored_source_rank = getattr(args, "factored_source_rank", 0)
    args.shortlist_size = getattr(args, "shortlist_size", None)
    if args.shortlist_size is None:
        sentence = args.output_layer == "sentence-shortlist"
        args.shortlist_size = SENTENCE_SHORTLIST_SIZE if sentence else SHORTLIST_SIZE
    args.output_activation = getattr(args, "output_activation", "tanh")


def kind_options_of(args) -> dict:
    """The attention kinds' options (``KindOption``) given in ``args``: name -> choice."""
    return {option.name: getattr(args, option.name) for option in attention_kinds.all_options()}


def check_alignment_args(args) -> None:
    """The option checks every model with an alignment head shares (the fix in the message)."""
    kind = attention_kinds.get(args.attention)
    if args.alignment_topk < 0:
        raise ValueError(f"--alignment-topk must be >= 0 (0 = exact), got {args.alignment_topk}")
    if args.alignment_topk > 0 and not kind.supports_topk:
        raise ValueError(
            f"--alignment-topk does not apply to --attention {args.attention} "
            f"(it does to: {', '.join(n for n, k in attention_kinds.KINDS.items() if k.supports_topk)})"
        )
    if not kind.latent and args.inference_network != "none":
        raise ValueError(
            "--inference-network needs a latent attention (--attention "
            f"{' or '.join(n for n, k in attention_kinds.KINDS.items() if k.latent)}); "
            f"--attention {args.attention} has no z to infer"
        )
    if args.factored_source_rank < 0 or (args.factored_source_rank > 0 and args.output_layer != "factored"):
        raise ValueError(
            "--factored-source-rank takes a rank >= 1 for --output-layer factored "
            f"(got {args.factored_source_rank} with --output-layer {args.output_layer})"
        )
    for owner in attention_kinds.KINDS.values():
        for option in owner.options:
            if getattr(args, option.name) != option.default and option not in kind.options:
                raise ValueError(f"{option.flag} applies to --attention {owner.name}, not --attention {args.attention}")
    if args.alignment_dropout == "independent" and args.output_layer != "joint":
        raise ValueError(
            "--alignment-dropout independent applies to the joint output layer; the "
            f"{args.output_layer} layer has no per-alignment features to drop (use shared)"
        )
    shortlist = args.output_layer in SHORTLIST_LAYERS
    if args.shortlist_size < 1 or (args.shortlist_size != SHORTLIST_SIZE and not shortlist):
        raise ValueError(
            "--shortlist-size takes a size >= 1 for --output-layer shortlist or sentence-shortlist "
            f"(got {args.shortlist_size} with --output-layer {args.output_layer})"
        )


@dataclass
class AlignmentStep:
    """What an alignment head computed for a batch of target positions: every
    model returns it in its ``extra`` (``extra()``), every criterion and tool
    reads it back (``of``)."""

    scores: Tensor  # (B, N, T) the prior's scores, -inf at padding
    weights: Tensor  # (B, N, T) the prior's mean: the expected alignment
    hidden: Tensor  # (B, N, H) the decoder states h_j that score the source
    context: Tensor  # (B, N, C) the expected context
    encoder_states: Tensor  # (B, T, C) the annotations x~ (image regions in VQA)
    encoder_padding_mask: Tensor  # (B, T), True at padding
    q_scores: Optional[Tensor] = None  # (B, N, T) q's scores, when the model was given the target
    source_tokens: Optional[Tensor] = None  # (B, T) the source words (the shortlist layer reads them)

    def extra(self, attn=None, **more) -> dict:
        """fairseq's ``extra``: the fields by name, "attn" (what ``--print-alignment``
        reads; the weights unless given) and what the model adds."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        out["attn"] = self.weights if attn is None else attn
        out.update(more)
        return out

    @classmethod
    def of(cls, extra: dict) -> "AlignmentStep":
        return cls(**{f.name: extra.get(f.name) for f in fields(cls)})


#: the head's buffers that say which function its parameters compute (saved in
#: checkpoints; a checkpoint from before a marker gets the value named in ``check_checkpoint``)
def markers():
    return ("attention_kind_id", "output_layer_id", "output_activation_id") + tuple(
        option.marker for option in attention_kinds.all_options()
    )


@with_incremental_state
class AlignmentHead(nn.Module):
    """score(h_j, x~_i) -> the prior over alignments -> the output distribution.

    Owns the scorer, the attention kind (with its options), the output layer,
    the per-sentence caches of beam search and the markers saved in
    checkpoints.  Soft, categorical and Dirichlet heads have the same
    parameters, and joint and factored layers the same names, so only the
    markers tell their checkpoints apart."""

    def __init__(self, scorer, output, attention="soft", alignment_topk=0, kind_options=None):
        super().__init__()
        self.kind = attention_kinds.get(attention)
        self.alignment_topk = alignment_topk
        given = kind_options or {}
        #: the kind's options (``KindOption``): name -> choice
        self.kind_options = {o.name: given.get(o.name, o.default) for o in self.kind.options}
        self.scorer = scorer
        self.output = output
        self.register_buffer("attention_kind_id", torch.tensor(attention_kinds.KIND_IDS.index(attention)))
        self.register_buffer("output_layer_id", torch.tensor(OUTPUT_LAYERS.index(self.output_layer_kind)))
        self.register_buffer("output_activation_id", torch.tensor(OUTPUT_ACTIVATIONS.index(output.activation)))
        # every kind's markers, so that heads of every kind have the same buffers;
        # another kind's option holds its default
        for option in attention_kinds.all_options():
            choice = self.kind_options.get(option.name, option.default)
            self.register_buffer(option.marker, torch.tensor(option.choices.index(choice)))

    @classmethod
    def build(cls, args, query_dim, key_dim, embed_dim, vocab_size, dropout, chunk_size=0, source_dict=None, pad=None):
        """The head of the alignment options in ``args`` (``alignment_defaults``);
        ``source_dict`` and the target ``pad`` for the shortlist layer's table."""
        scorer = AttentionScorer(query_dim, key_dim, args.attention_dim, kind=args.attention_score)
        output = build_output_layer(
            args.output_layer,
            query_dim,
            key_dim,
            embed_dim,
            vocab_size,
            dropout=dropout,
            chunk_size=chunk_size,
            shared_dropout=args.alignment_dropout == "shared",
            source_rank=args.factored_source_rank,
            activation=args.output_activation,
            source_vocab=None if source_dict is None else len(source_dict),
            shortlist_size=args.shortlist_size,
            pad=pad,
        )
        return cls(scorer, output, args.attention, args.alignment_topk, kind_options_of(args))

    @property
    def attention_kind(self) -> str:
        return self.kind.name

    @property
    def output_layer_kind(self) -> str:
        if isinstance(self.output, SentenceShortlistOutputLayer):
            return "sentence-shortlist"
        if isinstance(self.output, ShortlistOutputLayer):
            return "shortlist"
        return "factored" if isinstance(self.output, FactoredOutputLayer) else "joint"

    # -- the prior ----------------------------------------------------------
    def alignment_distribution(self, scores: Tensor, mask: Optional[Tensor]):
        """The distribution of this attention kind from scores (-inf at
        padding): the prior from the model's scores, q from the inference
        network's."""
        return self.kind.distribution(scores, mask, **self.kind_options)

    def expected_weights(self, scores: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The prior's mean: what input feeding and soft outputs use."""
        return self.kind.expected_weights(scores, mask, **self.kind_options)

    def attend(self, h: Tensor, keys: Tensor, enc: Tensor, mask: Tensor):
        """(scores, expected weights, expected context) of queries h (B, N, H)
        over the annotations enc (B, T, C) with ``prepared_keys``."""
        scores = self.scorer(h, keys, mask)
        weights = self.expected_weights(scores, mask)
        return scores, weights, torch.bmm(weights, enc)

    # -- the output ---------------------------------------------------------
    def output_logits(self, features: Tensor, step: AlignmentStep, incremental_state=None) -> Tensor:
        """Logits (soft, Dirichlet) or the mixture's normalised log p(y | x) (categorical)."""
        cache = None
        if incremental_state is not None and self.kind.supports_topk:
            cache = self.get_incremental_state(incremental_state, "source_cache")
            if cache is None:
                cache = self.output.source_cache(step)  # None where the layer caches nothing
                if cache is not None:
                    self.set_incremental_state(incremental_state, "source_cache", cache)
        return self.kind.output(self.output, features, step, self.alignment_topk, cache)

    def decoder_output(self, features: Tensor, step: AlignmentStep, extra: dict, incremental_state=None):
        """A decoder's (output, extra): ``output_logits``, and for a kind whose
        output is already normalised, its first column kept in ``extra``
        (``normalized_output`` reads it)."""
        out = self.output_logits(features, step, incremental_state)
        if self.kind.output_normalised:
            extra[NORMALISED_COLUMN] = out[..., 0].detach().clone()
        return out, extra

    @staticmethod
    def normalized_output(net_output, log_probs):
        """``get_normalized_probs`` for every kind.

        A categorical model's output is already the mixture's normalised
        log p(y_j | x, y_<j), but fairseq's generator divides the decoder
        output by ``--temperature`` (in place) before asking for normalised
        probabilities, so it is normalised again unless the division left it
        unchanged: temperature T then means what it means for a softmax
        model, p(y)^(1/T) renormalised over the vocabulary, and T = 1 costs
        no second pass over the vocabulary (docs/design.md, "Generation").
        """
        out = net_output[0].float()
        extra = net_output[1] if len(net_output) > 1 else None
        kept = extra.get(NORMALISED_COLUMN) if isinstance(extra, dict) else None
        if kept is not None and _undivided(out[..., 0], kept):
            return out if log_probs else out.exp()
        return F.log_softmax(out, dim=-1) if log_probs else F.softmax(out, dim=-1)

    # -- beam search --------------------------------------------------------
    def prepared_keys(self, enc: Tensor, incremental_state=None) -> Tensor:
        """``self.scorer.prepare(enc)``, once per sentence in incremental decoding:
        what is computed from the source alone is the same at every step (the
        key projection, recomputed, was a third of varattn_lstm's beam search
        with MLP scores; the output layer's source side is cached in ``output_logits``)."""
        if incremental_state is None:
            return self.scorer.prepare(enc)
        cached = self.get_incremental_state(incremental_state, "prepared_keys")
        if cached is None:
            cached = {"keys": self.scorer.prepare(enc)}
            self.set_incremental_state(incremental_state, "prepared_keys", cached)
        return cached["keys"]

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Called by fairseq's decoder for every module that has it (beam search)."""
        keys = self.get_incremental_state(incremental_state, "prepared_keys")
        if keys is not None:
            self.set_incremental_state(
                incremental_state, "prepared_keys", {"keys": keys["keys"].index_select(0, new_order)}
            )
        source = self.get_incremental_state(incremental_state, "source_cache")
        if source is not None:
            self.set_incremental_state(
                incremental_state, "source_cache", self.output.reorder_source_cache(source, new_order)
            )

    # -- checkpoints --------------------------------------------------------
    def check_checkpoint(self, state_dict: dict, prefix: str) -> None:
        """Clear errors for a checkpoint whose markers say it computes another
        function; markers a checkpoint predates get the value it was trained with."""
        saved_kind = attention_kinds.KIND_IDS[
            int(state_dict.setdefault(prefix + "attention_kind_id", self.attention_kind_id.clone()))
        ]
        if saved_kind != self.attention_kind:
            raise ValueError(
                f"this checkpoint holds a --attention {saved_kind} model, but the model being "
                f"loaded has --attention {self.attention_kind}: train with the checkpoint's "
                "attention kind, or start a new run without --restore-file"
            )
        # from before --output-layer: joint
        saved_layer = OUTPUT_LAYERS[
            int(state_dict.setdefault(prefix + "output_layer_id", torch.tensor(OUTPUT_LAYERS.index("joint"))))
        ]
        if saved_layer != self.output_layer_kind:
            raise ValueError(
                f"this checkpoint holds a --output-layer {saved_layer} model, but the model being loaded "
                f"has --output-layer {self.output_layer_kind}: load it with --model-overrides "
                f"\"{{'output_layer': '{saved_layer}'}}\" or train with the checkpoint's output layer"
            )
        for option in attention_kinds.all_options():  # from before an option: its default
            key = prefix + option.marker
            saved = option.choices[int(state_dict.setdefault(key, torch.tensor(option.choices.index(option.default))))]
            if option in self.kind.options and saved != self.kind_options[option.name]:
                raise ValueError(
                    f"this checkpoint holds a {option.flag} {saved} model, but the model being loaded has "
                    f"{option.flag} {self.kind_options[option.name]}: load it with --model-overrides "
                    f"\"{{'{option.name}': '{saved}'}}\""
                )
            state_dict[key] = getattr(self, option.marker).clone()  # another kind's option: not its own
        # parameter-free, so the checkpoint's activation is the one the head runs with:
        # a checkpoint from before the option (tanh) loads as trained whatever today's default
        key = prefix + "output_activation_id"
        saved = OUTPUT_ACTIVATIONS[int(state_dict.get(key, OUTPUT_ACTIVATIONS.index("tanh")))]
        self.output.activation = saved
        state_dict[key] = torch.tensor(OUTPUT_ACTIVATIONS.index(saved))


def _undivided(column: Tensor, kept: Tensor) -> bool:
    """Whether fairseq's division by --temperature left a normalised output's
    first column as it was kept: for a finite nonzero x, x / T == x only at
    T = 1 (a column of zeros or one of another shape decides nothing)."""
    return (
        column.shape == kept.shape
        and bool(torch.isfinite(kept).all() and kept.ne(0).all())
        and torch.equal(column, kept.to(column.dtype))
    )


def move_head_keys(state_dict: dict, owner: str, head: str) -> None:
    """Rename, in place, the keys of a checkpoint from before the head was one
    module: ``{owner}scorer.*`` and ``{owner}output.*`` (the decoder's, or the
    VQA head's own) and the markers saved at the model's top level go under
    ``head``."""
    if owner == head:
        return
    top_level = markers()
    for key in list(state_dict):
        if key.startswith((owner + "scorer.", owner + "output.")):
            state_dict[head + key[len(owner) :]] = state_dict.pop(key)
        elif key in top_level:
            state_dict[head + key] = state_dict.pop(key)

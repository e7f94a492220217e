"""The alignment head every model with latent attention shares (the
translation decoder, the VQA answer head): its options, their defaults and
checks, and what the attention kind means for the model's output
(docs/design.md, "How the parts meet").

A class mixing ``AlignmentHeadMixin`` in sets ``attention_kind`` (a name),
``alignment_topk`` and ``output`` (an output layer); latent criterions read
exactly these plus ``alignment_distribution``.
"""

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from . import attention_kinds
from .output_base import OUTPUT_ACTIVATIONS
from .scorer import AttentionScorer

OUTPUT_LAYERS = ("joint", "factored")
ALIGNMENT_DROPOUTS = ("shared", "independent")
#: --inference-annotations: whether q's gradient trains the annotations it reads
INFERENCE_ANNOTATIONS = ("detached", "trained")


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
    parser.add_argument('--alignment-topk', type=int, metavar='K',
                        help='sum the output mixture over the K most probable alignments '
                             '(0 = exact); also applies at generation')
    parser.add_argument('--dirichlet-concentration', choices=list(attention_kinds.DIRICHLET_LINKS),
                        help='--attention dirichlet: alpha = softplus(score) (the paper\'s code) or '
                             'exp(score), whose mean is softmax(score) at any total concentration')
    parser.add_argument('--alignment-dropout', choices=ALIGNMENT_DROPOUTS,
                        help='dropout in the joint output layer: one mask per target token shared '
                             'by all its alignments (default), or one per alignment (the paper\'s '
                             'code; its noise keeps the prior uniform)')
    if len(output_layers) > 1:
        parser.add_argument('--output-layer', choices=output_layers,
                            help='joint: softmax(W_o tanh(W_c [h_j; x~_i])), one vocabulary softmax per '
                                 'alignment (the paper); factored: logits a(h_j) + b(x~_i), exact '
                                 'enumeration at about soft attention\'s cost')
        parser.add_argument('--output-activation', choices=OUTPUT_ACTIVATIONS,
                            help='what the output layer applies to W_h h_j and W_c x~_i before W_o: '
                                 'tanh (the paper\'s; varattn_lstm\'s default) or linear '
                                 '(varattn_transformer\'s default, as fairseq\'s Transformer projects '
                                 'its states directly)')
        parser.add_argument('--factored-source-rank', type=int, metavar='R',
                            help='factored layer: b_i through a rank-R vocabulary matrix of its own '
                                 '(0, the default: through the decoder side\'s W_o)')
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
    args.attention_dim = getattr(args, "attention_dim", None)
    args.alignment_topk = getattr(args, "alignment_topk", 0)
    args.alignment_dropout = getattr(args, "alignment_dropout", "shared")
    args.dirichlet_concentration = getattr(args, "dirichlet_concentration", "softplus")
    args.output_layer = getattr(args, "output_layer", "joint")
    args.factored_source_rank = getattr(args, "factored_source_rank", 0)
    args.output_activation = getattr(args, "output_activation", "tanh")


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
    if args.dirichlet_concentration != "softplus" and "dirichlet_concentration" not in kind.options:
        raise ValueError(
            f"--dirichlet-concentration applies to --attention dirichlet, not --attention {args.attention}"
        )
    if args.alignment_dropout == "independent" and args.output_layer == "factored":
        raise ValueError(
            "--alignment-dropout independent applies to the joint output layer; the "
            "factored layer has no per-alignment features to drop (use shared)"
        )


class AlignmentHeadMixin:
    #: Dirichlet attention's link from scores to concentrations (--dirichlet-concentration)
    dirichlet_concentration = "softplus"

    @property
    def kind(self) -> attention_kinds.AttentionKind:
        return attention_kinds.get(self.attention_kind)

    def _kind_options(self) -> dict:
        return {name: getattr(self, name) for name in self.kind.options}

    def alignment_distribution(self, scores: Tensor, mask: Optional[Tensor]):
        """The distribution of this attention kind from scores (-inf at
        padding): the prior from the model's scores, q from the inference
        network's."""
        return self.kind.distribution(scores, mask, **self._kind_options())

    def expected_weights(self, scores: Tensor, mask: Optional[Tensor]) -> Tensor:
        """The prior's mean: what input feeding and soft outputs use."""
        return self.kind.expected_weights(scores, mask, **self._kind_options())

    def output_layer(self, features, extra):
        """Logits (soft, Dirichlet) or the mixture's normalised log p(y | x) (categorical)."""
        return self.kind.output(self, features, extra)

    def normalized_output(self, net_output, log_probs):
        """``get_normalized_probs`` for every kind.

        A categorical model's output is already the mixture's normalised
        log p(y_j | x, y_<j); it is normalised again because fairseq's
        generator divides the decoder output by ``--temperature`` before
        asking for normalised probabilities.  Temperature T then means what
        it means for a softmax model: p(y)^(1/T) renormalised over the
        vocabulary (docs/design.md, "Generation").
        """
        out = net_output[0].float()
        return F.log_softmax(out, dim=-1) if log_probs else F.softmax(out, dim=-1)

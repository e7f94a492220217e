"""Named experiment rows: the one naming of what a results table's row trained,
used by converge.py, reproduce.py, ablate.py (each ablation is a row plus
its change), the benchmarks and the epoch timer.

A row name is
``[transformer-]VARIANT[-joint|-factored|-shortlist[K]|-sentence[K]][-rR][-topK][-qattn][-qbilinear][-warmup|-centred]``:
``transformer`` alone is fairseq's own Transformer (and, in the benchmarks,
``lstm`` fairseq's own LSTM); ``transformer-VARIANT`` is ``varattn_transformer``
with a variant of ``varattn_tools/variants.py``; ``VARIANT`` alone is
``varattn_lstm``.  Suffixes select options within the variant: the output
layer where it is not the family's default (``-factored`` for the LSTM's
soft attention, ``-joint`` for a latent variant or a Transformer row),
``-shortlist`` (``--output-layer shortlist``; ``-shortlistK`` with ``--shortlist-size K``),
``-sentence`` (``--output-layer sentence-shortlist``; ``-sentenceK`` likewise), ``-rR``
(``--factored-source-rank R``), ``-topK`` (``--alignment-topk K``),
``-qattn`` (``--inference-network transformer``: q reads the target with one
self-attention layer instead of a BiLSTM), ``-qbilinear`` (``--inference-score
general``: q scores as the paper's code), both for a variant with q, and
``-warmup`` / ``-centred`` (rws with ``ROW_OPTIONS``).  ``parse`` reads a
name; the presets below are the converged comparison's.

    varattn-options --row transformer-elbo-enum   # a row's fairseq-train options

The presets are the converged comparison's (examples/translation/converge.py):
early stopping on valid PPL with the same patience for every row.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from .variants import get as get_variant
from .variants import model_overrides as variant_model_overrides
from .variants import train_options as variant_options

PATIENCE = 3
# a cap that early stopping is meant to reach first
MAX_EPOCH = 50
_STOPPING = f"--max-epoch {MAX_EPOCH} --patience {PATIENCE} --best-checkpoint-metric ppl --no-epoch-checkpoints"

PRESET = (
    "--arch varattn_lstm --encoder-embed-dim 128 --encoder-hidden-size 128 --decoder-embed-dim 128 "
    "--decoder-hidden-size 256 --decoder-out-embed-dim 128 --dropout 0.3 --optimizer adam --lr 0.002 "
    "--clip-norm 5 --max-tokens 3000 --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5 --lr-patience 0 " + _STOPPING
).split()
# a small Transformer for 2 CPU cores; "transformer" is fairseq's own, the
# others varattn_transformer of the same size with the architecture's defaults
# (the factored output layer with a linear activation; latent criterions warm
# up on the exact marginal until q has caught up)
TRANSFORMER_PRESET = (
    "--encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512 "
    "--encoder-layers 3 --decoder-layers 3 --encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--dropout 0.3 --optimizer adam --adam-betas (0.9,0.98) --lr 0.0007 --clip-norm 1 "
    "--lr-scheduler inverse_sqrt --warmup-updates 400 --max-tokens 3000 " + _STOPPING
).split()
# the small varattn_lstm of ablate.py and reproduce.py --quick (2 CPU cores, minutes a run)
QUICK_PRESET = (
    "--arch varattn_lstm --encoder-embed-dim 64 --encoder-hidden-size 64 --decoder-embed-dim 64 "
    "--decoder-hidden-size 128 --decoder-out-embed-dim 64 --dropout 0.2 --optimizer adam --lr 0.005 --clip-norm 5"
).split()
# The LSTM rows with q keep the options they were trained with, so that their
# commands reproduce them (docs/design.md, "The automatic warm-up").
LSTM_Q_OPTIONS = ["--latent-warmup", "off", "--inference-annotations", "trained"]
# Rows that add options to their variant's: rws after the exact marginal's
# warm-up, and rws with centred wake-phase weights (examples/translation/README.md,
# "Why reweighted wake-sleep collapses").
ROW_OPTIONS = {"rws-warmup": ["--marginal-warmup-updates", "546"], "rws-centred": ["--centred-weights"]}
TRANSFORMER = "transformer"
#: row-name suffixes of the output layers that read a lexical table: the layer they select
SHORTLIST_SUFFIXES = {"shortlist": "shortlist", "sentence": "sentence-shortlist"}
#: fairseq's own models: "transformer" trains in the converged comparison, both in the benchmarks
FAIRSEQ_MODELS = ("lstm", TRANSFORMER)
_SUFFIX = re.compile(r"-(joint|factored|shortlist\d*|sentence\d*|r\d+|top\d+|qattn|qbilinear|warmup|centred)$")


@dataclass(frozen=True)
class Row:
    """What a row name says (``parse``)."""

    name: str
    #: varattn_transformer (or fairseq's transformer), else varattn_lstm (or fairseq's lstm)
    transformer: bool
    #: a variant of varattn_tools/variants.py; None for fairseq's own model
    variant: Optional[str]
    #: "joint", "factored", "shortlist" or "sentence-shortlist" where the name says so, else None: the family's default
    layer: Optional[str] = None
    source_rank: int = 0
    topk: int = 0
    #: -shortlistK, -sentenceK: --shortlist-size K; 0: the layer's default
    shortlist_size: int = 0
    #: -warmup / -centred: the options of ROW_OPTIONS
    named: Optional[str] = None
    #: -qbilinear: q's scores ``general`` (--inference-score); None: the prior's kind
    q_score: Optional[str] = None
    #: -qattn: q's network ``transformer`` (--inference-network); None: the BiLSTM
    q_network: Optional[str] = None

    @property
    def output_layer(self) -> str:
        """The LSTM's soft attention keeps the joint layer, its latent variants
        and every varattn_transformer row use the factored one (varattn_transformer's
        default, with a linear activation), unless the name says otherwise."""
        if self.variant is None:
            return f"fairseq's {'softmax' if self.transformer else 'lstm output'}"
        if self.layer is not None:
            return self.layer + (" (linear)" if self.transformer else "")
        if self.transformer:
            return "factored (linear)"
        return "joint" if self.variant == "soft" else "factored"

    @property
    def factored(self) -> bool:
        return self.output_layer.startswith("factored")

    def model_overrides(self, inference_network: str = "birnn") -> Dict[str, object]:
        """The model's args of this row (benchmarks build models from them in Python);
        ``-qattn`` overrides ``inference_network``."""
        out = variant_model_overrides(self.variant, self.q_network or inference_network, factored=self.factored)
        if self.layer in SHORTLIST_SUFFIXES.values():
            out["output_layer"] = self.layer
        if self.shortlist_size:
            out["shortlist_size"] = self.shortlist_size
        if self.source_rank:
            out["factored_source_rank"] = self.source_rank
        if self.topk:
            out["alignment_topk"] = self.topk
        if self.q_score:
            out["inference_score"] = self.q_score
        return out

    def options(self) -> List[str]:
        """The fairseq-train options of the variant and its layer, rank and top-k suffixes
        (no preset, no ``ROW_OPTIONS``)."""
        q_network = self.q_network or "birnn"
        if self.layer in SHORTLIST_SUFFIXES.values():
            out = variant_options(self.variant, q_network) + ["--output-layer", self.layer]
            out += ["--shortlist-size", str(self.shortlist_size)] if self.shortlist_size else []
        else:
            factored = None if self.layer is None and self.transformer else self.factored
            out = variant_options(self.variant, q_network, factored=factored)
        if self.source_rank:
            out += ["--factored-source-rank", str(self.source_rank)]
        if self.topk:
            out += ["--alignment-topk", str(self.topk)]
        if self.q_score:
            out += ["--inference-score", self.q_score]
        return out


def parse(name: str) -> Row:
    """The row a name names; KeyError for a name that is not a row (an unknown
    variant, or a suffix where it selects nothing: no silent fallback)."""
    if name in FAIRSEQ_MODELS:
        return Row(name, name == TRANSFORMER, None)
    transformer = name.startswith(TRANSFORMER + "-")
    rest = name[len(TRANSFORMER) + 1 :] if transformer else name
    found = {}
    while (m := _SUFFIX.search(rest)) and rest[: m.start()]:
        suffix = m.group(1)
        kind = (
            "layer"
            if suffix in ("joint", "factored") or suffix.rstrip("0123456789") in SHORTLIST_SUFFIXES
            else "named"
            if suffix in ("warmup", "centred")
            else "q"
            if suffix == "qbilinear"
            else "qnet"
            if suffix == "qattn"
            else suffix[0]
        )
        if kind in found:
            raise KeyError(f"{name!r}: two {kind} suffixes")
        found[kind] = suffix
        rest = rest[: m.start()]
    get_variant(rest)  # KeyError for an unknown variant
    layer, shortlist_size = found.get("layer"), 0
    stem = (layer or "").rstrip("0123456789")
    if stem in SHORTLIST_SUFFIXES:  # -shortlistK, -sentenceK
        layer, shortlist_size = SHORTLIST_SUFFIXES[stem], int(layer[len(stem) :] or 0)
    row = Row(
        name,
        transformer,
        rest,
        layer=layer,
        shortlist_size=shortlist_size,
        source_rank=int(found["r"][1:]) if "r" in found else 0,
        topk=int(found["t"][3:]) if "t" in found else 0,
        named=found.get("named"),
        q_score="general" if "q" in found else None,
        q_network="transformer" if "qnet" in found else None,
    )
    default = "factored" if transformer or rest != "soft" else "joint"
    if row.layer == default:
        raise KeyError(f"{name!r}: -{default} is this row family's default output layer; drop the suffix")
    if row.source_rank and not row.factored:
        raise KeyError(f"{name!r}: -r{row.source_rank} is a rank of the factored layer's source side")
    if row.topk and get_variant(rest).attention != "categorical":
        raise KeyError(f"{name!r}: -top{row.topk} applies to categorical attention")
    if row.q_score and not get_variant(rest).needs_q:
        raise KeyError(f"{name!r}: -qbilinear sets q's scores, and {rest} has no q")
    if row.q_network and not get_variant(rest).needs_q:
        raise KeyError(f"{name!r}: -qattn sets q's network, and {rest} has no q")
    if row.named and name not in ROW_OPTIONS:
        raise KeyError(f"{name!r}: -{row.named} is defined for {sorted(ROW_OPTIONS)} only")
    return row


def variant_name(name: str) -> str:
    """The variant of varattn_tools.variants a row trains (``transformer-`` kept)."""
    row = parse(name)
    if row.variant is None:
        return name
    return (TRANSFORMER + "-" if row.transformer else "") + row.variant


def output_layer(name: str) -> str:
    return parse(name).output_layer


def is_latent(name: str) -> bool:
    """Whether the row trains a latent alignment (not soft attention, not fairseq's model)."""
    row = parse(name)
    return row.variant is not None and row.variant != "soft"


def check(name: str) -> None:
    """KeyError unless ``name`` is a row of the converged comparison's kind."""
    if parse(name).variant is None and name != TRANSFORMER:
        raise KeyError(f"{name!r}: fairseq's own {name} is a benchmark row only")


def train_options(name: str) -> List[str]:
    """The row's fairseq-train options (without data, seed and save directory).
    Raises KeyError for a name that is not a row."""
    check(name)
    row = parse(name)
    if row.variant is None:
        return ["--arch", "transformer", *TRANSFORMER_PRESET, "--criterion", "cross_entropy"]
    if row.transformer:
        return ["--arch", "varattn_transformer", *TRANSFORMER_PRESET, *row_options(name)]
    return [*PRESET, *row_options(name)]


def row_options(name: str) -> List[str]:
    """The options a varattn row adds to its preset: the variant's, its
    suffixes', the LSTM's pinned q options and ``ROW_OPTIONS`` (ablate.py puts
    them on presets of its own).  A Transformer row keeps the architecture's
    own output layer and the criterions' own warm-up."""
    row = parse(name)
    if row.variant is None:
        raise KeyError(f"{name!r}: fairseq's own model has no varattn options")
    pinned = LSTM_Q_OPTIONS if get_variant(row.variant).needs_q and not row.transformer else []
    return [*row.options(), *pinned, *ROW_OPTIONS.get(name, [])]


def epoch_cap(name: str) -> int:
    """The --max-epoch a row trains under."""
    options = train_options(name)
    return int(options[options.index("--max-epoch") + 1])

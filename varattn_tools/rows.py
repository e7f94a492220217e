"""Named experiment rows: the one naming of what a results table's row trained.

A row name is ``[transformer-]VARIANT[-SUFFIX]``: ``transformer`` alone is
fairseq's own Transformer; ``transformer-VARIANT`` is ``varattn_transformer``
with a variant of ``varattn_tools/variants.py`` and the Transformer preset;
``VARIANT`` alone is ``varattn_lstm`` with the LSTM preset.  A suffix selects
options within the variant: ``-factored`` (soft attention with the factored
output layer), ``-warmup`` and ``-centred`` (rws with ``ROW_OPTIONS``).

    varattn-options --row transformer-elbo-enum   # a row's fairseq-train options

The presets are the converged comparison's (examples/translation/converge.py):
early stopping on valid PPL with the same patience for every row.
"""

from typing import List

from .variants import get as get_variant
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
# name suffixes that select a variant's options, not another variant
SUFFIXES = ("-factored", "-warmup", "-centred")
TRANSFORMER = "transformer"


def variant_name(name: str) -> str:
    """The variant of varattn_tools.variants a row trains (``transformer-`` kept)."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _split(name: str):
    """(whether it is a varattn_transformer row, the name without ``transformer-``)."""
    transformer = name.startswith(TRANSFORMER + "-")
    return transformer, name[len(TRANSFORMER) + 1 :] if transformer else name


def output_layer(name: str) -> str:
    """The LSTM's soft attention keeps the joint layer unless the name ends in
    -factored; its latent variants and every varattn_transformer row use the
    factored one (varattn_transformer's default, with a linear activation)."""
    if name == TRANSFORMER:
        return "fairseq's softmax"
    if name.startswith(TRANSFORMER + "-"):
        return "factored (linear)"
    if name.endswith("-factored"):
        return "factored"
    return "joint" if name.endswith("soft") else "factored"


def is_latent(name: str) -> bool:
    """Whether the row trains a latent alignment (not soft attention, not fairseq's model)."""
    return name != TRANSFORMER and variant_name(_split(name)[1]) != "soft"


def check(name: str) -> None:
    """KeyError unless ``name`` is a row: a known variant, and a suffix only
    where it selects something (no silent fallback to the plain variant)."""
    if name == TRANSFORMER:
        return
    transformer, base = _split(name)
    variant = variant_name(base)
    get_variant(variant)
    suffix = base[len(variant) :]
    if suffix == "-factored" and (transformer or variant != "soft"):
        raise KeyError(f"{name!r}: -factored selects the factored layer for the LSTM's soft attention only")
    if suffix in ("-warmup", "-centred") and name not in ROW_OPTIONS:
        raise KeyError(f"{name!r}: {suffix} is defined for {sorted(ROW_OPTIONS)} only")


def train_options(name: str) -> List[str]:
    """The row's fairseq-train options (without data, seed and save directory).
    Raises KeyError for a name that is not a row."""
    check(name)
    if name == TRANSFORMER:
        return ["--arch", "transformer", *TRANSFORMER_PRESET, "--criterion", "cross_entropy"]
    if name.startswith(TRANSFORMER + "-"):
        # the architecture's own output layer and the criterions' own warm-up
        return [
            "--arch",
            "varattn_transformer",
            *TRANSFORMER_PRESET,
            *variant_options(variant_name(_split(name)[1])),
            *ROW_OPTIONS.get(name, []),
        ]
    variant = variant_name(name)
    pinned = LSTM_Q_OPTIONS if get_variant(variant).needs_q else []
    return [
        *PRESET,
        *variant_options(variant, factored=output_layer(name) == "factored"),
        *pinned,
        *ROW_OPTIONS.get(name, []),
    ]


def epoch_cap(name: str) -> int:
    """The --max-epoch a row trains under."""
    options = train_options(name)
    return int(options[options.index("--max-epoch") + 1])

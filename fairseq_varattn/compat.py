"""What fairseq 0.12 needs to run quietly and safely on torch >= 2.6.

Versions: the plugin runs on the fairseq a user already has, from PyPI's
``ve-fairseq`` wheel (the pinned default) or built from fairseq's main
branch; ``check_fairseq`` stops at import with what to install when fairseq
is missing or older than ``MIN_FAIRSEQ``.

Checkpoints: torch >= 2.6 loads with ``weights_only=True`` and refuses to
unpickle anything not allow-listed.  fairseq stores the legacy model config
as an ``argparse.Namespace`` inside ``cfg``; that is the only non-builtin
class found when saving and reloading checkpoints of every ``varattn_*``
architecture and criterion (tests/test_cli.py,
``test_checkpoint_loads_with_weights_only_and_needs_the_safe_globals``,
checks the list is necessary and enough).  We never fall back to
``weights_only=False``: that would execute arbitrary pickled code from a
checkpoint file.

Warnings: fairseq's train step enters ``torch.cuda.amp.autocast(...)``, which
torch deprecates with a FutureWarning on every run, CPU runs included, and
fairseq's Transformer layers pass a boolean padding mask with a float
attention mask, which torch warns about on every forward.  Both are
fairseq's calls, not the user's, so exactly those messages are filtered;
every other warning is left alone.

Dropped sentences: fairseq's ``batch_by_size`` drops the last batch of
every split when its size is not a multiple of
``--required-batch-size-multiple`` (default 8; fairseq issue #5036).  The
sorted batches put the longest sentences last, so validation perplexity
and BLEU silently leave out the hardest sentences.  ``fairseq-generate``
and ``fairseq-interactive`` hand their config to the model before building
batches, so the latent models set the multiple to 1 there (and say so);
training and ``fairseq-validate`` cannot be reached from a plugin, so the
models warn when they are built with a multiple above 1.
"""

import argparse
import logging
import warnings

import torch
from packaging.version import InvalidVersion, Version

# fairseq's main branch reports 0.12.2 (PyPI's 0.12.2 release does not build on
# Python 3.11); ve-fairseq, a wheel of that branch, reports 0.12.3
MIN_FAIRSEQ = "0.12.2"
INSTALL_HINT = (
    "install the tested build with `pip install 'fairseq-varattn[fairseq]'` "
    "(ve-fairseq==0.12.3, imports as fairseq), or fairseq >= {} from its main branch"
)
SAFE_GLOBALS = (argparse.Namespace,)
FAIRSEQ_AMP_DEPRECATION = r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"
FAIRSEQ_MASK_TYPES = r"Support for mismatched key_padding_mask and attn_mask is deprecated"


def check_fairseq(version=None) -> None:
    """Raise ImportError, saying what to install, unless fairseq >= MIN_FAIRSEQ is importable."""
    if version is None:
        try:
            import fairseq
        except ImportError as e:
            raise ImportError(
                "fairseq-varattn needs fairseq, which is not installed: " + INSTALL_HINT.format(MIN_FAIRSEQ)
            ) from e
        version = getattr(fairseq, "__version__", "0")
    try:
        too_old = Version(version) < Version(MIN_FAIRSEQ)
    except InvalidVersion:
        too_old = True
    if too_old:
        raise ImportError(
            f"fairseq-varattn needs fairseq >= {MIN_FAIRSEQ}, found {version}: " + INSTALL_HINT.format(MIN_FAIRSEQ)
        )


def install():
    check_fairseq()
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
    warnings.filterwarnings("ignore", message=FAIRSEQ_AMP_DEPRECATION, category=FutureWarning)
    warnings.filterwarnings("ignore", message=FAIRSEQ_MASK_TYPES, category=UserWarning)


logger = logging.getLogger(__name__)
LAST_BATCH_DROPPED = (
    "fairseq drops the last batch of every split unless its size is a multiple of "
    "--required-batch-size-multiple (now {}; fairseq issue #5036): validation and test scores "
    "would leave out the longest sentences. Pass --required-batch-size-multiple 1."
)


def warn_if_sentences_dropped(args) -> None:
    """At model build (training, validation): a warning, since the batches are built elsewhere."""
    multiple = getattr(args, "required_batch_size_multiple", 1) or 1
    if multiple > 1:
        logger.warning(LAST_BATCH_DROPPED.format(multiple))


def score_every_sentence(cfg) -> None:
    """Called with fairseq-generate's config before it builds batches: translate every sentence."""
    dataset = getattr(cfg, "dataset", None)
    multiple = getattr(dataset, "required_batch_size_multiple", 1) if dataset is not None else 1
    if multiple and multiple > 1:
        logger.info(
            f"--required-batch-size-multiple {multiple} -> 1, so that no sentence is left out "
            "(fairseq drops a last batch of another size, fairseq issue #5036)"
        )
        dataset.required_batch_size_multiple = 1

"""What fairseq 0.12 needs to run quietly and safely on torch >= 2.6.

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
"""

import argparse
import warnings

import torch

SAFE_GLOBALS = (argparse.Namespace,)
FAIRSEQ_AMP_DEPRECATION = r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated"
FAIRSEQ_MASK_TYPES = r"Support for mismatched key_padding_mask and attn_mask is deprecated"


def install():
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))
    warnings.filterwarnings("ignore", message=FAIRSEQ_AMP_DEPRECATION, category=FutureWarning)
    warnings.filterwarnings("ignore", message=FAIRSEQ_MASK_TYPES, category=UserWarning)

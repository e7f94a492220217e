"""Classes fairseq checkpoints contain, for torch's ``weights_only=True`` loader.

torch >= 2.6 refuses to unpickle anything not allow-listed.  fairseq stores
the legacy model config as an ``argparse.Namespace`` inside ``cfg``; that is
the only non-builtin class found when saving and reloading checkpoints of
every ``varattn_*`` architecture and criterion (see
tests/test_checkpoints.py, which checks the list is necessary and enough).
We never fall back to ``weights_only=False``: that would execute arbitrary
pickled code from a checkpoint file.
"""

import argparse

import torch

SAFE_GLOBALS = (argparse.Namespace,)


def register_safe_globals():
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))

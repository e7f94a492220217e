"""A translation data directory that is missing or not prepared stops the
command line with the path and the command that prepares it.

fairseq's translation task reads ``DATA/dict.LANG.txt`` with a raw traceback
(``FileNotFoundError`` from ``os.listdir``, or "Could not infer language
pair").  The earliest plugin code that sees ``DATA`` is the architecture
function fairseq applies to the parsed arguments (``options.py``), so the
architectures call ``check_data_dir`` there.  Only parsed command lines are
checked (an ``argparse.Namespace`` with ``task == "translation"``): a model
rebuilt from a checkpoint gets an OmegaConf config whose ``data`` may name a
directory of the machine it was trained on.
"""

import argparse
import glob
import os

PREPARE = (
    "prepare raw parallel text (SPLIT.LANG files) with `varattn-prepare --raw-dir {raw} --out OUT` and pass OUT/bin"
)


def problem(data: str, source_lang=None, target_lang=None):
    """What is wrong with a translation data directory, or None."""
    path = data.split(os.pathsep)[0]
    if not os.path.isdir(path):
        return f"data directory {path!r} does not exist: {PREPARE.format(raw='RAW')}"
    dicts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "dict.*.txt")))
    if not dicts:
        if glob.glob(os.path.join(path, "bin", "dict.*.txt")):
            return f"{path!r} has no dict.LANG.txt; its subdirectory {os.path.join(path, 'bin')!r} does"
        return (
            f"{path!r} has no fairseq dictionaries (dict.LANG.txt), so it is not a prepared data directory: "
            f"{PREPARE.format(raw=path)}"
        )
    missing = [f"dict.{lang}.txt" for lang in (source_lang, target_lang) if lang and f"dict.{lang}.txt" not in dicts]
    if missing:
        return f"{path!r} has {', '.join(dicts)} but not {', '.join(missing)}: check --source-lang/--target-lang"
    return None


def check_data_dir(args) -> None:
    """Exit as argparse does (status 1, one line) when a parsed command line's DATA cannot be read."""
    if not isinstance(args, argparse.Namespace) or getattr(args, "task", None) != "translation":
        return
    data = getattr(args, "data", None)
    if not isinstance(data, str) or not data:
        return
    message = problem(data, getattr(args, "source_lang", None), getattr(args, "target_lang", None))
    if message is not None:
        raise SystemExit(f"error: {message}")

"""Run fairseq's command lines in forked children of a process that has
already imported fairseq.

Importing fairseq takes 5-8 s on these CPUs (it imports every task, model and
criterion, scikit-learn and SciPy among them), and the suite runs fairseq's
command lines about 75 times: most of its time went to imports. A
multiprocessing forkserver imports fairseq once per pytest worker; every
command still runs in a process of its own, forked from that server, so no
state is shared between commands or with the test process.

What a fresh ``python -m MODULE`` does at start that a fork cannot redo is
redone here: the environment and working directory are set, stdout and
stderr go to files, the root logger is put back to what that module would
have configured (see ``_configure_logging``), and torch's thread count is set
from OMP_NUM_THREADS. ``tests/test_cli.py`` checks that a forked run and a
fresh interpreter print the same log lines and start in the same state.
``VARATTN_TEST_FORK=0`` turns all of this off.
"""

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import tempfile
import traceback

# the commands worth forking: the ones the suite runs most (the rest start
# fresh interpreters, as before)
FORKED = ("fairseq_cli.train", "fairseq_cli.validate", "fairseq_cli.generate")
# fairseq_cli.train configures logging (stdout, INFO) at its top, before it
# imports fairseq; validate and generate import fairseq first, and importing
# fairseq calls logging.basicConfig(level=logging.DEBUG) (its
# wav2vec2_classification module does), which makes theirs a no-op
CONFIGURES_LOGGING_FIRST = ("fairseq_cli.train",)
PRELOAD = [
    "fairseq",
    "fairseq.options",
    "fairseq.trainer",
    "fairseq.checkpoint_utils",
    "fairseq.tasks.translation",
    "fairseq.sequence_generator",
    "fairseq.scoring.bleu",
    "sacrebleu",
    "sentencepiece",
    "forkrun",
]
# imported last in the server: what importing fairseq left (it sets "fork")
START_METHOD_AFTER_PRELOAD = multiprocessing.get_start_method(allow_none=True)

_context = None


def enabled(module):
    return module in FORKED and os.environ.get("VARATTN_TEST_FORK", "1") != "0"


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _configure_logging(module):
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    if module not in CONFIGURES_LOGGING_FIRST:
        logging.basicConfig(level=logging.DEBUG)  # what importing fairseq does in a fresh process


def _child(module, argv, env, cwd, out_path, err_path):
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # PYTHONUNBUFFERED=1
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    # a child of the forkserver inherits the server's start method and its
    # record of the server: a DataLoader would hand its workers to that server
    # (pickling every tensor's file descriptor) instead of forking them
    multiprocessing.set_start_method(START_METHOD_AFTER_PRELOAD, force=True)
    multiprocessing.forkserver._forkserver.__init__()
    import torch

    if "OMP_NUM_THREADS" in env:  # read once, when the server loaded torch
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    _configure_logging(module)
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: B902  (what an uncaught exception does to a fresh interpreter)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(module, argv, env, cwd, timeout):
    """``python -m MODULE ARGV`` as a forked child; returns a CompletedProcess."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for path in (out_path, err_path):
            open(path, "w").close()
        proc = _server().Process(target=_child, args=(module, argv, env, cwd, out_path, err_path))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired([module, *argv], timeout)
        with open(out_path, encoding="utf-8", errors="replace") as f:
            stdout = f.read()
        with open(err_path, encoding="utf-8", errors="replace") as f:
            stderr = f.read()
    return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], proc.exitcode, stdout, stderr)

"""Prints the process state forkrun.py must set up as a fresh interpreter
would (tests/test_cli.py runs it both ways and compares)."""

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import sys

import fairseq  # noqa: F401  (it configures logging when imported)
import torch

if __name__ == "__main__":
    root = logging.getLogger()
    print("argv", sys.argv[1:])
    print("cwd", os.getcwd())
    print("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"), "torch threads", torch.get_num_threads())
    print("start method", multiprocessing.get_start_method(allow_none=True))
    print("forkserver running", multiprocessing.forkserver._forkserver._forkserver_address is not None)
    print("daemon", multiprocessing.current_process().daemon)
    streams = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    print("logging", root.level, [(type(h).__name__, streams.get(id(h.stream))) for h in root.handlers])
    print("to stderr", file=sys.stderr)
    sys.exit(3)

"""Helpers of the experiment scripts (examples/*/): run a logged command,
read fairseq's log lines, summarise seeds."""

import re
import statistics
import subprocess


def run(cmd, log_path, env, cwd=None, append=False):
    """Run ``cmd`` (in ``cwd``), output to ``log_path``; its text, or an error with the tail."""
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    text = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log_path}:\n{text[-3000:]}")
    return text


def last_float(pattern, text, what, log_path):
    found = re.findall(pattern, text)
    if not found:
        raise RuntimeError(f"no {what} in {log_path}")
    return float(found[-1])


def read_nll(subset, text, log_path):
    """The last validation nll (bits) of ``subset``: ``nll_loss`` of latent
    criterions, ``loss`` of fairseq's cross_entropy (which has no nll_loss)."""
    lines = re.findall(rf"on '{subset}' subset \|.*", text)
    if not lines:
        raise RuntimeError(f"no {subset} validation in {log_path}")
    found = re.search(r" nll_loss ([0-9.]+)", lines[-1]) or re.search(r"\| loss ([0-9.]+)", lines[-1])
    if not found:
        raise RuntimeError(f"no {subset} nll in {log_path}")
    return float(found.group(1))


def mean_spread(values, fmt):
    values = [v for v in values if v != "" and v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

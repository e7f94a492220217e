"""Helpers of the experiment scripts (examples/*/): run a logged command,
read fairseq's log lines, summarise seeds."""

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from varattn_tools import fairseq_log

# glibc serves every allocation over 32 MB (its largest mmap threshold) with
# a fresh mmap and unmaps it on free, so each large temporary -- a (B, N, V)
# logit tensor of a 3000-token batch is 80 MB -- is page-faulted in anew at
# every use.  Keeping freed memory in the heap made a training step of the
# converged comparison's preset 10-18% faster (soft, marginal, elbo-enum), for
# 7-27% more peak memory (docs/design.md, "Speed on CPUs").  A value the user
# exported wins.
HEAP_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2000000000"}


# how the scripts run fairseq-train: data loaded in the main process, and
# logs as JSON (read back by varattn_tools.fairseq_log) every 100 updates
TRAIN_LOGGING = ["--num-workers", "0", "--log-format", "json", "--log-interval", "100"]


def resume_train_command(data, user_dir, options, seed, work):
    """fairseq-train of ``options`` into ``work`` through
    varattn_tools.resume_train, whose --patience counter survives a resume
    (read back from ``work/train.log``, where the run logs)."""
    return [
        sys.executable,
        "-m",
        "varattn_tools.resume_train",
        "--log",
        os.path.join(work, "train.log"),
        "--",
        data,
        "--user-dir",
        user_dir,
        *options,
        "--seed",
        str(seed),
        *TRAIN_LOGGING,
        "--save-dir",
        work,
    ]


def cpu_env(threads=None):
    """The environment for the scripts' fairseq processes: unbuffered output,
    ``threads`` OpenMP threads if given, and freed memory kept in the heap."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key, value in HEAP_MALLOC.items():
        env.setdefault(key, value)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run(cmd, log_path, env, cwd=None, append=False):
    """Run ``cmd`` (in ``cwd``), output to ``log_path``; its text, or an error with the tail."""
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    text = open(log_path).read()
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\nsee {log_path}:\n{text[-3000:]}")
    return text


def prepare_multi30k(out, log_path, env, vocab_size=None, train_limit=0):
    """The shipped Multi30k prepared into ``out`` (``varattn_tools.prepare``;
    only its first ``train_limit`` training pairs if given) unless ``out/bin``
    already has its dictionaries; returns ``out/bin``."""
    data = os.path.join(out, "bin")
    if os.path.isfile(os.path.join(data, "dict.en.txt")):
        return data
    what = f"sentencepiece {vocab_size} joint vocabulary" if vocab_size else "varattn-prepare's defaults"
    if train_limit:
        what += f", the first {train_limit} training pairs"
    print(f"== preparing data/multi30k -> {out} ({what})", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    raw = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "multi30k")
    cmd = [sys.executable, "-m", "varattn_tools.prepare", "--raw-dir", raw, "--out", out]
    cmd += ["--vocab-size", str(vocab_size)] if vocab_size else []
    run(cmd + (["--train-limit", str(train_limit)] if train_limit else []), log_path, env)
    return data


def git_commit(repo, mark_changes=False) -> str:
    """The short commit a result was made at ("unknown" outside git); with
    ``mark_changes``, "+changes" when tracked files differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if (
        mark_changes
        and subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    ):
        sha += "+changes"
    return sha or "unknown"


def last_float(pattern, text, what, log_path):
    found = re.findall(pattern, text)
    if not found:
        raise RuntimeError(f"no {what} in {log_path}")
    return float(found[-1])


def read_nll(subset, text, log_path):
    """The last validation nll (bits) of ``subset``: ``nll_loss`` of latent
    criterions, ``loss`` of fairseq's cross_entropy (which has no nll_loss)."""
    found = fairseq_log.last(text, subset)
    if found is None:
        raise RuntimeError(f"no {subset} validation in {log_path}")
    nll = found.values.get("nll_loss", found.values.get("loss"))
    if not isinstance(nll, float):
        raise RuntimeError(f"no {subset} nll in {log_path}")
    return nll


def train_wps(text, log_path):
    """fairseq's words/s of the last epoch a training log finished."""
    found = fairseq_log.last(text, "train")
    if found is None or not isinstance(found.values.get("wps"), float):
        raise RuntimeError(f"no finished epoch's wps in {log_path}")
    return found.values["wps"]


def mean_spread(values, fmt):
    values = [v for v in values if v != "" and v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def validate_command(data, user_dir, checkpoint, subset, max_tokens, seed):
    """``fairseq-validate`` of a translation checkpoint on every sentence of
    ``subset``: fairseq otherwise drops a last batch whose size is not a
    multiple of 8 (fairseq issue #5036), and its parser defaults --task to
    language_modeling, so the task is named."""
    return [
        sys.executable,
        "-m",
        "fairseq_cli.validate",
        data,
        "--user-dir",
        user_dir,
        "--required-batch-size-multiple",
        "1",
        "--task",
        "translation",
        "--path",
        checkpoint,
        "--valid-subset",
        subset,
        "--max-tokens",
        str(max_tokens),
        "--num-workers",
        "0",
        "--seed",
        str(seed),
        "--log-format",
        "json",
    ]


def median_ms(fn, repeats, warmup=2) -> float:
    """Median wall-clock milliseconds of ``repeats`` calls of ``fn``, after
    ``warmup`` untimed calls (the benchmarks' timing of one piece of work)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def machine() -> str:
    """The machine a result was measured on, as every result file names it."""
    return f"{platform.machine()} x{os.cpu_count()} CPU cores"


def write_result(path, script, argv, fields, repo):
    """A benchmark's result JSON at ``path``: the command that made it
    (``python SCRIPT ARGV``), the commit (marked when tracked files differ),
    the date and the machine, then ``fields``."""
    record = {
        "command": " ".join(["python", script, *argv]),
        "commit": git_commit(repo, mark_changes=True),
        "date": str(datetime.date.today()),
        "machine": machine(),
        **fields,
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def append_markdown(path, lines):
    """Append a benchmark's table to ``path`` (benchmarks/results.md) under the
    command line that made it, with the date and the machine."""
    with open(path, "a") as f:
        f.write(
            f"`python benchmarks/{' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}`, "
            f"{datetime.date.today()}, {machine()}:\n\n"
        )
        f.write("\n".join(lines).lstrip("\n") + "\n\n")

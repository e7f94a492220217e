"""Screen model variants on a quarter of Multi30k, each trained to convergence.

    python examples/translation/screen.py run --only marginal,marginal-shortlist,marginal-r32
    python examples/translation/screen.py table        # results/screen.md from finished runs

A converged row of ``converge.py`` costs 2-7 hours of one core, more than a
working session on these machines; a variant of the output layer (a faster
one, say) needs its quality checked before it gets one.  The first epochs do
not tell: the shortlist layer was ahead of the factored one for its first
eight epochs on the full corpus and finished far behind it (test PPL 6.21
against 4.78).  This trains the same rows (``varattn_tools/rows.py``, the
converged comparison's presets and early stopping) on the first
``TRAIN_PAIRS`` training pairs with their own sentencepiece vocabulary, so
that each converges in well under an hour of one core, and reports valid and
test PPL (fairseq-validate on every sentence of the best checkpoint, the
exact marginal for latent rows).  A screen is only worth what its agreement
with full-corpus results is: the table sets each row beside its converged
full-corpus result where one exists.

Runs resume from their checkpoint_last.pt like converge.py's; results go to
``results/screen/NAME-seedS.json`` with their commit and settings.
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import converge_eval  # noqa: E402
import converge_plan  # noqa: E402
from converge_logs import needs_training, parse_training, training_status  # noqa: E402
from converge_tables import load_results  # noqa: E402

from varattn_tools import rows  # noqa: E402
from varattn_tools.experiments import (  # noqa: E402
    cpu_env,
    git_commit,
    machine,
    mean_spread,
    prepare_multi30k,
    read_nll,
    run,
    validate_command,
)
from varattn_tools.resume_train import training_seconds  # noqa: E402
from varattn_tools.rows import MAX_EPOCH  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "screen")
TABLE = os.path.join(HERE, "results", "screen.md")
# a quarter of Multi30k's 29,000 training pairs
TRAIN_PAIRS = 7250


def result_path(name, seed):
    return os.path.join(RESULTS, f"{name}-seed{seed}.json")


def alignment_scores(name, seed, opts, env) -> dict:
    """AER of the best checkpoint's attention on the hand-aligned test
    sentences (``converge_eval.alignment_scores``: the prior and exact
    posterior of a latent row, soft attention's weights otherwise)."""
    work = converge_plan.work_dir(opts, name, seed)
    ckpt = os.path.join(work, "checkpoint_best.pt")
    return converge_eval.alignment_scores(opts.data, ckpt, work, env, rows.is_latent(name))


def train_and_evaluate(name, seed, opts, env):
    done = result_path(name, seed)
    if os.path.isfile(done):
        row = json.load(open(done))
        if "aer_sentences" not in row:  # a result from before screens scored alignments
            row.update(alignment_scores(name, seed, opts, env))
            with open(done, "w") as f:
                json.dump(row, f, indent=1)
        print(f"== {name} seed {seed}: finished ({done})", flush=True)
        return row
    work = converge_plan.work_dir(opts, name, seed)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "train.log")
    text = open(log).read() if os.path.isfile(log) else ""
    cmd, train_cmd = converge_plan.train_command(opts.data, name, seed, work)
    start = time.time()
    if not text or needs_training(text, MAX_EPOCH):
        print(f"== {name} seed {seed}: training in {work}", flush=True)
        text = run(cmd, log, env, append=True)
    test_log = os.path.join(work, "test.log")
    test_text = run(
        validate_command(
            opts.data, converge_plan.USER_DIR, os.path.join(work, "checkpoint_best.pt"), "test", 3000, seed
        ),
        test_log,
        env,
    )
    row = {
        "variant": name,
        "seed": seed,
        "train_pairs": TRAIN_PAIRS,
        "train_cmd": train_cmd,
        **parse_training(text),
        "stopped_by": training_status(text),
        "train_seconds": training_seconds(text),
        "test_ppl": 2 ** read_nll("test", test_text, test_log),
        **alignment_scores(name, seed, opts, env),
        "commit": git_commit(converge_plan.REPO),
        "date": str(datetime.date.today()),
        "machine": machine(),
        "threads": opts.threads,
        "wall_s": time.time() - start,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(done, "w") as f:
        json.dump(row, f, indent=1)
    print(f"== {name} seed {seed}: test PPL {row['test_ppl']:.2f} ({row['epochs_run']} epochs)", flush=True)
    return row


def full_corpus(name, key="test_ppl"):
    """A row's converged full-corpus results under ``key`` (converge.py's)."""
    found = load_results(converge_plan.RESULTS)
    return [r[key] for r in found if r["variant"] == name and r.get(key) is not None]


def aer_key(name):
    """The AER a row is judged by: the exact posterior's for a latent row, soft attention's else."""
    return "aer_posterior_exact" if rows.is_latent(name) else "aer_soft"


def table():
    found = load_results(RESULTS)
    if not found:
        return "No screen has finished yet.\n"
    lines = [
        "| row | seeds | valid PPL | test PPL | AER | best epoch | epochs run | minutes "
        "| full-corpus test PPL | full-corpus AER |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["variant"] for r in found):
        runs = [r for r in found if r["variant"] == name]
        cells = [
            ",".join(str(r["seed"]) for r in runs),
            mean_spread([r["valid_ppl_training"] for r in runs], ".2f"),
            mean_spread([r["test_ppl"] for r in runs], ".2f"),
            mean_spread([r.get(aer_key(name)) for r in runs], ".3f"),
            mean_spread([r["best_epoch"] for r in runs], ".0f"),
            mean_spread([r["epochs_run"] for r in runs], ".0f"),
            mean_spread([r["train_seconds"] / 60 for r in runs], ".0f"),
            mean_spread(full_corpus(name), ".2f"),
            mean_spread(full_corpus(name, aer_key(name)), ".3f"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    commits = sorted({r["commit"] for r in found})
    head = (
        f"`python examples/translation/screen.py run`, {min(r['date'] for r in found)}, {found[0]['machine']}, "
        f"commits {', '.join(commits)}: the first {found[0]['train_pairs']} training pairs of Multi30k De-En "
        "with their own 8000-piece sentencepiece vocabulary, converge.py's presets and early stopping; "
        "valid PPL as logged in training (fairseq's batches), test PPL by fairseq-validate on every "
        "test_2016_flickr sentence, the exact marginal for latent rows; AER on the hand-aligned test "
        "sentences (examples/translation/gold), of the exact posterior for latent rows and of soft "
        "attention otherwise; minutes: training time "
        "summed over resumes, one thread, with another run on the second core; full-corpus test PPL: "
        "the same row converged on all of Multi30k (converge.py), where it has run.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--only", default="marginal,marginal-shortlist", help="rows, comma-separated, run in order")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=os.path.join("runs", "screen"))
    parser.add_argument("--data-root", default=os.path.join("runs", "multi30k-quarter"))
    opts = parser.parse_args(argv)
    if opts.command == "table":
        text = table()
        with open(TABLE, "w") as f:
            f.write(text)
        print(text, end="")
        return
    env = cpu_env(threads=opts.threads)
    opts.data = prepare_multi30k(
        opts.data_root, os.path.join(opts.data_root, "prepare.log"), env, train_limit=TRAIN_PAIRS
    )
    for name in opts.only.split(","):
        try:
            train_and_evaluate(name, opts.seed, opts, env)
        except RuntimeError as err:  # one failed run must not stop the others
            print(f"== {name} seed {opts.seed} FAILED: {err}", flush=True)


if __name__ == "__main__":
    main()

"""The paper's comparison on converged models: Multi30k De-En, 2 CPU cores.

    python examples/translation/converge.py run                  # the whole plan, 2 jobs at a time
    python examples/translation/converge.py run --only soft:1,marginal:1
    python examples/translation/converge.py run --only marginal:2 --jobs 1 --threads 2
    python examples/translation/converge.py table                # results/converge.md from finished runs
    python examples/translation/converge.py status               # where each run stands
    python examples/translation/converge.py curves               # results/converge-curves.png
    python examples/translation/converge.py diagnose --only marginal:1   # its validation diagnostics again
    python scripts/readme_results.py                             # ... into the READMEs

Every variant (soft, marginal, hard-enum, hard-reinforce, elbo-enum,
elbo-reinforce, elbo-gumbel, dirichlet, rws) trains with the same preset
until validation perplexity has not improved for ``PATIENCE`` epochs
(fairseq's ``--patience`` on ``ppl``: the exact marginal for categorical
models, importance-sampled for Dirichlet), with the learning rate halved
after every epoch without improvement.  Soft attention uses the joint output
layer (the paper's); every latent variant uses ``--output-layer factored``,
without which exact enumeration is about 20 times slower on a CPU and these
runs would not fit; ``soft-factored`` is soft attention with the factored
layer, the like-for-like baseline.  ``PLAN`` gives 4 seeds to soft,
marginal, elbo-enum and elbo-reinforce (the fourth keeps its translations
for paired BLEU tests), 3 to soft-factored, 2 to hard-enum and 1 to the
others.

For the best checkpoint of each run it records: test PPL (``fairseq-validate``
with the run's own criterion), sacreBLEU of beam-5 translations against the
raw test references (with its signature), valid KL, prior / q / exact
posterior entropies, AER of soft attention and of the argmax of the prior,
of q and of the exact posterior p(z_j | x, y_<=j) on the hand-aligned test
sentences, training tokens/s and the epoch of the best checkpoint.
``converge.py align`` scores the alignments of finished runs again, and
``converge.py diagnose`` measures their validation diagnostics again.

``--family transformer`` compares fairseq's ``transformer`` with
``varattn_transformer`` soft, marginal, elbo-enum and elbo-reinforce of the
same size and its own defaults, under the same early stopping.

Runs are resumable: an interrupted run restarts from its ``checkpoint_last.pt``
(fairseq's own resume, through ``varattn_tools.resume_train`` so that the
patience counter survives it), and a finished run leaves its result in
``examples/translation/results/converge/NAME-seedS.json`` (committed to the
repository), which later invocations reuse instead of training again.
"""

import argparse
import concurrent.futures
import datetime
import fcntl
import json
import os
import sys
import time

# converge.py is the command; its jobs live beside it: the plan and paths
# (converge_plan), reading fairseq's logs (converge_logs), evaluating a
# checkpoint (converge_eval) and the tables and figures (converge_tables).
# Their functions are re-exported here for budget.py and the tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import converge_eval as evaluation  # noqa: E402, F401  (tests patch its run)
import converge_plan as plan  # noqa: E402
from converge_eval import alignment_scores, commit, evaluate, sacrebleu_score  # noqa: E402, F401
from converge_logs import (  # noqa: E402, F401
    minutes_per_epoch,
    needs_training,
    parse_training,
    prior_sharpness,
    training_status,
    validation_curve,
    validation_diagnostics,
)
from converge_plan import HEADLINES, NOTES, PLAN, PLANS, TABLES, ordered_plan, result_path, work_dir  # noqa: E402
from converge_tables import (  # noqa: E402, F401
    DIRICHLET_NOTE,
    aer_cell,
    bleu_p_values,
    curve_colours,
    headline,
    p_cell,
    plot_curves,
    run_notes,
    table,
)

from varattn_tools.experiments import cpu_env, machine, prepare_multi30k, run  # noqa: E402
from varattn_tools.fairseq_log import validations  # noqa: E402
from varattn_tools.resume_train import invocations, training_seconds  # noqa: E402
from varattn_tools.rows import MAX_EPOCH, PATIENCE, epoch_cap, is_latent, output_layer, train_options  # noqa: E402, F401


def run_state(name, seed, opts):
    """(its finished result or None, its training log's text, whether ``run``
    has work to do): a finished result is reused unless the log here shows a
    run to resume (one stopped at a lower epoch cap, with its checkpoint_last.pt)."""
    done, work = result_path(name, seed), work_dir(opts, name, seed)
    log = os.path.join(work, "train.log")
    text = open(log).read() if os.path.isfile(log) else ""
    previous = json.load(open(done)) if os.path.isfile(done) else None
    resumable = bool(text) and os.path.isfile(os.path.join(work, "checkpoint_last.pt"))
    return previous, text, previous is None or (resumable and needs_training(text, epoch_cap(name)))


def run_one(name, seed, opts, env):
    """``train_and_evaluate`` under the run's lock: a run that another
    process (a second ``converge.py run``) is training is skipped (None)."""
    work = work_dir(opts, name, seed)
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, ".lock"), "w") as lock:
        try:  # released by the kernel when its process ends, however it ends
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"== {name} seed {seed}: another process is training it in {work}; skipped", flush=True)
            return None
        return train_and_evaluate(name, seed, opts, env)


def train_and_evaluate(name, seed, opts, env):
    """Train (or resume) and evaluate one run; a finished result is reused.

    A result whose training stopped at a lower epoch cap than its
    ``epoch_cap`` resumes from its checkpoint_last.pt when its work
    directory is here (else it is kept, and said so).  fairseq does not save early stopping's
    counter, so a resumed run counts its patience from the first epoch after
    the resume: it may train an epoch or two more than an uninterrupted one."""
    done, work = result_path(name, seed), work_dir(opts, name, seed)
    log = os.path.join(work, "train.log")
    previous, text, pending = run_state(name, seed, opts)
    cap = epoch_cap(name)
    if not pending:
        if previous.get("stopped_by", "cap") == "cap" and previous["epochs_run"] < cap:
            print(
                f"== {name} seed {seed}: stopped at a {previous['epochs_run']}-epoch cap; kept as is "
                f"(no checkpoint_last.pt in {work} to resume under the {cap}-epoch cap)",
                flush=True,
            )
        return previous
    os.makedirs(work, exist_ok=True)
    cmd, train_cmd = plan.train_command(opts.data, name, seed, work)
    start = time.time()
    # early stopping is not saved in checkpoints: a run stopped by patience is not resumed
    resumed_from = max(validations(text), default=0)
    # tok/s depends on the threads training had: known only if it trains here (a result
    # that exists and has nothing to resume returned above, so nothing else recorded it)
    threads = None
    if needs_training(text, cap):
        print(f"== {name} seed {seed}: training in {work} (resumes from checkpoint_last.pt)", flush=True)
        text = run(cmd, log, env, append=True)
        threads = opts.threads
    row = {
        "variant": name,
        "seed": seed,
        "output_layer": output_layer(name),
        "train_cmd": train_cmd,
        **parse_training(text),
        "stopped_by": training_status(text),
        "max_epoch": cap,
        # summed over the log's invocations: a resume's gap does not count
        "train_seconds": training_seconds(text),
        # when each part of a resumed run started, from which epoch, with which code
        "invocations": invocations(text),
    }
    row["commit"] = commit()
    if previous is not None:  # an extended run keeps what was said of its first part
        extension = (
            f"epochs {resumed_from + 1}-{row['epochs_run']} resumed under the {cap}-epoch cap "
            f"with commit {row['commit']}"
        )
        row["note"] = with_note(previous.get("note"), extension)
    evaluate(
        row,
        os.path.join(work, "checkpoint_best.pt"),
        work,
        opts,
        env,
        is_latent(name),
        hypotheses=os.path.join(plan.RESULTS, "hyps", f"{name}-seed{seed}.txt"),
    )
    row["wall_s"] = time.time() - start
    row["date"] = str(datetime.date.today())
    row["machine"] = machine()
    if threads is not None:
        row["threads"] = threads
    os.makedirs(plan.RESULTS, exist_ok=True)
    with open(done, "w") as f:
        json.dump(row, f, indent=1)
    print(
        f"== {name} seed {seed}: test ppl {row['test_ppl']:.2f}, BLEU {row['test_bleu']:.2f} "
        f"({row['wall_s'] / 60:.0f} min)",
        flush=True,
    )
    return row


def progress(name, seed, opts):
    """One line on where a run stands: finished (its result), training (the
    last validated epoch), or not started."""
    row, text, pending = run_state(name, seed, opts)
    valid = validations(text)
    last = "no epoch yet"
    if valid:
        best = parse_training(text)
        # how close early stopping is; an upper bound: fairseq saves a tie as
        # the best checkpoint but counts it as no improvement
        since = max(valid) - best["best_epoch"]
        latest = valid[max(valid)]
        last = (
            f"epoch {max(valid)}, valid PPL {latest.values['ppl']}{prior_sharpness(name, latest.values)}, "
            f"best checkpoint epoch {best['best_epoch']} (valid PPL {best['valid_ppl_training']}, {since} epoch"
            f"{'' if since == 1 else 's'} ago; patience {PATIENCE})"
        )
        pace = minutes_per_epoch(text)
        if pace is not None:
            last += f", about {pace:.1f} min an epoch lately"
    if not pending:
        return (
            f"{name} seed {seed}: finished ({row.get('stopped_by', 'cap')} at epoch {row['epochs_run']}, "
            f"best {row['best_epoch']}): test PPL {row['test_ppl']:.2f}, BLEU {row['test_bleu']:.2f}"
        )
    if text:
        cap = epoch_cap(name)
        state = (
            "trained, not yet evaluated"
            if not needs_training(text, cap)
            else f"stopped at a lower cap, resumes under the {cap}-epoch cap"
            if training_status(text) == "cap"
            else "training or interrupted"
        )
        return f"{name} seed {seed}: {state}, {last} (in {work_dir(opts, name, seed)})"
    return f"{name} seed {seed}: not started{expected_time(name)}"


def expected_time(name):
    """How long the row's finished seeds trained, to plan a run into the time
    a machine is held: ", seeds 1 trained for 6.9 h", or "" if none recorded it."""
    done = [json.load(open(result_path(name, s))) for s in PLAN[name] if os.path.isfile(result_path(name, s))]
    timed = [r for r in done if r.get("train_seconds")]
    if not timed:
        return ""
    seeds = ", ".join(str(r["seed"]) for r in timed)
    hours = ", ".join(f"{r['train_seconds'] / 3600:.1f}" for r in timed)
    return f" (seed {seeds} trained for {hours} h, sharing the cores with other work)"


def rewrite_result(path, row):
    """Write ``row`` over the result at ``path`` in the file's own layout
    (results have been written with indent 1 and 2, some with a final
    newline), so that its diff shows only what changed."""
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    indent = len(lines[1]) - len(lines[1].lstrip(" ")) if len(lines) > 1 else None
    with open(path, "w") as f:
        f.write(json.dumps(row, indent=indent or None) + ("\n" if text.endswith("\n") else ""))


def with_note(note, addition):
    """A result's note with ``addition`` after what it said (if anything)."""
    return "; ".join(x for x in (note, addition) if x)


def kept_run(name, seed, opts):
    """A finished run's result, its path and its best checkpoint, or None
    (said so) where either is missing here."""
    done, work = result_path(name, seed), work_dir(opts, name, seed)
    ckpt = os.path.join(work, "checkpoint_best.pt")
    if not (os.path.isfile(done) and os.path.isfile(ckpt)):
        print(f"== {name} seed {seed}: no finished run with its checkpoint in {work}, skipped", flush=True)
        return None
    with open(done) as f:
        return json.load(f), done, ckpt


def realign(name, seed, opts, env):
    """Replace a finished run's alignment scores with the current tool's."""
    if (found := kept_run(name, seed, opts)) is None:
        return
    row, done, ckpt = found
    row.update(alignment_scores(opts.data, ckpt, os.path.dirname(ckpt), env, is_latent(name)))
    rewrite_result(done, row)
    print(f"== {name} seed {seed}: alignments scored again", flush=True)


def diagnose(name, seed, opts, env):
    """Measure a finished run's validation diagnostics again (after the
    criterions learnt to log more): fairseq-validate of its best checkpoint,
    which must reproduce the result's valid PPL (else the checkpoint is not
    the one the result evaluated, and nothing is written), and its learning
    curve from its training log when that is here."""
    if (found := kept_run(name, seed, opts)) is None:
        return
    row, done, ckpt = found
    work = os.path.dirname(ckpt)
    ppl, text = evaluation.perplexity("valid", ckpt, work, opts, env)
    if abs(ppl - row["valid_ppl"]) > 1e-3 * row["valid_ppl"]:
        raise RuntimeError(
            f"{name} seed {seed}: {ckpt} gives valid PPL {ppl:.4f}, its result {row['valid_ppl']:.4f}: "
            "not the checkpoint the result evaluated, left as it is"
        )
    row.update(validation_diagnostics(text))
    train_log = os.path.join(work, "train.log")
    if os.path.isfile(train_log):
        with open(train_log) as f:
            row["valid_curve"] = validation_curve(f.read())
    said = (
        f"validation diagnostics measured again on {datetime.date.today()} with commit {commit()} "
        f"(converge.py diagnose; valid PPL reproduced, {ppl:.4f})"
    )
    row["note"] = with_note(row.get("note"), said)
    rewrite_result(done, row)
    print(f"== {name} seed {seed}: validation diagnostics measured again", flush=True)


def curves(opts):
    """``converge.py curves``: plot every finished run of the family that has
    a curve (results record theirs when they land; the earliest LSTM results,
    whose logs are not kept, have none)."""
    family = ordered_plan(opts.family)
    rows = [json.load(open(result_path(n, s))) for n, s in family if os.path.isfile(result_path(n, s))]
    rows = [r for r in rows if r.get("valid_curve")]
    if not rows:
        print("no finished run has a curve: nothing to plot")
        return
    plot_curves(rows, plan.CURVES[opts.family])
    print(f"plotted {len(rows)} run{'' if len(rows) == 1 else 's'} -> {plan.CURVES[opts.family]}")


def prepare(data_root, env):
    return prepare_multi30k(data_root, os.path.join(data_root, "prepare.log"), env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=["run", "table", "align", "diagnose", "status", "curves"],
        help="run: train and evaluate; table: results/converge*.md; status: where each "
        "run of the plan stands; curves: results/converge*-curves.png, valid PPL "
        "and prior entropy by epoch; align: score the "
        "alignments of finished runs again (after the alignment tool changed); diagnose: measure "
        "the validation diagnostics of finished runs again (after the criterions learnt to log more)",
    )
    parser.add_argument(
        "--family",
        choices=list(PLANS),
        default="lstm",
        help="varattn_lstm variants, or fairseq's transformer against varattn_transformer",
    )
    parser.add_argument("--only", default="", help="NAME:SEED,... (default: the family's whole plan)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run: 1 with --jobs 2 on 2 cores; a run alone on 2 cores "
        "trains about 1.5 times faster with 2",
    )
    parser.add_argument("--work", default=os.path.join("runs", "converge"), help="checkpoints and logs")
    parser.add_argument("--data-root", default=os.path.join("runs", "multi30k"))
    opts = parser.parse_args(argv)
    if opts.jobs < 1 or opts.threads < 1:
        parser.error(f"--jobs and --threads must be >= 1, got {opts.jobs} and {opts.threads}")
    if opts.command == "table":
        text = table(opts.family)
        # scripts/readme_results.py copies these into the READMEs
        outputs = {
            TABLES[opts.family]: text,
            NOTES[opts.family]: run_notes(opts.family),
            HEADLINES[opts.family]: headline(opts.family),
        }
        for path, content in outputs.items():
            with open(path, "w") as f:
                f.write(content)
        print(text, end="")
        return
    runs = ordered_plan(opts.family)
    if opts.only:
        try:
            wanted = [(n, int(s)) for n, s in (item.split(":") for item in opts.only.split(","))]
        except ValueError:
            parser.error(f"--only takes NAME:SEED,..., got {opts.only!r}")
        unknown = [w for w in wanted if w[0] not in PLAN]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {list(PLAN)}")
        runs = wanted
    if opts.command == "status":
        for name, seed in runs:
            print(progress(name, seed, opts))
        return
    if opts.command == "curves":
        curves(opts)
        return
    env = cpu_env(threads=opts.threads)
    opts.data = prepare(opts.data_root, env)
    if opts.command in ("align", "diagnose"):
        again = realign if opts.command == "align" else diagnose
        for name, seed in runs:
            again(name, seed, opts, env)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        futures = {pool.submit(run_one, name, seed, opts, env): (name, seed) for name, seed in runs}
        for future in concurrent.futures.as_completed(futures):
            name, seed = futures[future]
            try:
                future.result()
            except Exception as err:  # one failed run must not stop the others
                print(f"== {name} seed {seed} FAILED: {err}", flush=True)
    print(table(opts.family), end="")


if __name__ == "__main__":
    main()

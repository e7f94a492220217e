"""The paper's comparison on converged models: Multi30k De-En, 2 CPU cores.

    python examples/translation/converge.py run                  # the whole plan, 2 jobs at a time
    python examples/translation/converge.py run --only soft:1,marginal:1
    python examples/translation/converge.py run --only marginal:2 --jobs 1 --threads 2
    python examples/translation/converge.py table                # results/converge.md from finished runs
    python examples/translation/converge.py status               # where each run stands
    python examples/translation/converge.py curves               # results/converge-curves.png
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
layer, the like-for-like baseline.  ``PLAN`` gives 3 seeds to soft,
soft-factored, marginal, elbo-enum and elbo-reinforce, 2 to hard-enum and 1
to the others.

For the best checkpoint of each run it records: test PPL (``fairseq-validate``
with the run's own criterion), sacreBLEU of beam-5 translations against the
raw test references (with its signature), valid KL, prior / q / exact
posterior entropies, AER of soft attention and of the argmax of the prior,
of q and of the exact posterior p(z_j | x, y_<=j) on the hand-aligned test
sentences, training tokens/s and the epoch of the best checkpoint.
``converge.py align`` scores the alignments of finished runs again.

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
import gzip
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time

from varattn_tools.experiments import (
    cpu_env,
    git_commit,
    mean_spread,
    metric,
    prepare_multi30k,
    read_nll,
    run,
    validations,
)
from varattn_tools.resume_train import training_seconds
from varattn_tools.rows import (  # noqa: F401  (PRESET, TRANSFORMER_PRESET: read by tests and scripts)
    MAX_EPOCH,
    PATIENCE,
    PRESET,
    TRANSFORMER_PRESET,
    epoch_cap,
    is_latent,
    output_layer,
    train_options,
    variant_name,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
USER_DIR = os.path.join(REPO, "fairseq_varattn")
GOLD = os.path.join(HERE, "gold", "test_2016_flickr.de-en.pharaoh")
RESULTS = os.path.join(HERE, "results", "converge")
RAW_TEST_REF = os.path.join(REPO, "data", "multi30k", "test_2016_flickr.en.gz")
TABLES = {
    "lstm": os.path.join(HERE, "results", "converge.md"),
    "transformer": os.path.join(HERE, "results", "converge-transformer.md"),
}
# per-run provenance (commits, resumes, pauses): beside the results, not in the READMEs
NOTES = {
    "lstm": os.path.join(HERE, "results", "converge-notes.md"),
    "transformer": os.path.join(HERE, "results", "converge-transformer-notes.md"),
}
# the compact table of the top-level README
HEADLINE = os.path.join(HERE, "results", "converge-headline.md")
HEADLINE_ROWS = ("soft", "soft-factored", "marginal", "elbo-enum", "elbo-reinforce", "elbo-gumbel", "hard-enum")
CURVES = {
    "lstm": os.path.join(HERE, "results", "converge-curves.png"),
    "transformer": os.path.join(HERE, "results", "converge-transformer-curves.png"),
}

DIAGNOSTICS = (
    "kl",
    "entropy_p",
    "entropy_q",
    "entropy_post",
    "entropy_uniform",
    "prior_maxp",
    "q_maxp",
    "prior_concentration",
    "q_concentration",
)
# variant -> seeds, in the order they run (first seeds of everything first)
PLANS = {
    "lstm": {
        "soft": [1, 2, 3],
        "marginal": [1, 2, 3],
        "elbo-enum": [1, 2, 3],
        "elbo-reinforce": [1, 2, 3],
        "hard-enum": [1, 2],
        "hard-reinforce": [1],
        "elbo-gumbel": [1],
        "dirichlet": [1],
        "rws": [1],
        # soft attention with the latent variants' output layer: the like-for-like baseline
        "soft-factored": [1, 2, 3],
        # rws after three epochs of the exact marginal: plain rws puts every target
        # word on the first source piece within an epoch (ROW_OPTIONS)
        "rws-warmup": [1],
        # rws with control variates on the wake-phase weights (--centred-weights),
        # the other fix of the collapse at the quick preset
        "rws-centred": [1],
    },
    "transformer": {
        "transformer": [1, 2, 3],
        "transformer-soft": [1],
        "transformer-marginal": [1, 2, 3],
        "transformer-elbo-enum": [1, 2, 3],
        "transformer-elbo-reinforce": [1],
    },
}
PLAN = {name: seeds for plan in PLANS.values() for name, seeds in plan.items()}


def ordered_plan(family):
    plan = PLANS[family]
    width = max(len(s) for s in plan.values())
    return [(name, seeds[k]) for k in range(width) for name, seeds in plan.items() if k < len(seeds)]


def result_path(name, seed):
    return os.path.join(RESULTS, f"{name}-seed{seed}.json")


def work_dir(opts, name, seed):
    """The run's checkpoints and logs."""
    return os.path.join(opts.work, f"{name}-seed{seed}")


# what each epoch's validation line contributes to a run's learning curve
CURVE_KEYS = ("ppl", "kl", "entropy_p", "entropy_q", "entropy_post", "entropy_uniform")


def validation_curve(text):
    """Every epoch's validation numbers, in epoch order (the last line of an
    epoch that a resume validated twice): [{"epoch": 1, "ppl": ..., "kl": ...}, ...]
    with the CURVE_KEYS the criterion logs (soft attention logs ppl alone)."""
    curve = []
    for epoch, line in sorted(validations(text).items()):
        point = {"epoch": epoch}
        point.update({k: v for k in CURVE_KEYS if (v := metric(line, k)) is not None})
        curve.append(point)
    return curve


def parse_training(text):
    """What the training log says: per-epoch train wps, the best validation
    line, the learning curve."""
    wps = [float(x) for x in re.findall(r"\| train \|.*? wps ([0-9.]+)", text)]
    valid = validations(text)
    if not valid:
        raise RuntimeError("no validation in the training log")

    # fairseq rounds ppl to 2 decimals and saves checkpoint_best.pt on ties
    # too, so the best checkpoint is the last one saved under that name, not
    # the first epoch with the lowest logged ppl
    saved = re.findall(r"checkpoint_best\.pt \(epoch (\d+) @", text)
    best = int(saved[-1]) if saved else min(valid, key=lambda e: metric(valid[e], "ppl"))
    best_line = valid[best]
    return {
        "train_wps": statistics.mean(wps) if wps else None,
        "epochs_run": max(valid),
        "best_epoch": best,
        "valid_ppl_training": metric(best_line, "ppl"),  # on fairseq's default batches (see run_one)
        "valid_curve": validation_curve(text),
    }


def training_status(text):
    """How a (possibly resumed, appended-to) training log ends: "training"
    (not finished, or resumed after finishing), "patience" (early stopping)
    or "cap" (stopped by --max-epoch)."""
    parts = text.split("done training in")
    if len(parts) == 1 or "begin training epoch" in parts[-1]:
        return "training"
    return "patience" if "early stop since" in parts[-2] else "cap"


def needs_training(text, cap):
    """Whether the run must (resume and) train: it has not finished, or it
    stopped at a lower epoch cap than today's ``cap`` (its ``epoch_cap``)."""
    status = training_status(text)
    return status == "training" or (status == "cap" and parse_training(text)["epochs_run"] < cap)


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


def commit():
    """The repository's commit, recorded with each result."""
    return git_commit(REPO)


def validation_diagnostics(text):
    """KL and entropies fairseq-validate logs for the best checkpoint (latent criterions only)."""
    line = re.findall(r"on 'valid' subset \|(.*)", text)[-1]
    return {f"valid_{k}": metric(line, k) for k in DIAGNOSTICS}


def sacrebleu_score(generate_text, work):
    """Detokenised hypotheses in corpus order, scored against the raw references."""
    hyps = {}
    for line in generate_text.splitlines():
        if line.startswith("D-"):
            sid, _, text = line[2:].split("\t", 2)
            hyps[int(sid)] = text
    with gzip.open(RAW_TEST_REF, "rt", encoding="utf-8") as f:
        refs = f.read().splitlines()
    if sorted(hyps) != list(range(len(refs))):
        raise RuntimeError(f"{len(hyps)} hypotheses for {len(refs)} references")
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score([hyps[i] for i in range(len(refs))], [refs])
    with open(os.path.join(work, "hyp.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(hyps[i] for i in range(len(refs))) + "\n")
    return score.score, str(bleu.get_signature())


# results scored before the gold grew past its first 24 sentences do not say so
OLD_GOLD_SENTENCES = 24


def gold_lines():
    """Lines of the gold file: the test sentences to align (empty ones are unscored)."""
    with open(GOLD, encoding="utf-8") as f:
        return len(f.read().splitlines())


def gold_sizes(rows):
    """The numbers of hand-aligned sentences the rows' AERs were scored on."""
    return sorted({r.get("aer_sentences") or OLD_GOLD_SENTENCES for r in rows})


def gold_phrase(rows):
    sizes = gold_sizes(rows)
    if len(sizes) == 1:
        return f"AER on the {sizes[0]} hand-aligned test sentences"
    return (
        "AER on the hand-aligned test sentences (rows scored on "
        + " or ".join(str(n) for n in sizes)
        + " of them: see the notes; `converge.py align` rescores a run whose checkpoint is kept)"
    )


def alignment_scores(data, ckpt, work, env, latent):
    """AER and entropy of each panel of the alignment tool: the model's own
    attention (the prior if ``latent``, else soft attention), q's posterior
    and the exact posterior."""
    out = os.path.join(work, "alignments")
    run(
        [
            sys.executable,
            "-m",
            "varattn_tools.align",
            data,
            "--subset",
            "test",
            "--path",
            ckpt,
            "--name",
            "model",
            "--out",
            out,
            "--gold",
            GOLD,
            "--max-sentences",
            str(gold_lines()),
            "--plot",
            "0,1,3",
        ],
        os.path.join(work, "alignments.log"),
        env,
    )
    with open(os.path.join(out, "summary.json")) as f:
        rows = json.load(f)
    scores = {}
    for row in rows:
        key = {"q": "posterior", "exact_posterior": "posterior_exact"}.get(row["role"], "prior" if latent else "soft")
        scores[f"aer_{key}"] = row.get("aer")
        if "aer_low" in row:  # its 95% bootstrap interval over sentences
            scores[f"aer_{key}_interval"] = [row["aer_low"], row["aer_high"]]
        scores["aer_sentences"] = row.get("aer_sentences")
        scores[f"test_entropy_{key}_nats"] = row["entropy_nats"]
    return scores


def evaluate(row, ckpt, work, opts, env, latent, hypotheses=None):
    """Fill ``row`` with what a result records of checkpoint ``ckpt``: valid
    and test PPL on every sentence, the validation diagnostics, sacreBLEU of
    beam-5 translations and the alignment scores (their logs go to ``work``).
    The detokenised translations are copied to ``hypotheses``, kept with the
    results so that BLEU differences can be tested sentence by sentence."""
    common = [opts.data, "--user-dir", USER_DIR]
    # Training validates on fairseq's default batches, which leave out a last
    # batch whose size is not a multiple of 8 (fairseq issue #5036): the same
    # for every variant, so early stopping is like for like, but the numbers
    # reported are measured again here on every sentence.
    every = ["--required-batch-size-multiple", "1"]
    for subset in ("valid", "test"):
        log = os.path.join(work, f"{subset}.log")
        text = run(
            [
                sys.executable,
                "-m",
                "fairseq_cli.validate",
                *common,
                *every,
                "--task",
                "translation",
                "--path",
                ckpt,
                "--valid-subset",
                subset,
                "--max-tokens",
                "3000",
                "--num-workers",
                "0",
                "--seed",
                "1",
            ],
            log,
            env,
        )
        row[f"{subset}_ppl"] = 2 ** read_nll(subset, text, log)
        if subset == "valid":
            row.update(validation_diagnostics(text))
    gen = run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.generate",
            *common,
            *every,
            "--path",
            ckpt,
            "--gen-subset",
            "test",
            "--beam",
            "5",
            "--batch-size",
            "64",
            "--post-process",
            "sentencepiece",
            "--num-workers",
            "0",
        ],
        os.path.join(work, "generate.log"),
        env,
    )
    row["test_bleu"], row["bleu_signature"] = sacrebleu_score(gen, work)
    if hypotheses is not None:
        os.makedirs(os.path.dirname(hypotheses), exist_ok=True)
        shutil.copyfile(os.path.join(work, "hyp.txt"), hypotheses)
        row["test_hypotheses"] = os.path.relpath(hypotheses, HERE)
    row.update(alignment_scores(opts.data, ckpt, work, env, latent))


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
    common = [opts.data, "--user-dir", USER_DIR]
    # resume_train is fairseq-train whose --patience counter survives a resume (it reads it from the log)
    cmd = [
        sys.executable,
        "-m",
        "varattn_tools.resume_train",
        "--log",
        log,
        "--",
        *common,
        *train_options(name),
        "--seed",
        str(seed),
        "--num-workers",
        "0",
        "--log-format",
        "simple",
        "--log-interval",
        "100",
        "--save-dir",
        work,
    ]
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
        "train_cmd": " ".join(["fairseq-train", *cmd[cmd.index("--") + 1 :]]),
        **parse_training(text),
        "stopped_by": training_status(text),
        "max_epoch": cap,
        # summed over the log's invocations: a resume's gap does not count
        "train_seconds": training_seconds(text),
    }
    row["commit"] = commit()
    if previous is not None:  # an extended run keeps what was said of its first part
        extension = (
            f"epochs {resumed_from + 1}-{row['epochs_run']} resumed under the {cap}-epoch cap "
            f"with commit {row['commit']}"
        )
        row["note"] = "; ".join(x for x in (previous.get("note"), extension) if x)
    evaluate(
        row,
        os.path.join(work, "checkpoint_best.pt"),
        work,
        opts,
        env,
        is_latent(name),
        hypotheses=os.path.join(RESULTS, "hyps", f"{name}-seed{seed}.txt"),
    )
    row["wall_s"] = time.time() - start
    row["date"] = str(datetime.date.today())
    row["machine"] = f"{platform.machine()} x{os.cpu_count()} CPU cores"
    if threads is not None:
        row["threads"] = threads
    os.makedirs(RESULTS, exist_ok=True)
    with open(done, "w") as f:
        json.dump(row, f, indent=1)
    print(
        f"== {name} seed {seed}: test ppl {row['test_ppl']:.2f}, BLEU {row['test_bleu']:.2f} "
        f"({row['wall_s'] / 60:.0f} min)",
        flush=True,
    )
    return row


def minutes_per_epoch(text, last=3):
    """The median time between the last ``last`` + 1 epochs' validations, in
    minutes, or None: what an epoch takes lately (a median, so one gap where a
    run was interrupted and resumed does not count)."""
    times = {
        int(e): datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S")
        for t, e in re.findall(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \| INFO \| valid \| epoch (\d+) \| valid on 'valid' subset", text, re.M
        )
    }
    epochs = sorted(times)[-(last + 1) :]
    gaps = [(times[b] - times[a]).total_seconds() / 60 / (b - a) for a, b in zip(epochs, epochs[1:])]
    return statistics.median(gaps) if gaps else None


def prior_sharpness(name, line):
    """How sharp the prior is at a validation line, for the status of a run
    in training: a prior at the uniform entropy has learnt nothing, one near
    0 bits from the first epochs may have collapsed ("" for soft attention;
    a Dirichlet's entropy is differential, so only its mean's largest weight)."""
    parts = []
    entropy, uniform = metric(line, "entropy_p"), metric(line, "entropy_uniform")
    if entropy is not None and uniform is not None and not variant_name(name).endswith("dirichlet"):
        parts.append(f"prior entropy {entropy} bits (uniform {uniform})")
    if (maxp := metric(line, "prior_maxp")) is not None:
        parts.append(f"largest prior weight {maxp}")
    return "".join(", " + p for p in parts)


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
            f"epoch {max(valid)}, valid PPL {metric(latest, 'ppl')}{prior_sharpness(name, latest)}, "
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
    return f"{name} seed {seed}: not started"


def realign(name, seed, opts, env):
    """Replace a finished run's alignment scores with the current tool's."""
    done, work = result_path(name, seed), work_dir(opts, name, seed)
    ckpt = os.path.join(work, "checkpoint_best.pt")
    if not (os.path.isfile(done) and os.path.isfile(ckpt)):
        print(f"== {name} seed {seed}: no finished run with its checkpoint in {work}, skipped", flush=True)
        return
    with open(done) as f:
        row = json.load(f)
    row.update(alignment_scores(opts.data, ckpt, work, env, is_latent(name)))
    with open(done, "w") as f:
        json.dump(row, f, indent=1)
    print(f"== {name} seed {seed}: alignments scored again", flush=True)


def attach_curve(name, seed, opts):
    """Give a finished result that predates ``valid_curve`` the curve of its
    training log, if that log is here and is the one the result was made
    from (same epochs run, same best epoch); says what it did."""
    done, log = result_path(name, seed), os.path.join(work_dir(opts, name, seed), "train.log")
    if not os.path.isfile(done):
        return f"{name} seed {seed}: not finished"
    with open(done) as f:
        row = json.load(f)
    if row.get("valid_curve"):
        return f"{name} seed {seed}: has its curve"
    if not os.path.isfile(log):
        return f"{name} seed {seed}: no curve (its training log is not in {os.path.dirname(log)})"
    text = open(log).read()
    parsed = parse_training(text) if validations(text) else {}
    seen = (parsed.get("epochs_run"), parsed.get("best_epoch"))
    if seen != (row["epochs_run"], row["best_epoch"]) or len(parsed["valid_curve"]) != row["epochs_run"]:
        return (
            f"{name} seed {seed}: no curve ({log} has {len(parsed.get('valid_curve', []))} validated epochs "
            f"up to {seen[0]}, best {seen[1]}; the result: {row['epochs_run']}, best {row['best_epoch']})"
        )
    row["valid_curve"] = parsed["valid_curve"]
    with open(done, "w") as f:
        json.dump(row, f, indent=1)
        f.write("\n")
    return f"{name} seed {seed}: curve added from {log}"


def curve_colours(variants):
    """{variant: an RGBA colour}, distinct for up to 20 variants, in the order
    given.  Only the plotted variants get one: indexing the whole plan would
    wrap tab10 and give two plotted variants one colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    plotted = list(dict.fromkeys(variants))
    palette = plt.cm.tab10 if len(plotted) <= 10 else plt.cm.tab20
    return {name: palette(k % palette.N) for k, name in enumerate(plotted)}


def plot_curves(rows, path):
    """Valid PPL and the prior's entropy (bits) against the epoch, a line per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ppl_ax, ent_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = curve_colours([row["variant"] for row in rows])
    styles = {1: "-", 2: "--", 3: ":"}
    uniform = []
    for row in rows:
        curve, label = row["valid_curve"], f"{row['variant']} seed {row['seed']}"
        style = dict(color=colours[row["variant"]], linestyle=styles.get(row["seed"], "-."), label=label)
        ppl_ax.plot([p["epoch"] for p in curve], [p["ppl"] for p in curve], **style)
        # a Dirichlet's entropy_p is a differential entropy: not on the same axis
        points = [p for p in curve if "entropy_p" in p]
        if points and row["variant"] != "dirichlet":
            ent_ax.plot([p["epoch"] for p in points], [p["entropy_p"] for p in points], **style)
            uniform += [p["entropy_uniform"] for p in points if "entropy_uniform" in p]
    if uniform:
        ent_ax.axhline(statistics.mean(uniform), color="grey", linewidth=0.8, linestyle="--", label="uniform alignment")
    ppl_ax.set(yscale="log", xlabel="epoch", ylabel="valid PPL (log scale)", title="validation perplexity")
    ppl_ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 5, 10, 20 rather than 5x10^0
    ppl_ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ent_ax.set(xlabel="epoch", ylabel="bits per target token", title="entropy of the prior p(z_j | x, y_<j)")
    for ax in (ppl_ax, ent_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(plan, opts):
    """``converge.py curves``: attach the curves the results of ``plan`` lack,
    then plot every finished run of the family that has one (not only
    ``plan``'s: the figure is the family's, like its table)."""
    for name, seed in plan:
        print(attach_curve(name, seed, opts))
    family = ordered_plan(opts.family)
    rows = [json.load(open(result_path(n, s))) for n, s in family if os.path.isfile(result_path(n, s))]
    rows = [r for r in rows if r.get("valid_curve")]
    if not rows:
        print("no finished run has a curve: nothing to plot")
        return
    plot_curves(rows, CURVES[opts.family])
    print(f"plotted {len(rows)} run{'' if len(rows) == 1 else 's'} -> {CURVES[opts.family]}")


def prepare(data_root, env):
    return prepare_multi30k(data_root, os.path.join(data_root, "prepare.log"), env)


# -- the table -------------------------------------------------------------------------------
COLUMNS = [
    ("valid PPL", "valid_ppl", ".2f"),
    ("test PPL", "test_ppl", ".2f"),
    ("BLEU", "test_bleu", ".2f"),
    ("valid KL (bits)", "valid_kl", ".3f"),
    ("H uniform (bits)", "valid_entropy_uniform", ".2f"),
    ("H prior (bits)", "valid_entropy_p", ".2f"),
    ("H q (bits)", "valid_entropy_q", ".2f"),
    ("H posterior (bits)", "valid_entropy_post", ".2f"),
    ("AER soft", "aer_soft", ".3f"),
    ("AER prior", "aer_prior", ".3f"),
    ("AER q", "aer_posterior", ".3f"),
    ("AER exact posterior", "aer_posterior_exact", ".3f"),
    ("train tok/s", "train_wps", ".0f"),
    ("best epoch", "best_epoch", ".1f"),
    ("epochs run", "epochs_run", ".1f"),
]


# the Dirichlet row's numbers do not mean what the categorical rows' do
DIRICHLET_NOTE = (
    "- dirichlet: its PPLs are importance-sampled (16 draws from (q + p) / 2 per token, an "
    "upper bound on the exact PPL in expectation), and its H prior and H q are the differential "
    "entropies of the Dirichlet densities over the simplex (negative when they are "
    "concentrated), not entropies of a categorical alignment: they do not compare with the "
    "other rows'; its AERs read the argmax of the Dirichlets' means"
)


# the row every other row's BLEU is tested against (paired bootstrap, seed by seed)
BASELINE = {"lstm": "soft", "transformer": "transformer"}


def bleu_p_values(rows, baseline):
    """{(variant, seed): p} -- sacreBLEU's paired bootstrap p-value of each row's
    BLEU difference from ``baseline`` trained with the same seed, for the rows
    whose test translations are kept (``test_hypotheses``) on both sides."""
    from varattn_tools.significance import paired_bleu, read_lines

    kept = {
        (r["variant"], r["seed"]): os.path.join(HERE, r["test_hypotheses"]) for r in rows if r.get("test_hypotheses")
    }
    references = None
    out = {}
    for seed in sorted({s for _, s in kept}):
        base = kept.get((baseline, seed))
        others = {v: path for (v, s), path in kept.items() if s == seed and v != baseline}
        if base is None or not others:
            continue
        references = references or read_lines(RAW_TEST_REF)
        tested = paired_bleu(references, read_lines(base), {v: read_lines(path) for v, path in others.items()})
        out.update({(v, seed): r["p_value"] for v, r in tested.items()})
    return out


def p_cell(p_values, name, runs):
    """One table cell: the p-values of a row's seeds, in seed order ("-" where none)."""
    found = [
        p_values[(name, r["seed"])] for r in sorted(runs, key=lambda r: r["seed"]) if (name, r["seed"]) in p_values
    ]
    return ", ".join(f"{p:.3f}" for p in found) or "-"


def aer_cell(runs, key, fmt):
    """An AER: with one seed and a recorded interval, "AER [95% bootstrap interval over
    sentences]"; over seeds, mean ± std."""
    interval = runs[0].get(f"{key}_interval") if len(runs) == 1 else None
    if interval is None or runs[0].get(key) is None:
        return mean_spread([r.get(key) for r in runs], fmt)
    low, high = interval
    return f"{format(runs[0][key], fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def finished(family):
    rows = (
        [json.load(open(os.path.join(RESULTS, f))) for f in sorted(os.listdir(RESULTS)) if f.endswith(".json")]
        if os.path.isdir(RESULTS)
        else []
    )
    return [r for r in rows if r["variant"] in PLANS[family]]


def table(family="lstm"):
    rows = finished(family)
    if not rows:
        return "No finished runs yet.\n"
    baseline = BASELINE[family]
    p_values = bleu_p_values(rows, baseline)
    # the p column follows BLEU
    at = next(i for i, c in enumerate(COLUMNS) if c[1] == "test_bleu") + 1
    header = [c[0] for c in COLUMNS]
    header.insert(at, f"p (BLEU vs {baseline})")
    lines = [
        "| variant | output layer | seeds | " + " | ".join(header) + " |",
        "|---|---|---|" + "---|" * len(header),
    ]
    for name in PLANS[family]:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        label = name + (" (IS ppl)" if name == "dirichlet" else "")
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        cells = [
            aer_cell(runs, key, fmt) if key.startswith("aer_") else mean_spread([r.get(key) for r in runs], fmt)
            for _, key, fmt in COLUMNS
        ]
        cells.insert(at, p_cell(p_values, name, runs))
        lines.append(f"| {label} | {runs[0]['output_layer']} | {seeds} | " + " | ".join(cells) + " |")
    notes = []
    capped = [f"{r['variant']} seed {r['seed']} ({r['epochs_run']})" for r in rows if r.get("stopped_by") == "cap"]
    if capped:
        notes.append("- stopped by the epoch cap, not by patience: " + ", ".join(capped))
    if any(r["variant"] == "dirichlet" for r in rows):
        notes.append(DIRICHLET_NOTE)
    if notes:
        lines += ["", *notes]
    signature = rows[0]["bleu_signature"]
    dates = sorted({r["date"] for r in rows})
    # rows without "threads" predate --threads: one thread each, two or three runs at a time
    threaded = [f"{r['variant']} seed {r['seed']}: {r['threads']} threads" for r in rows if r.get("threads", 1) > 1]
    sharing = "with other runs sharing the 2 cores" + (
        f" ({'; '.join(threaded)}; see {'its note' if len(threaded) == 1 else 'their notes'})" if threaded else ""
    )
    budget = f"early stopping on valid PPL with patience {PATIENCE} (at most {MAX_EPOCH} epochs)"
    notes_file = os.path.relpath(NOTES[family], HERE)
    head = (
        f"`python examples/translation/converge.py run{'' if family == 'lstm' else ' --family ' + family}`, "
        f"{dates[0]} to {dates[-1]}, {rows[0]['machine']}, no GPU; {budget}; "
        f"mean ± std over seeds; PPLs, KL and entropies measured on every sentence of the best checkpoint; "
        f"sacreBLEU `{signature}`, beam 5, test_2016_flickr; p: sacreBLEU's paired bootstrap "
        f"(1000 resamples of the test sentences) of each seed's BLEU against {baseline} with the same seed, "
        f'one value per seed, where both runs kept their translations ("-": not kept).  '
        f"{gold_phrase(rows)} (a row of one seed: with its 95% bootstrap interval over sentences, "
        f"where recorded).  Entropies and KL are per target token "
        f"on the validation set (uniform: the entropy of a uniform alignment).  Training tok/s is "
        f"fairseq's wps averaged over epochs, {sharing}: compare speeds "
        f"with benchmarks/, not here.  How each run went (commits, resumes, pauses): `{notes_file}`.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def run_notes(family="lstm"):
    """Each run's provenance: its JSON's "note" (what sets it apart, e.g. a code change mid-run)."""
    rows = finished(family)
    lines = [
        f"# How each run of `converge.py --family {family}` went",
        "",
        "Generated by `converge.py table` from the result JSONs in `results/converge/`.",
        "",
    ]
    lines += [
        f"- **{r['variant']} seed {r['seed']}** ({r.get('commit', '?')}, {r.get('date', '?')}): "
        f"{r.get('note') or 'trained in one go.'}"
        f" AER scored on {r.get('aer_sentences') or OLD_GOLD_SENTENCES} hand-aligned sentences."
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def welch_p(a, b):
    """Two-sided Welch t-test p-value over seeds (None with fewer than 2 seeds a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def headline():
    """The top-level README's table: the main rows against soft attention, with
    Welch t-test p-values over seeds for test PPL and BLEU."""
    rows = finished("lstm")
    soft = [r for r in rows if r["variant"] == "soft"]
    lines = [
        "| `varattn_lstm` | seeds | test PPL | p | sacreBLEU | p | AER of its alignment |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in HEADLINE_ROWS:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        cells = [name, str(len(runs))]
        for key, fmt in (("test_ppl", ".2f"), ("test_bleu", ".2f")):
            cells.append(mean_spread([r[key] for r in runs], fmt))
            p = None if name == "soft" else welch_p([r[key] for r in runs], [r[key] for r in soft])
            cells.append("-" if p is None else f"{p:.3f}")
        aer_key = "aer_soft" if name.startswith("soft") else "aer_posterior_exact"
        what = "soft attention" if name.startswith("soft") else "exact posterior"
        cells.append(f"{mean_spread([r.get(aer_key) for r in runs], '.3f')} ({what})")
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "Multi30k De-En, trained to convergence (early stopping on valid PPL), mean ± std over seeds; "
        f"p: Welch's t-test over seeds against soft attention; {gold_phrase(rows)}.  "
        "All rows and columns: `examples/translation/README.md`.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=["run", "table", "align", "status", "curves"],
        help="run: train and evaluate; table: results/converge*.md; status: where each "
        "run of the plan stands; curves: results/converge*-curves.png, valid PPL "
        "and prior entropy by epoch (adding a result's curve from its training "
        "log when the result lacks one); align: score the "
        "alignments of finished runs again (after the alignment tool changed)",
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
        outputs = {TABLES[opts.family]: text, NOTES[opts.family]: run_notes(opts.family)}
        if opts.family == "lstm":
            outputs[HEADLINE] = headline()
        for path, content in outputs.items():
            with open(path, "w") as f:
                f.write(content)
        print(text, end="")
        return
    plan = ordered_plan(opts.family)
    if opts.only:
        try:
            wanted = [(n, int(s)) for n, s in (item.split(":") for item in opts.only.split(","))]
        except ValueError:
            parser.error(f"--only takes NAME:SEED,..., got {opts.only!r}")
        unknown = [w for w in wanted if w[0] not in PLAN]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {list(PLAN)}")
        plan = wanted
    if opts.command == "status":
        for name, seed in plan:
            print(progress(name, seed, opts))
        return
    if opts.command == "curves":
        curves(plan, opts)
        return
    env = cpu_env(threads=opts.threads)
    opts.data = prepare(opts.data_root, env)
    if opts.command == "align":
        for name, seed in plan:
            realign(name, seed, opts, env)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        futures = {pool.submit(run_one, name, seed, opts, env): (name, seed) for name, seed in plan}
        for future in concurrent.futures.as_completed(futures):
            name, seed = futures[future]
            try:
                future.result()
            except Exception as err:  # one failed run must not stop the others
                print(f"== {name} seed {seed} FAILED: {err}", flush=True)
    print(table(opts.family), end="")


if __name__ == "__main__":
    main()

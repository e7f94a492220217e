"""Why does (or doesn't) the latent alignment learn?  Short runs, one change each.

    python examples/translation/ablate.py                       # every ablation, 2 at a time
    python examples/translation/ablate.py --only marginal,elbo-reinforce
    python examples/translation/ablate.py --preset iwslt --only marginal,marginal-factored

Each ablation trains ``varattn_lstm`` (joint output layer) on the shipped
Multi30k De-En (a 2k sentencepiece vocabulary) with the quick preset of
``reproduce.py`` (or, with ``--preset iwslt``, the paper's model and
optimiser: the README's IWSLT14 recipe) plus its own options, validates every ``--every`` updates,
and records what the latent criterions log to show whether the alignment is
learnt (docs/design.md, "Is the latent attention learning?"): the prior's
entropy against the uniform entropy (log2 of the source length), its largest
probability, the spread of log p(y_j | z_j = i) over i, the posterior's
entropy, KL(q || p) and the exact marginal PPL.  Writes OUT/ablate.md and
OUT/ablate.csv; a finished ablation (its ``row.json``) is not run again.
"""

import argparse
import concurrent.futures
import csv
import datetime
import json
import os
import sys
import time

from varattn_tools.experiments import TRAIN_LOGGING, cpu_env, prepare_multi30k, run
from varattn_tools.fairseq_log import stats
from varattn_tools.rows import QUICK_PRESET, row_options

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "fairseq_varattn")

QUICK = [*QUICK_PRESET, "--max-tokens", "1000"]
# the paper's model and optimiser (the README's IWSLT14 recipe), for --preset iwslt
IWSLT = [
    "--arch",
    "varattn_lstm_iwslt_de_en",
    "--optimizer",
    "adam",
    "--adam-eps",
    "1e-8",
    "--lr",
    "3e-4",
    "--batch-size",
    "6",
    "--clip-norm",
    "5",
    "--required-batch-size-multiple",
    "1",
]
PRESETS = {
    "quick": (QUICK, "quick preset (64-d, lr 0.005, 1000-token batches)"),
    "iwslt": (
        IWSLT,
        "IWSLT preset (varattn_lstm_iwslt_de_en: 512-d, 2 layers, 1024-d annotations; Adam 3e-4, 6-sentence batches)",
    ),
}
# Each ablation is a row of varattn_tools/rows.py plus its change.  Rows name
# their output layer, and q's rows keep the q options they were trained with
# (rows.row_options), so an ablation trains what its table reports whatever
# varattn_lstm's defaults are; the REINFORCE rows also train the baseline.
SOFT = row_options("soft")
SOFT_FACTORED = row_options("soft-factored")
MARGINAL = row_options("marginal-joint")
MARGINAL_FACTORED = row_options("marginal")
ELBO_ENUM = row_options("elbo-enum-joint")
ELBO_ENUM_FACTORED = row_options("elbo-enum")
ELBO_RF = [*row_options("elbo-reinforce-joint"), "--train-baseline"]
ELBO_RF_FACTORED = [*row_options("elbo-reinforce"), "--train-baseline"]
DIRICHLET = row_options("dirichlet")
RWS = row_options("rws")

# name -> (what it tests, extra options); later options override earlier ones
ABLATIONS = {
    "soft": ("soft attention, the baseline every row is compared with", SOFT),
    "soft-factored": ("soft attention with the factored output layer", SOFT_FACTORED),
    "marginal-independent": (
        "exact marginal, a dropout mask per (j, i) pair (the paper's code, and this plugin's default before the fix)",
        [*MARGINAL, "--alignment-dropout", "independent"],
    ),
    "marginal": ("exact marginal, defaults (one mask per target token)", MARGINAL),
    "marginal-no-dropout": ("exact marginal without any dropout", [*MARGINAL, "--dropout", "0"]),
    "marginal-context-feed": (
        "input feeding of the raw context c_j (the paper's code)",
        [*MARGINAL, "--input-feed", "context"],
    ),
    "marginal-attention-512": (
        "512-d MLP attention (the paper's size: larger scores at initialisation)",
        [*MARGINAL, "--attention-dim", "512"],
    ),
    "marginal-paper-batches": (
        "the paper's optimiser: 6 sentences, Adam 3e-4",
        [*MARGINAL, "--lr", "3e-4", "--batch-size", "6", "--max-tokens", "100000"],
    ),
    "marginal-soft-warmup": ("500 updates as soft attention first", [*MARGINAL, "--soft-warmup-updates", "500"]),
    "marginal-factored": ("the factored output layer", MARGINAL_FACTORED),
    "elbo-reinforce-independent": (
        "the issue's run: ELBO by REINFORCE, a mask per (j, i) pair",
        [*ELBO_RF, "--alignment-dropout", "independent"],
    ),
    "elbo-reinforce": ("ELBO by REINFORCE, defaults", ELBO_RF),
    "elbo-reinforce-kl-warmup": (
        "ELBO by REINFORCE, KL weight annealed over 1000 updates",
        [*ELBO_RF, "--kl-warmup-updates", "1000"],
    ),
    "elbo-reinforce-soft-warmup": (
        "ELBO by REINFORCE, 500 updates as soft attention first",
        [*ELBO_RF, "--soft-warmup-updates", "500"],
    ),
    "elbo-reinforce-factored": ("ELBO by REINFORCE, the factored output layer", ELBO_RF_FACTORED),
    "elbo-enum": ("ELBO by enumeration, defaults", ELBO_ENUM),
    "elbo-enum-factored": ("ELBO by enumeration, the factored output layer", ELBO_ENUM_FACTORED),
    # the converged comparison's Dirichlet row kept a near-uniform mean; is it the link?
    "dirichlet-factored": (
        "Dirichlet attention as in the converged comparison: alpha = softplus(score), the factored output layer",
        DIRICHLET,
    ),
    "dirichlet-exp-factored": (
        "the same with alpha = exp(score), whose mean is softmax(score) at any total concentration",
        [*DIRICHLET, "--dirichlet-concentration", "exp"],
    ),
    "dirichlet-kl0.1-factored": (
        "Dirichlet attention with KL(q || p) weighted 0.1: q may leave the prior before the prior follows",
        [*DIRICHLET, "--kl-weight", "0.1"],
    ),
    # the converged comparison's rws row put every target word on the first source piece within an epoch
    "rws-factored": ("reweighted wake-sleep (5 samples of q) as in the converged comparison", RWS),
    "rws-marginal-warmup-factored": (
        "the same after 500 updates of the exact marginal (q copies its posterior)",
        [*RWS, "--marginal-warmup-updates", "500"],
    ),
    "rws-centred-factored": (
        "the same with centred wake-phase weights (no update where y does not depend on the alignment)",
        [*RWS, "--centred-weights"],
    ),
}

MAX_UPDATE = 1000
KEYS = (
    "ppl",
    "entropy_p",
    "entropy_uniform",
    "prior_maxp",
    "entropy_post",
    "logpy_spread",
    "score_spread",
    "annot_spread",
    "entropy_q",
    "q_maxp",
    "kl",
    "prior_concentration",
)


def parse_valid(text):
    """Every validation line's metrics, in order: [(num_updates, {key: value})]."""
    return [
        (int(v.values["num_updates"]), {k: x for k, x in v.values.items() if isinstance(x, float)})
        for v in stats(text, "valid")
        if "num_updates" in v.values
    ]


def run_one(name, args, opts, data, env):
    """Train one ablation into --out unless its row.json says this command finished there;
    the table reads the curve from its train.log."""
    save = os.path.join(opts.out, name)
    os.makedirs(save, exist_ok=True)
    cached = os.path.join(save, "row.json")
    cmd = [
        sys.executable,
        "-m",
        "fairseq_cli.train",
        data,
        "--user-dir",
        USER_DIR,
        *PRESETS[opts.preset][0],
        *args,
        "--max-update",
        str(opts.max_update),
        "--validate-interval-updates",
        str(opts.every),
        "--save-interval-updates",
        str(opts.every),
        "--keep-interval-updates",
        "1",
        "--no-epoch-checkpoints",
        "--seed",
        str(opts.seed),
        *TRAIN_LOGGING,
        "--save-dir",
        save,
    ]
    if os.path.isfile(cached):
        with open(cached) as f:
            done = json.load(f)
        if done["cmd"] == cmd[1:]:
            return
    start = time.time()
    print(f"== {name}: training in {save}", flush=True)
    run(cmd, os.path.join(save, "train.log"), env, append=True)
    with open(cached, "w") as f:
        json.dump({"cmd": cmd[1:], "wall_s": time.time() - start}, f)


def table_rows(rows, opts):
    """The rows the README table shows: the first two validations (where the
    alignment leaves uniform, or not), every multiple of the default
    --max-update and each ablation's last, so rows trained further (a larger
    --max-update, resumed from checkpoint_last.pt) keep the points they
    share with the others."""
    last = {}
    for r in rows:
        last[r["ablation"]] = max(last.get(r["ablation"], 0), r["updates"])
    return [
        r
        for r in rows
        if r["updates"] in (opts.every, 2 * opts.every)
        or r["updates"] % MAX_UPDATE == 0
        or r["updates"] == last[r["ablation"]]
    ]


DIRICHLET_NOTE = (
    "Dirichlet rows: valid PPL is importance-sampled (an upper bound in expectation), and "
    "H prior and H q are the differential entropies of densities on the simplex, not "
    "comparable with H uniform; prior max p is the largest weight of the prior's mean."
)


def command_line(opts, names):
    """The command that regenerates a table of these ablations."""
    command = "python examples/translation/ablate.py" + (f" --preset {opts.preset}" if opts.preset != "quick" else "")
    if opts.max_update != MAX_UPDATE:
        command += f" --max-update {opts.max_update}"
    if list(names) != list(ABLATIONS):
        command += f" --only {','.join(names)}"
    if opts.out != default_out(opts.preset):
        command += f" --out {opts.out}"
    if os.path.abspath(opts.results) != os.path.abspath(default_results(opts.preset)):
        inside = os.path.relpath(opts.results, REPO)
        command += f" --results {opts.results if inside.startswith('..') else inside}"
    return command


def _named(preset):
    """ablate, or ablate-PRESET for presets other than quick."""
    return "ablate" + ("" if preset == "quick" else f"-{preset}")


def default_out(preset):
    return os.path.join("runs", _named(preset))


def default_results(preset):
    return os.path.join(REPO, "examples", "translation", "results", _named(preset) + ".md")


# (key, column) of the table; the concentration column only where a row logs it (Dirichlet)
COLUMNS = (
    ("ablation", "ablation"),
    ("updates", "updates"),
    ("ppl", "valid PPL"),
    ("entropy_p", "H prior"),
    ("entropy_uniform", "H uniform"),
    ("prior_maxp", "prior max p"),
    ("entropy_post", "H posterior"),
    ("logpy_spread", "spread of log p(y given z=i)"),
    ("entropy_q", "H q"),
    ("kl", "KL"),
    ("prior_concentration", "prior's total concentration"),
)


def markdown(rows, opts):
    columns = [
        (k, c)
        for k, c in COLUMNS
        if k != "prior_concentration" or any(r.get("prior_concentration", "") != "" for r in rows)
    ]
    names = list(dict.fromkeys(r["ablation"] for r in rows))
    command = command_line(opts, names)
    lines = [
        f"`{command}` on {datetime.date.today()}: {PRESETS[opts.preset][1]}, "
        f"Multi30k with a 2k sentencepiece vocabulary, seed {opts.seed}, "
        "validation set (fairseq's default batches, which leave out the last, longest batch: the same "
        "for every row); entropies in bits per target token, spread in nats.",
        "",
        "| " + " | ".join(c for _, c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) if r.get(k, "") != "" else "-" for k, _ in columns) + " |")
    if any(r["ablation"].startswith("dirichlet") for r in rows):
        lines += ["", DIRICHLET_NOTE]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quick",
        help="model and optimiser every row starts from (default: quick)",
    )
    parser.add_argument("--out", help="default: runs/ablate (runs/ablate-PRESET for other presets)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated ablation names to train (default: all); the table shows every ablation trained in --out",
    )
    parser.add_argument(
        "--max-update",
        type=int,
        default=MAX_UPDATE,
        help="a larger value resumes finished rows from their checkpoint_last.pt",
    )
    parser.add_argument("--every", type=int, default=250, help="validate every N updates")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="tabulate the training logs already in --out (finished or not); train nothing",
    )
    parser.add_argument(
        "--results",
        help="the table, for scripts/readme_results.py (default: examples/"
        "translation/results/ablate.md, ablate-PRESET.md for other presets)",
    )
    opts = parser.parse_args()
    opts.out = opts.out or default_out(opts.preset)
    opts.results = opts.results or default_results(opts.preset)
    names = [n for n in opts.only.split(",") if n] or list(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
    os.makedirs(opts.out, exist_ok=True)
    env = cpu_env(threads=1)
    data = os.path.join("runs", "multi30k_2k", "bin")
    if not opts.table_only:
        data = prepare_multi30k(os.path.dirname(data), os.path.join(opts.out, "prepare.log"), env, vocab_size=2000)
    if not opts.table_only:
        with concurrent.futures.ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            list(pool.map(lambda n: run_one(n, ABLATIONS[n][1], opts, data, env), names))
    # every ablation trained in --out, not only those run now: --only must not
    # drop the other rows from the results table
    logs = {n: os.path.join(opts.out, n, "train.log") for n in ABLATIONS}
    curves = {n: parse_valid(open(p).read()) for n, p in logs.items() if os.path.isfile(p)}
    names = [n for n in ABLATIONS if curves.get(n)]
    rows = []
    for name in names:
        print(f"== {name}: {ABLATIONS[name][0]}", flush=True)
        for updates, values in curves[name]:
            row = {"ablation": name, "updates": updates, **{k: values.get(k, "") for k in KEYS}}
            rows.append(row)
            print("   " + " ".join(f"{k}={row[k]}" for k in ("updates",) + KEYS if row[k] != ""), flush=True)
    with open(os.path.join(opts.out, "ablate.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ablation", "updates", *KEYS])
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(table_rows(rows, opts), opts)
    for path in (os.path.join(opts.out, "ablate.md"), opts.results):
        with open(path, "w") as f:
            f.write(table)
    print(markdown(rows, opts))


if __name__ == "__main__":
    main()

"""The paper's comparison on your data: every variant, same budget, several seeds.

    python examples/translation/reproduce.py --quick             # shipped Multi30k, 2 CPU cores
    python examples/translation/reproduce.py --data runs/iwslt14/bin --full --seeds 1,2,3

For each seed and variant (soft, marginal, hard enum / REINFORCE,
variational enum / REINFORCE / Gumbel, Dirichlet, wake-sleep) it runs
``fairseq-train`` with the same preset, optimiser, batches, seed and number
of updates, then ``fairseq-validate`` on the test split and
``fairseq-generate --beam 5 --scoring sacrebleu``.  PPL is the exact
marginal under the prior for every categorical variant (importance-sampled
for Dirichlet, marked so), read from the last validation and from the test
pass.  Training tokens/s is fairseq's ``wps``; peak memory is the training
process's peak RSS (and CUDA max-allocated on a GPU).

Writes OUT/runs.csv (one row per run), OUT/results.csv and OUT/results.md
(mean ± standard deviation over seeds) and, with ``--alignments``, OUT/alignments/
(heatmaps, AER against the hand-aligned gold sentences when the data is the
shipped Multi30k).  A finished run leaves ``row.json`` in its folder and is
not repeated by a later invocation with the same options, so adding seeds
(``--seeds 1,2`` after ``--seeds 1``) or resuming an interrupted job only
runs what is missing.
"""

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import sys
import time

from varattn_tools import fairseq_log
from varattn_tools import rows as row_names
from varattn_tools.experiments import (
    cpu_env,
    last_float,
    machine,
    mean_spread,
    prepare_multi30k,
    read_nll,
    run,
    train_wps,
    validate_command,
)
from varattn_tools.rows import QUICK_PRESET
from varattn_tools.variants import VARIANTS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
USER_DIR = os.path.join(REPO, "fairseq_varattn")
GOLD = os.path.join(HERE, "gold", "test_2016_flickr.de-en.pharaoh")

PRESETS = {
    "quick": QUICK_PRESET,
    # the paper's IWSLT14 settings (docs/design.md, "Reference settings"); max-tokens replaces batch 6 sentences
    "full": [
        "--arch",
        "varattn_lstm_iwslt_de_en",
        "--optimizer",
        "adam",
        "--lr",
        "3e-4",
        "--adam-eps",
        "1e-8",
        "--clip-norm",
        "5",
        "--lr-scheduler",
        "fixed",
        "--force-anneal",
        "2",
        "--lr-shrink",
        "0.5",
    ],
}

# Runs in the training subprocess: fairseq-train, then report peak memory.
MEASURED_TRAIN = (
    "import resource, sys, torch\n"
    "from fairseq_cli.train import cli_main\n"
    "sys.argv = ['fairseq-train'] + sys.argv[1:]\n"
    "try:\n"
    "    cli_main()\n"
    "finally:\n"
    "    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0\n"
    "    print(f'VARATTN_PEAK_MB rss={rss:.0f} cuda={cuda:.0f}', flush=True)\n"
)


def run_key(name, output_layer):
    """The row name (varattn_tools/rows.py): the variant, suffixed with the
    output layer where it is not the family's default (joint for soft
    attention, factored for the latent variants)."""
    return name if row_names.parse(name).output_layer == output_layer else f"{name}-{output_layer}"


def run_one(key, seed, opts, env):
    row = row_names.parse(key)
    save = os.path.join(opts.out, f"{key}-seed{seed}")
    os.makedirs(save, exist_ok=True)
    # fairseq drops a last batch whose size is not a multiple of 8 (fairseq issue #5036): score every sentence
    common = [opts.data, "--user-dir", USER_DIR, "--required-batch-size-multiple", "1"]
    train_cmd = [
        sys.executable,
        "-c",
        MEASURED_TRAIN,
        *common,
        *PRESETS[opts.preset],
        *row.options(),
        "--max-tokens",
        str(opts.max_tokens),
        "--max-update",
        str(opts.max_update),
        "--seed",
        str(seed),
        "--num-workers",
        "0",
        "--log-interval",
        "50",
        "--log-format",
        "json",
        "--validate-interval-updates",
        str(opts.max_update),
        "--save-dir",
        save,
        "--no-epoch-checkpoints",
        *opts.train_args,
    ]
    eval_args = [opts.test_subset, *opts.generate_args]
    cached = os.path.join(save, "row.json")
    if os.path.isfile(cached):
        with open(cached) as f:
            done = json.load(f)
        # the same command line (minus the interpreter) means the same run
        if done.get("train_cmd") == train_cmd[3:] and done.get("eval_args") == eval_args:
            print("   (finished earlier: reusing its row.json)", flush=True)
            return done["row"]
    start = time.time()
    log = os.path.join(save, "train.log")
    text = run(train_cmd, log, env)
    train_s = time.time() - start
    ckpt = os.path.join(save, "checkpoint_last.pt")  # the model after the budget
    row = {
        "variant": key,
        "seed": seed,
        "valid_nll_bits": read_nll("valid", text, log),
        "train_wps": train_wps(text, log),
        "peak_rss_mb": last_float(r"VARATTN_PEAK_MB rss=([0-9.]+)", text, "peak memory", log),
        "peak_cuda_mb": last_float(r"VARATTN_PEAK_MB rss=[0-9.]+ cuda=([0-9.]+)", text, "peak memory", log),
        "train_s": train_s,
    }
    kl = fairseq_log.last(text, "valid").values.get("kl")  # read_nll found the validation
    row["valid_kl_bits"] = kl if kl is not None else ""

    log = os.path.join(save, "test.log")
    text = run(validate_command(opts.data, USER_DIR, ckpt, opts.test_subset, opts.max_tokens, seed), log, env)
    row["test_nll_bits"] = read_nll(opts.test_subset, text, log)

    log = os.path.join(save, "generate.log")
    text = run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.generate",
            *common,
            "--path",
            ckpt,
            "--gen-subset",
            opts.test_subset,
            "--beam",
            "5",
            "--batch-size",
            "128",
            "--post-process",
            "sentencepiece",
            "--scoring",
            "sacrebleu",
            *opts.generate_args,
        ],
        log,
        env,
    )
    row["test_bleu"] = last_float(r"BLEU = ([0-9.]+)", text, "BLEU", log)
    row["valid_ppl"] = 2 ** row["valid_nll_bits"]
    row["test_ppl"] = 2 ** row["test_nll_bits"]
    row["wall_s"] = time.time() - start
    with open(cached, "w") as f:
        json.dump({"train_cmd": train_cmd[3:], "eval_args": eval_args, "row": row}, f)
    return row


def aggregate(rows, variants):
    soft_wps = [r["train_wps"] for r in rows if r["variant"] == "soft"]
    table = []
    for name in variants:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        speed = [r["train_wps"] / statistics.mean(soft_wps) for r in runs] if soft_wps else []
        table.append(
            {
                "variant": name + (" (IS ppl)" if name.startswith("dirichlet") else ""),
                "seeds": len(runs),
                "valid_ppl": mean_spread([r["valid_ppl"] for r in runs], ".2f"),
                "test_ppl": mean_spread([r["test_ppl"] for r in runs], ".2f"),
                "test_bleu": mean_spread([r["test_bleu"] for r in runs], ".2f"),
                "valid_kl_bits": mean_spread([r["valid_kl_bits"] for r in runs], ".3f"),
                "train_wps": mean_spread([r["train_wps"] for r in runs], ".0f"),
                "speed_vs_soft": mean_spread(speed, ".2f"),
                "peak_rss_mb": mean_spread([r["peak_rss_mb"] for r in runs], ".0f"),
            }
        )
    return table


def markdown(table, opts, seeds, wall):
    header = (
        "| variant | seeds | valid PPL | test PPL | test BLEU | valid KL (bits/tok) | "
        "train tok/s | speed vs soft | peak RSS MB |"
    )
    lines = [
        f"`{opts.command}` on {datetime.date.today()}, {machine()}"
        f"{', GPU' if opts.gpu else ', no GPU'}; preset `{opts.preset}`, {opts.max_update} updates of "
        f"{opts.max_tokens}-token batches, seeds {','.join(map(str, seeds))}; mean ± std over seeds; "
        f"total {wall / 60:.1f} min.",
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            "| "
            + " | ".join(
                str(r[k])
                for k in (
                    "variant",
                    "seeds",
                    "valid_ppl",
                    "test_ppl",
                    "test_bleu",
                    "valid_kl_bits",
                    "train_wps",
                    "speed_vs_soft",
                    "peak_rss_mb",
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def prepare_quick_data(out, env):
    return prepare_multi30k(os.path.join(out, "data"), os.path.join(out, "prepare.log"), env, vocab_size=2000)


def run_alignments(rows, opts, env):
    """Heatmaps and AER for seed 1's soft and variational checkpoints."""
    seed = rows[0]["seed"]
    wanted = ("soft", "marginal", "elbo-enum", "elbo-reinforce")
    names = [r["variant"] for r in rows if r["seed"] == seed and row_names.parse(r["variant"]).variant in wanted]
    cmd = [
        sys.executable,
        "-m",
        "varattn_tools.align",
        opts.data,
        "--subset",
        opts.test_subset,
        "--out",
        os.path.join(opts.out, "alignments"),
        "--plot",
        "0,1,3",
    ]
    for n in names:
        save = os.path.join(opts.out, f"{n}-seed{seed}")
        cmd += ["--path", os.path.join(save, "checkpoint_last.pt"), "--name", n]
    if opts.gold:
        cmd += ["--gold", opts.gold]
    run(cmd, os.path.join(opts.out, "alignments.log"), env)
    with open(os.path.join(opts.out, "alignments", "summary.md")) as f:
        return f.read()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="shipped Multi30k (prepared here, 2k pieces), small model, seed 1"
    )
    mode.add_argument("--full", action="store_true", help="the paper's IWSLT preset (a GPU job)")
    parser.add_argument("--data", help="fairseq binary data dir (prepared by varattn_tools.prepare)")
    parser.add_argument("--out", help="default runs/reproduce-quick or runs/reproduce")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--output-layers",
        default="joint",
        help="joint, factored or joint,factored (each variant with each; a row is named "
        "VARIANT-LAYER where LAYER is not the variant's default: soft-factored, marginal-joint)",
    )
    parser.add_argument("--seeds", help="comma-separated (quick: 1,2; full: 1,2,3)")
    parser.add_argument("--max-update", type=int)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--test-subset", default="test")
    parser.add_argument(
        "--gold",
        help="Pharaoh gold alignments of the test subset, for AER (quick mode: the shipped hand-aligned sentences)",
    )
    parser.add_argument(
        "--alignments", action="store_true", help="plot alignments and compute AER (always on with --quick)"
    )
    parser.add_argument("--train-args", default="", help="extra fairseq-train options, quoted")
    parser.add_argument("--generate-args", default="", help="extra fairseq-generate options, quoted")
    parser.add_argument(
        "--results-md",
        help="also write the table here (e.g. examples/translation/results/"
        "output-layers.md, for scripts/readme_results.py)",
    )
    opts = parser.parse_args(argv)
    opts.command = "python examples/translation/reproduce.py " + " ".join(sys.argv[1:] if argv is None else argv)
    opts.preset = "full" if opts.full else "quick"
    quick_defaults = {"seeds": "1", "max_update": 200, "max_tokens": 1000}
    full_defaults = {"seeds": "1,2,3", "max_update": 30_000, "max_tokens": 4000}
    for key, value in (full_defaults if opts.full else quick_defaults).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.out = opts.out or ("runs/reproduce" if opts.full else "runs/reproduce-quick")
    opts.train_args = opts.train_args.split()
    if opts.quick and not opts.generate_args:
        # 200 updates leave models that rarely emit </s>: without a bound,
        # beam search runs every hypothesis to 200 tokens
        opts.generate_args = "--max-len-a 1.2 --max-len-b 10"
    opts.generate_args = opts.generate_args.split()
    variants = opts.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    layers = opts.output_layers.split(",")
    if not layers or set(layers) - {"joint", "factored"}:
        parser.error(f"--output-layers takes joint, factored or both, got {opts.output_layers!r}")
    variants = [run_key(v, layer) for v in variants for layer in layers]
    try:
        seeds = [int(s) for s in opts.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {opts.seeds!r}")
    if opts.max_update < 1 or opts.max_tokens < 1:
        parser.error("--max-update and --max-tokens must be positive")

    import torch

    opts.gpu = torch.cuda.is_available()
    env = cpu_env()
    os.makedirs(opts.out, exist_ok=True)
    if opts.data is None:
        if not opts.quick:
            parser.error("give --data (a prepared fairseq data dir), or use --quick")
        opts.data = prepare_quick_data(opts.out, env)
        if opts.gold is None:
            opts.gold = GOLD
        opts.alignments = True
    elif not os.path.isdir(opts.data) or not any(f.startswith("dict.") for f in os.listdir(opts.data)):
        parser.error(f"--data {opts.data!r} has no fairseq dictionaries (run varattn_tools.prepare)")

    start = time.time()
    rows = []
    total = len(seeds) * len(variants)
    for seed in seeds:
        for name in variants:
            print(f"== [{len(rows) + 1}/{total}] {name}, seed {seed}", flush=True)
            row = run_one(name, seed, opts, env)
            rows.append(row)
            print(
                f"   valid ppl {row['valid_ppl']:.2f}  test ppl {row['test_ppl']:.2f}  "
                f"BLEU {row['test_bleu']:.2f}  {row['train_wps']:.0f} tok/s  "
                f"{row['peak_rss_mb']:.0f} MB  ({row['wall_s']:.0f} s; "
                f"{(time.time() - start) / 60:.1f} min so far)",
                flush=True,
            )

    fields = [
        "variant",
        "seed",
        "valid_ppl",
        "test_ppl",
        "test_bleu",
        "valid_kl_bits",
        "train_wps",
        "peak_rss_mb",
        "peak_cuda_mb",
        "valid_nll_bits",
        "test_nll_bits",
        "train_s",
        "wall_s",
    ]
    with open(os.path.join(opts.out, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    table = aggregate(rows, variants)
    with open(os.path.join(opts.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    text = markdown(table, opts, seeds, time.time() - start)
    if opts.alignments:
        text += "\nAlignments (seed " + str(seeds[0]) + ", teacher-forced on the test references):\n\n"
        text += run_alignments(rows, opts, env)
    for path in filter(None, (os.path.join(opts.out, "results.md"), opts.results_md)):
        with open(path, "w") as f:
            f.write(text)
    print(text)
    bad = [r for r in rows if not (math.isfinite(r["valid_ppl"]) and math.isfinite(r["test_ppl"]))]
    if bad:
        raise SystemExit(f"non-finite PPL in {[(r['variant'], r['seed']) for r in bad]}")


if __name__ == "__main__":
    main()

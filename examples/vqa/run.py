"""Latent region attention on easy-VQA: build the data, train every variant, tabulate.

    python examples/vqa/run.py                      # about 10 minutes on 2 CPU cores
    python examples/vqa/run.py --epochs 1 --variants soft,elbo-enum

For each variant it runs ``fairseq-train --task varattn_vqa --arch
varattn_vqa`` with the same settings, batches and seed, then evaluates the
final checkpoint on easy-VQA's test set: NLL from ``fairseq-validate`` (the
exact marginal under the prior; importance-sampled for dirichlet), VQA
accuracy and attention accuracy (the prior's and q's most probable region
against the gold region) from ``python -m varattn_tools.vqa_eval``.
Writes OUT/results.md, OUT/results.csv.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import sys
import time

from varattn_tools.experiments import TRAIN_LOGGING, cpu_env, read_nll, run, train_wps
from varattn_tools.variants import train_options

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# the variants of varattn_tools.variants that apply to one-token answers
VARIANTS = ["soft", "marginal", "hard-enum", "elbo-enum", "elbo-reinforce", "elbo-gumbel", "dirichlet", "rws"]
TRAIN = [
    "--task",
    "varattn_vqa",
    "--arch",
    "varattn_vqa",
    "--optimizer",
    "adam",
    "--lr",
    "0.003",
    "--clip-norm",
    "5",
    "--batch-size",
    "128",
    *TRAIN_LOGGING,
    "--no-epoch-checkpoints",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/easy-vqa", help="built here if missing")
    parser.add_argument("--out", default="runs/vqa")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    variants = opts.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    env = cpu_env()
    os.makedirs(opts.out, exist_ok=True)
    if not os.path.isfile(os.path.join(opts.data, "answers.txt")):
        print(f"== building easy-VQA in {opts.data}", flush=True)
        run(
            [sys.executable, "-m", "varattn_tools.vqa_data", "easy-vqa", "--out", opts.data],
            os.path.join(opts.out, "build.log"),
            env,
        )

    start = time.time()
    rows = []
    for name in variants:
        print(f"== {name}", flush=True)
        save = os.path.join(opts.out, name)
        shutil.rmtree(save, ignore_errors=True)  # a leftover checkpoint_last.pt would be resumed
        os.makedirs(save)
        common = [opts.data, "--user-dir", os.path.join(REPO, "fairseq_varattn")]
        log = os.path.join(save, "train.log")
        t0 = time.time()
        train = train_options(name, inference_network="answer")
        text = run(
            [
                sys.executable,
                "-m",
                "fairseq_cli.train",
                *common,
                *TRAIN,
                *train,
                "--max-epoch",
                str(opts.epochs),
                "--seed",
                str(opts.seed),
                "--save-dir",
                save,
            ],
            log,
            env,
        )
        wps = train_wps(text, log)
        train_s = time.time() - t0
        ckpt = os.path.join(save, "checkpoint_last.pt")
        log = os.path.join(save, "test.log")
        text = run(
            [
                sys.executable,
                "-m",
                "fairseq_cli.validate",
                *common,
                "--task",
                "varattn_vqa",
                "--path",
                ckpt,
                "--valid-subset",
                "test",
                "--batch-size",
                "256",
                "--seed",
                str(opts.seed),
            ],
            log,
            env,
        )
        nll_bits = read_nll("test", text, log)
        scores_path = os.path.join(save, "test_scores.json")
        run(
            [
                sys.executable,
                "-m",
                "varattn_tools.vqa_eval",
                opts.data,
                "--path",
                ckpt,
                "--subset",
                "test",
                "--json",
                scores_path,
            ],
            os.path.join(save, "eval.log"),
            env,
        )
        with open(scores_path) as f:
            scores = json.load(f)["scores"]
        row = {
            "variant": name,
            "test_nll_nats": nll_bits * 0.6931471805599453,
            "vqa_acc": scores["vqa_acc/all"],
            "attn_acc_prior": scores.get("attn_acc_prior/all", ""),
            "attn_acc_q": scores.get("attn_acc_q/all", ""),
            "train_questions_per_s": wps,
            "train_s": train_s,
        }
        for kind in ("yes/no", "color", "shape"):
            row[f"vqa_acc_{kind}"] = scores.get(f"vqa_acc/{kind}", "")
        rows.append(row)
        prior = row["attn_acc_prior"]
        print(
            f"   NLL {row['test_nll_nats']:.3f}  accuracy {row['vqa_acc']:.2f}  "
            f"attention prior {prior if prior == '' else round(prior, 2)}  ({train_s:.0f} s)",
            flush=True,
        )

    with open(os.path.join(opts.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(value, fmt=".2f"):
        return "-" if value == "" else format(value, fmt)

    lines = [
        f"`{' '.join(['python examples/vqa/run.py'] + (sys.argv[1:] if argv is None else argv))}` on "
        f"{datetime.date.today()}, {platform.machine()} x{os.cpu_count()} CPU cores; easy-VQA test "
        f"(9,673 questions), {opts.epochs} epochs, seed {opts.seed}, 4x4 grid regions; "
        f"total {(time.time() - start) / 60:.1f} min.",
        "",
        "| variant | test NLL (nats) | VQA acc. | yes/no | color | shape | prior attn acc. | q attn acc. | train q/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']}{' (IS NLL)' if r['variant'] == 'dirichlet' else ''} | "
            f"{r['test_nll_nats']:.3f} | {cell(r['vqa_acc'])} | {cell(r['vqa_acc_yes/no'])} | "
            f"{cell(r['vqa_acc_color'])} | {cell(r['vqa_acc_shape'])} | {cell(r['attn_acc_prior'])} | "
            f"{cell(r['attn_acc_q'])} | {r['train_questions_per_s']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    with open(os.path.join(opts.out, "results.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

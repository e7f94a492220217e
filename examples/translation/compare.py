"""Train every variant with the same budget and seed; tabulate validation PPL.

    python examples/translation/compare.py --data runs/multi30k-2k/bin --out runs/compare

Each variant runs ``fairseq-train`` with identical model sizes, optimiser,
batches, seed and number of updates; the exact marginal ``nll_loss`` under
the prior is read from the last validation, so ``ppl`` compares across
criterions.  Writes ``OUT/results.md`` (the README table) and ``results.csv``.
"""

import argparse
import csv
import datetime
import math
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

VARIANTS = {
    "soft": ["--attention", "soft", "--criterion", "cross_entropy"],
    "marginal": ["--attention", "categorical", "--criterion", "varattn_marginal"],
    "hard-enum": ["--attention", "categorical", "--criterion", "varattn_hard", "--estimator", "enum"],
    "hard-reinforce": ["--attention", "categorical", "--criterion", "varattn_hard",
                       "--estimator", "reinforce", "--train-baseline", "--skip-exact-nll-in-training"],
    "elbo-enum": ["--attention", "categorical", "--inference-network", "birnn",
                  "--criterion", "varattn_elbo", "--estimator", "enum"],
    "elbo-reinforce": ["--attention", "categorical", "--inference-network", "birnn",
                       "--criterion", "varattn_elbo", "--estimator", "reinforce", "--train-baseline",
                       "--skip-exact-nll-in-training"],
    "elbo-gumbel": ["--attention", "categorical", "--inference-network", "birnn",
                    "--criterion", "varattn_elbo", "--estimator", "gumbel", "--skip-exact-nll-in-training"],
}

MODEL = ["--arch", "varattn_lstm", "--encoder-embed-dim", "64", "--encoder-hidden-size", "64",
         "--decoder-embed-dim", "64", "--decoder-hidden-size", "128", "--decoder-out-embed-dim", "64",
         "--dropout", "0.2"]


def run_variant(name, opts):
    save = os.path.join(opts.out, name)
    cmd = [sys.executable, "-m", "fairseq_cli.train", opts.data, "--user-dir",
           os.path.join(REPO, "fairseq_varattn"), *MODEL, *VARIANTS[name],
           "--optimizer", "adam", "--lr", str(opts.lr), "--clip-norm", "5",
           "--max-tokens", str(opts.max_tokens), "--max-update", str(opts.max_update),
           "--seed", str(opts.seed), "--num-workers", "0", "--log-interval", "50",
           "--log-format", "simple", "--validate-interval-updates", str(opts.max_update),
           "--save-dir", save, "--no-save"]
    os.makedirs(save, exist_ok=True)
    start = time.time()
    with open(os.path.join(save, "train.log"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.time() - start
    text = open(os.path.join(save, "train.log")).read()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed; see {save}/train.log:\n{text[-2000:]}")
    valid = re.findall(r"valid on 'valid' subset \|.*? nll_loss ([0-9.]+)", text)
    if not valid and "cross_entropy" in VARIANTS[name]:
        # fairseq's cross_entropy logs its nll as `loss` when averaging over tokens
        valid = re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", text)
    wps = re.findall(r"\| train \|.*? wps ([0-9.]+)", text)
    kl = re.findall(r"valid on 'valid' subset \|.*? kl ([0-9.]+)", text)
    nll_bits = float(valid[-1])
    return {"variant": name, "valid_nll_bits": nll_bits, "valid_ppl": 2**nll_bits,
            "valid_kl_bits": float(kl[-1]) if kl else None,
            "train_wps": float(wps[-1]) if wps else None, "wall_s": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fairseq binary data dir")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-update", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    if not os.path.isdir(opts.data):
        parser.error(f"--data {opts.data!r} is not a directory (prepare it with fairseq_varattn.prepare_data)")
    os.makedirs(opts.out, exist_ok=True)
    rows = []
    for name in opts.variants.split(","):
        print(f"== {name}", flush=True)
        rows.append(run_variant(name, opts))
        r = rows[-1]
        print(f"   valid ppl {r['valid_ppl']:.2f}  train wps {r['train_wps']}  wall {r['wall_s']:.0f}s", flush=True)

    with open(os.path.join(opts.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    soft = next((r for r in rows if r["variant"] == "soft"), None)
    lines = [
        f"Valid PPL (exact marginal under the prior) after {opts.max_update} updates of "
        f"{opts.max_tokens}-token batches, seed {opts.seed}; {datetime.date.today()}, "
        f"{platform.machine()} CPU x{os.cpu_count()}.",
        "",
        "| variant | valid PPL | valid KL (bits/token) | train tokens/s | speed vs soft |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        kl = f"{r['valid_kl_bits']:.3f}" if r["valid_kl_bits"] is not None else "-"
        ratio = f"{r['train_wps'] / soft['train_wps']:.2f}" if soft and r["train_wps"] else "-"
        lines.append(f"| {r['variant']} | {r['valid_ppl']:.2f} | {kl} | {r['train_wps']:.0f} | {ratio} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(opts.out, "results.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

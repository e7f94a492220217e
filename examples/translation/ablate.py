"""Why does (or doesn't) the latent alignment learn?  Short runs, one change each.

    python examples/translation/ablate.py --out runs/ablate                 # every ablation
    python examples/translation/ablate.py --out runs/ablate --only base,warm

Each ablation trains ``varattn_lstm`` on the shipped Multi30k De-En (8k
sentencepiece vocabulary, ``prepare_data`` defaults) with the quick preset of
``reproduce.py`` plus its own options, validates every ``--every`` updates,
and records what the latent criterions log to show whether the alignment is
learnt (docs/design.md, "Is the latent attention learning?"): the prior's
entropy against the uniform entropy (log2 of the source length), its largest
probability, the spread of log p(y_j | z_j = i) over i, the posterior's
entropy, KL(q || p) and the exact marginal PPL.  Writes OUT/ablate.md and
OUT/ablate.csv; a finished ablation (its ``row.json``) is not run again.
"""

import argparse
import csv
import json
import os
import re
import sys
import time

from varattn_tools.experiments import REPO, run

USER_DIR = os.path.join(REPO, "fairseq_varattn")

QUICK = ["--arch", "varattn_lstm", "--encoder-embed-dim", "64", "--encoder-hidden-size", "64",
         "--decoder-embed-dim", "64", "--decoder-hidden-size", "128",
         "--decoder-out-embed-dim", "64", "--dropout", "0.2",
         "--optimizer", "adam", "--lr", "0.005", "--clip-norm", "5", "--max-tokens", "1000"]
MARGINAL = ["--attention", "categorical", "--criterion", "varattn_marginal"]
ELBO_RF = ["--attention", "categorical", "--inference-network", "birnn", "--criterion", "varattn_elbo",
           "--estimator", "reinforce", "--train-baseline", "--skip-exact-nll-in-training"]

# name -> (what it tests, extra options); later options override earlier ones
ABLATIONS = {}

KEYS = ("nll_loss", "entropy_p", "entropy_uniform", "prior_maxp", "entropy_post", "logpy_spread",
        "score_spread", "entropy_q", "q_maxp", "kl")


def parse_valid(text):
    """Every validation line's metrics, in order: [(num_updates, {key: value})]."""
    out = []
    for line in re.findall(r"valid on 'valid' subset \|.*", text):
        values = dict(re.findall(r"\| (\w+) ([-0-9.e]+)", line))
        if "num_updates" in values:
            out.append((int(values["num_updates"]), {k: float(v) for k, v in values.items()}))
    return out


def run_one(name, args, opts, data, env):
    save = os.path.join(opts.out, name)
    os.makedirs(save, exist_ok=True)
    cached = os.path.join(save, "row.json")
    cmd = [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", USER_DIR, *QUICK, *args,
           "--max-update", str(opts.max_update), "--validate-interval-updates", str(opts.every),
           "--save-interval-updates", str(opts.every), "--keep-interval-updates", "1",
           "--no-epoch-checkpoints", "--seed", str(opts.seed), "--num-workers", "0",
           "--log-format", "simple", "--log-interval", "100", "--save-dir", save]
    if os.path.isfile(cached):
        with open(cached) as f:
            done = json.load(f)
        if done["cmd"] == cmd[1:]:
            return done["curve"]
    start = time.time()
    text = run(cmd, os.path.join(save, "train.log"), env)
    curve = parse_valid(text)
    with open(cached, "w") as f:
        json.dump({"cmd": cmd[1:], "curve": curve, "wall_s": time.time() - start}, f)
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "ablate"))
    parser.add_argument("--only", default="", help="comma-separated ablation names (default: all)")
    parser.add_argument("--max-update", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500, help="validate every N updates")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    names = [n for n in opts.only.split(",") if n] or list(ABLATIONS)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
    os.makedirs(opts.out, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    data = os.path.join(REPO, "runs", "multi30k_2k", "bin")
    if not os.path.isfile(os.path.join(data, "dict.en.txt")):
        print(f"== preparing data/multi30k -> {data} (sentencepiece 2k joint vocabulary)", flush=True)
        run([sys.executable, "-m", "fairseq_varattn.prepare_data", "--raw-dir",
             os.path.join(REPO, "data", "multi30k"), "--out", os.path.dirname(data),
             "--vocab-size", "2000"], os.path.join(opts.out, "prepare.log"), env)
    rows = []
    for name in names:
        what, args = ABLATIONS[name]
        print(f"== {name}: {what}", flush=True)
        for updates, values in run_one(name, args, opts, data, env):
            row = {"ablation": name, "updates": updates}
            row.update({k: values.get(k, "") for k in KEYS})
            rows.append(row)
            print("   " + " ".join(f"{k}={row[k]}" for k in ("updates",) + KEYS if row[k] != ""), flush=True)
    with open(os.path.join(opts.out, "ablate.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ablation", "updates", *KEYS])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()

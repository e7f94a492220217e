"""The Transformer diagnosis (issue: variational attention stayed uniform on
varattn_transformer): the validation numbers of each ablation run, read from
its fairseq training log, into one JSON and the tables of
examples/translation/README.md ("Why variational attention stayed uniform on
the Transformer").

    python examples/translation/diagnose.py            # runs/abl, runs/tiny -> results/transformer-diagnosis.*

``RUNS`` says what each run changed and which commit's code trained it; the
logs themselves stay in runs/ (not committed).
"""

import argparse
import json
import os

from varattn_tools.fairseq_log import stats

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
KEYS = (
    "entropy_uniform",
    "entropy_p",
    "entropy_q",
    "entropy_post",
    "kl",
    "annot_spread",
    "logpy_spread",
    "qgrad_rec",
    "qgrad_kl",
    "ppl",
)
PRESET = (
    "converge.py's Transformer preset (3+3 layers, 256-d, inverse-sqrt lr 7e-4 after 400 updates), "
    "full Multi30k, seed 1"
)
TINY = (
    "varattn_transformer_tiny (2+2 layers, 64-d), lr 2e-3 inverse-sqrt after 100 updates, the test suite's "
    "2,000 shipped training pairs and 100 validation pairs, seed 3"
)
TINY_PRENORM = TINY.replace("lr 2e-3 inverse-sqrt after 100 updates", "pre-norm layers, lr 5e-3 constant")
# name -> (its training log under --runs, setting, commit, what the run is)
RUNS = {
    "elbo-enum, tanh layer, no warm-up": (
        "abl/enum-base/train.log",
        PRESET,
        "a9a7203",
        "varattn_elbo --estimator enum with a factored tanh layer, no warm-up, q training the annotations",
    ),
    "elbo-enum, KL weight 0": ("abl/enum-kl0/train.log", PRESET, "a9a7203", "the same with --kl-weight 0"),
    "elbo-enum, q = prior x exp(score_q)": (
        "abl/enum-priorplus/train.log",
        PRESET,
        "a9a7203",
        "the same with q's scores added to the prior's (--inference-scores prior-plus, not kept)",
    ),
    "elbo-enum, defaults": (
        "abl/final-enum/train.log",
        PRESET,
        "123d225",
        "varattn_elbo --estimator enum with the defaults: factored linear layer, "
        "automatic warm-up, detached annotations",
    ),
    "elbo-reinforce, defaults": (
        "abl/final-reinforce/train.log",
        PRESET,
        "3d4adc2",
        "varattn_elbo --estimator reinforce --skip-exact-nll-in-training with the "
        "defaults (the warm-up computes the exact marginal all the same)",
    ),
    "soft, defaults": (
        "abl/final-soft/train.log",
        PRESET,
        "123d225",
        "cross_entropy, --attention soft, factored linear layer",
    ),
    "tiny: fairseq transformer": ("tiny/tiny-fs.log", TINY, "123d225", "--arch transformer, cross_entropy"),
    "tiny: soft, joint tanh": (
        "tiny/tiny-joint.log",
        TINY,
        "123d225",
        "soft, --output-layer joint --output-activation tanh",
    ),
    "tiny: soft, factored tanh": (
        "tiny/tiny-fact.log",
        TINY,
        "123d225",
        "soft, --output-layer factored --output-activation tanh",
    ),
    "tiny: soft, factored linear": (
        "tiny/tiny-lineye.log",
        TINY,
        "123d225",
        "soft, the default (factored, linear, W_h from the identity)",
    ),
    "tiny: elbo-enum, no warm-up, q trains annotations": (
        "tiny/tiny-tenumoff.log",
        TINY,
        "123d225",
        "--latent-warmup off --inference-annotations trained",
    ),
    "tiny: elbo-enum, defaults": ("tiny/tiny-tenum.log", TINY, "123d225", "the defaults"),
    "tiny: hand-over forced at 200": (
        "tiny/tiny-hand.log",
        TINY,
        "123d225",
        "the defaults, --latent-warmup-max-updates 200 (q still lagging)",
    ),
    "tiny pre-norm: marginal": ("tiny/tiny-pnmarg.log", TINY_PRENORM, "a9a7203", "varattn_marginal"),
    "tiny pre-norm: warm-up, q trains the annotations": (
        "tiny/tiny-pnauto.log",
        TINY_PRENORM,
        "bbf1f35",
        "elbo-enum, automatic warm-up, --inference-annotations trained",
    ),
    "tiny pre-norm: warm-up, detached annotations": (
        "tiny/tiny-detauto.log",
        TINY_PRENORM,
        "bbf1f35",
        "elbo-enum, automatic warm-up, --inference-annotations detached",
    ),
    "tiny pre-norm: no warm-up, detached annotations": (
        "tiny/tiny-detoff.log",
        TINY_PRENORM,
        "bbf1f35",
        "elbo-enum, --latent-warmup off, detached",
    ),
}


def validations(text):
    """[(updates, {key: value})] of every validation line, in order."""
    return [
        (int(v.values["num_updates"]), {k: x for k in KEYS if isinstance(x := v.values.get(k), float)})
        for v in stats(text, "valid")
    ]


def warmup_updates(text):
    """The last logged update still in the automatic warm-up, or None."""
    found = [int(s.values["num_updates"]) for s in stats(text, "train_inner") if s.values.get("marginal_warmup") == 1.0]
    return found[-1] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="the folder holding abl/ and tiny/")
    opts = parser.parse_args(argv)
    rows = []
    for name, (log, setting, commit, what) in RUNS.items():
        path = os.path.join(opts.runs, log)
        if not os.path.isfile(path):
            print(f"{name}: no log at {path}, skipped")
            continue
        text = open(path, encoding="utf-8").read()
        rows.append(
            {
                "run": name,
                "setting": setting,
                "commit": commit,
                "what": what,
                "last_warmup_update": warmup_updates(text),
                "validations": validations(text),
            }
        )
    with open(os.path.join(RESULTS, "transformer-diagnosis.json"), "w") as f:
        json.dump(rows, f, indent=1)
    lines = [
        "| run | updates | H uniform | H prior | H q | H posterior | KL | annot spread | log p spread "
        "| |grad q| rec | |grad q| KL | valid PPL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for updates, v in row["validations"]:
            cells = [v.get(k) for k in KEYS]
            values = " | ".join("-" if c is None else f"{c:g}" for c in cells)
            lines.append(f"| {row['run']} | {updates} | {values} |")
    notes = [
        f"- {r['run']}: {r['what']}; {r['setting']}; code of {r['commit']}"
        + (f"; automatic warm-up until about update {r['last_warmup_update']}" if r["last_warmup_update"] else "")
        for r in rows
    ]
    text = (
        "Validation numbers of each run (entropies and KL in bits per target token; `annot spread`, "
        "`log p spread` and q's gradient norms as the criterions log them).\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(notes)
        + "\n"
    )
    with open(os.path.join(RESULTS, "transformer-diagnosis.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

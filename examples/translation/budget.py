"""The Transformer rows at a fixed budget (``results/transformer-4epochs/``):
runs trained for a set number of epochs, evaluated as converge.py evaluates
its runs, side by side in one table.

    python examples/translation/budget.py add transformer-soft-linear 1 runs/abl/final-soft --note "..."
    python examples/translation/budget.py table     # results/transformer-4epochs/table.md

``add`` reads RUN_DIR/train.log and RUN_DIR/checkpoint_best.pt (train them with
converge.py's Transformer options and ``--max-epoch N``) and writes
results/transformer-4epochs/NAME-seedS.json with the commit it was evaluated at.
"""

import argparse
import datetime
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import converge  # noqa: E402  (the same evaluation as the converged runs)

RESULTS = os.path.join(HERE, "results", "transformer-4epochs")


def add(opts, env):
    log = os.path.join(opts.run_dir, "train.log")
    text = open(log, encoding="utf-8").read()
    row = {
        "variant": opts.name,
        "seed": opts.seed,
        "output_layer": opts.output_layer,
        "train_cmd": opts.train_cmd or "",
        **converge.parse_training(text),
        "stopped_by": converge.training_status(text),
        "commit": converge.commit(),
        "train_seconds": converge.training_seconds(text),
        "note": opts.note,
    }
    work = os.path.join(opts.run_dir, "eval")
    os.makedirs(work, exist_ok=True)
    converge.evaluate(
        row,
        os.path.join(opts.run_dir, "checkpoint_best.pt"),
        work,
        opts,
        env,
        opts.latent,
        hypotheses=os.path.join(RESULTS, "hyps", f"{opts.name}-seed{opts.seed}.txt"),
    )
    row["date"] = str(datetime.date.today())
    row["machine"] = f"{platform.machine()} x{os.cpu_count()} CPU cores"
    with open(os.path.join(RESULTS, f"{opts.name}-seed{opts.seed}.json"), "w") as f:
        json.dump(row, f, indent=1)
    print(f"{opts.name} seed {opts.seed}: test ppl {row['test_ppl']:.2f}, BLEU {row['test_bleu']:.2f}")


def significance(rows, baseline="transformer"):
    """{variant: paired-bootstrap p-value of its BLEU difference from ``baseline``
    seed 1} for the rows whose translations are kept (varattn_tools.significance)."""
    from varattn_tools.significance import paired_bleu, read_lines

    kept = {
        r["variant"]: os.path.join(HERE, r["test_hypotheses"])
        for r in rows
        if r.get("test_hypotheses") and r["seed"] == 1
    }
    if baseline not in kept:
        return {}
    others = {name: read_lines(path) for name, path in kept.items() if name != baseline}
    if not others:
        return {}
    out = paired_bleu(read_lines(converge.RAW_TEST_REF), read_lines(kept[baseline]), others)
    return {name: r["p_value"] for name, r in out.items()}


def table():
    rows = sorted(
        (json.load(open(os.path.join(RESULTS, f))) for f in os.listdir(RESULTS) if f.endswith(".json")),
        key=lambda r: (r["variant"], r["seed"]),
    )
    lines = [
        "| variant | output layer | seed | epochs | valid PPL | test PPL | BLEU | p (BLEU vs transformer) "
        "| H prior (bits) | H q (bits) | AER soft | AER prior | AER q | AER exact posterior |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    p_values = significance(rows)
    for r in rows:
        cells = (
            [r.get(k) for k in ("valid_ppl", "test_ppl", "test_bleu")]
            + [p_values.get(r["variant"])]
            + [
                r.get(k)
                for k in (
                    "valid_entropy_p",
                    "valid_entropy_q",
                    "aer_soft",
                    "aer_prior",
                    "aer_posterior",
                    "aer_posterior_exact",
                )
            ]
        )
        lines.append(
            f"| {r['variant']} | {r['output_layer']} | {r['seed']} | {r['epochs_run']} | "
            + " | ".join(
                "-" if c is None else f"{c:.3f}" if isinstance(c, float) and c < 1 else f"{c:.2f}" for c in cells
            )
            + " |"
        )
    notes = [f"- {r['variant']} seed {r['seed']}: {r['note']}" for r in rows if r.get("note")]
    text = (
        "Every row trained for 4 epochs on converge.py's Transformer preset (no early stopping), evaluated "
        "at its best epoch as converge.py evaluates (test_2016_flickr, beam 5, sacreBLEU; entropies on "
        "valid).  p: sacreBLEU's paired bootstrap (1000 resamples) of the row's BLEU against fairseq's "
        "`transformer`, where both rows kept their translations.  How each run went (commits, "
        "options): `results/transformer-4epochs/notes.md`.\n\n" + "\n".join(lines) + "\n"
    )
    with open(os.path.join(RESULTS, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "notes.md"), "w") as f:
        f.write(
            "# How each 4-epoch Transformer run went\n\nGenerated by `budget.py table` from the result "
            "JSONs beside this file.\n\n" + "\n".join(notes) + "\n"
        )
    print(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add")
    a.add_argument("name")
    a.add_argument("seed", type=int)
    a.add_argument("run_dir")
    a.add_argument("--note", default="")
    a.add_argument("--output-layer", default="factored (linear)")
    a.add_argument("--train-cmd", default="")
    a.add_argument("--latent", action="store_true", help="score the prior, q and the exact posterior")
    a.add_argument("--data-root", default=os.path.join("runs", "multi30k"))
    sub.add_parser("table")
    opts = parser.parse_args(argv)
    if opts.command == "table":
        table()
        return
    env = converge.cpu_env(threads=1)
    opts.data = converge.prepare(opts.data_root, env)
    add(opts, env)


if __name__ == "__main__":
    main()

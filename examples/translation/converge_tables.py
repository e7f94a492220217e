"""converge.py's tables, notes and figures from the finished results: the
family's table with paired-bootstrap p-values, the top-level README's
headline, each run's provenance, and the learning curves."""

import json
import os
import statistics

import converge_plan as plan
from converge_plan import BASELINE, HEADLINE_ROWS, NOTES, PLANS

from varattn_tools.experiments import mean_spread
from varattn_tools.rows import MAX_EPOCH, PATIENCE

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
    # std over i of log p(y_j | z_j = i): near 0, the output ignores the alignment
    ("log p(y given z) spread (nats)", "valid_logpy_spread", ".2f"),
    ("AER soft", "aer_soft", ".3f"),
    ("AER prior", "aer_prior", ".3f"),
    ("AER q", "aer_posterior", ".3f"),
    ("AER exact posterior", "aer_posterior_exact", ".3f"),
    ("train tok/s", "train_wps", ".0f"),
    ("best epoch", "best_epoch", ".1f"),
    ("epochs run", "epochs_run", ".1f"),
]

# columns a family's table leaves out while none of its results has them
# (results from before the field was recorded)
OPTIONAL = {"valid_logpy_spread"}

# the Dirichlet row's numbers do not mean what the categorical rows' do
DIRICHLET_NOTE = (
    "- dirichlet: its PPLs are importance-sampled (16 draws from (q + p) / 2 per token, an "
    "upper bound on the exact PPL in expectation), and its H prior and H q are the differential "
    "entropies of the Dirichlet densities over the simplex (negative when they are "
    "concentrated), not entropies of a categorical alignment: they do not compare with the "
    "other rows'; its AERs read the argmax of the Dirichlets' means"
)

# results scored before the gold grew past its first 24 sentences do not say so
OLD_GOLD_SENTENCES = 24


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


def bleu_p_values(rows, baseline):
    """{(variant, seed): p} -- sacreBLEU's paired bootstrap p-value of each row's
    BLEU difference from ``baseline`` trained with the same seed, for the rows
    whose test translations are kept (``test_hypotheses``) on both sides."""
    from varattn_tools.significance import paired_bleu, read_lines

    kept = {
        (r["variant"], r["seed"]): os.path.join(plan.HERE, r["test_hypotheses"])
        for r in rows
        if r.get("test_hypotheses")
    }
    references = None
    out = {}
    for seed in sorted({s for _, s in kept}):
        base = kept.get((baseline, seed))
        others = {v: path for (v, s), path in kept.items() if s == seed and v != baseline}
        if base is None or not others:
            continue
        references = references or read_lines(plan.RAW_TEST_REF)
        tested = paired_bleu(references, read_lines(base), {v: read_lines(path) for v, path in others.items()})
        out.update({(v, seed): r["p_value"] for v, r in tested.items()})
    return out


def p_text(p):
    """A p-value to 3 decimals; one that rounds to 0.000 is "< 0.001" (a
    p-value is never 0)."""
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


def p_cell(p_values, name, runs):
    """One table cell: the p-values of a row's seeds, in seed order ("-" where none)."""
    found = [
        p_values[(name, r["seed"])] for r in sorted(runs, key=lambda r: r["seed"]) if (name, r["seed"]) in p_values
    ]
    return ", ".join(p_text(p) for p in found) or "-"


def aer_cell(runs, key, fmt):
    """An AER: with one seed and a recorded interval, "AER [95% bootstrap interval over
    sentences]"; over seeds, mean ± std."""
    interval = runs[0].get(f"{key}_interval") if len(runs) == 1 else None
    if interval is None or runs[0].get(key) is None:
        return mean_spread([r.get(key) for r in runs], fmt)
    low, high = interval
    return f"{format(runs[0][key], fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def load_results(folder):
    """Every result JSON in ``folder``, in file-name order (none if it does not exist yet)."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [json.load(open(os.path.join(folder, f))) for f in names if f.endswith(".json")]


def finished(family):
    return [r for r in load_results(plan.RESULTS) if r["variant"] in PLANS[family]]


def table(family="lstm"):
    rows = finished(family)
    if not rows:
        return "No finished runs yet.\n"
    baseline = BASELINE[family]
    p_values = bleu_p_values(rows, baseline)
    columns = [c for c in COLUMNS if c[1] not in OPTIONAL or any(r.get(c[1]) is not None for r in rows)]
    # the p column follows BLEU
    at = next(i for i, c in enumerate(columns) if c[1] == "test_bleu") + 1
    header = [c[0] for c in columns]
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
            for _, key, fmt in columns
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
    notes_file = os.path.relpath(NOTES[family], plan.HERE)
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
        f"{r.get('note') or training_history(r)}"
        f" AER scored on {r.get('aer_sentences') or OLD_GOLD_SENTENCES} hand-aligned sentences."
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def training_history(row) -> str:
    """How a run without a hand-written note was trained, from its recorded
    ``invocations`` (fairseq-train starts; results from before the field say
    nothing of resumes)."""
    parts = [p for p in row.get("invocations") or [] if p.get("first_epoch") is not None]
    if not row.get("invocations"):
        return "no record of resumes (a result from before converge.py kept them)."
    if len(parts) <= 1:
        code = f" with commit {parts[0]['commit']}" if parts and parts[0].get("commit") else ""
        return f"trained in one go{code}."
    spans = []
    for k, part in enumerate(parts):
        last = parts[k + 1]["first_epoch"] - 1 if k + 1 < len(parts) else row.get("epochs_run")
        code = f", commit {part['commit']}" if part.get("commit") else ", commit not logged"
        spans.append(f"epochs {part['first_epoch']}-{last} from {part['start']}{code}")
    return (
        f"trained in {len(parts)} parts, each resumed from checkpoint_last.pt (a partly trained "
        f"epoch is trained again): {'; '.join(spans)}."
    )


def welch_p(a, b):
    """Two-sided Welch t-test p-value over seeds (None with fewer than 2 seeds a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def headline(family="lstm"):
    """A top-level README table: the family's main rows against its baseline.
    Test PPL's p is Welch's t-test over seeds ("-" below 2 seeds a side); BLEU's
    is Welch's for the LSTM (whose early runs did not keep their translations)
    and sacreBLEU's paired bootstrap seed by seed for the Transformer."""
    rows = finished(family)
    baseline = BASELINE[family]
    base = [r for r in rows if r["variant"] == baseline]
    paired = family != "lstm"
    p_values = bleu_p_values(rows, baseline) if paired else {}
    # the Transformer's table starts with fairseq's own model
    arch = "`varattn_lstm`" if family == "lstm" else "model"
    bleu_p = "p (paired bootstrap, per seed)" if paired else "p"
    lines = [
        f"| {arch} | seeds | test PPL | p | sacreBLEU | {bleu_p} | AER of its alignment |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in HEADLINE_ROWS[family]:
        runs = [r for r in rows if r["variant"] == name]
        if not runs:
            continue
        label = "fairseq's `transformer`" if name == "transformer" else name

        def welch_cell(key):
            p = None if name == baseline else welch_p([r[key] for r in runs], [r[key] for r in base])
            return "-" if p is None else p_text(p)

        cells = [label, str(len(runs)), mean_spread([r["test_ppl"] for r in runs], ".2f"), welch_cell("test_ppl")]
        cells.append(mean_spread([r["test_bleu"] for r in runs], ".2f"))
        cells.append(p_cell(p_values, name, runs) if paired else welch_cell("test_bleu"))
        # soft attention and fairseq's cross-attention show their attention; latent rows the exact posterior
        latent = any(r.get("aer_posterior_exact") is not None for r in runs)
        aer_key, what = ("aer_posterior_exact", "exact posterior") if latent else ("aer_soft", "soft attention")
        if name == "transformer":
            what = "its last layer's cross-attention, averaged over heads"
        cells.append(f"{aer_cell(runs, aer_key, '.3f')} ({what})")
        lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "No finished runs yet.\n"
    if paired:
        how = (
            f'p: Welch\'s t-test over seeds of test PPL against {baseline} ("-" below 2 seeds a side) and '
            f"sacreBLEU's paired bootstrap of each seed's BLEU against {baseline} with the same seed"
        )
    else:
        how = f"p: Welch's t-test over seeds against {baseline}"
    command = "converge.py table" + ("" if family == "lstm" else f" --family {family}")
    return (
        "Multi30k De-En, trained to convergence (early stopping on valid PPL), mean ± std over seeds; "
        f"{how}; {gold_phrase(rows)}.  All rows and columns: `examples/translation/README.md` "
        f"(`{command}`).\n\n" + "\n".join(lines) + "\n"
    )


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

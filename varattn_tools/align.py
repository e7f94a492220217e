"""Dump, plot and score the alignments of trained checkpoints.

    python -m varattn_tools.align DATA --path soft/checkpoint_last.pt \
        --path elbo/checkpoint_last.pt --subset test --out runs/align \
        --plot 0,1,2 --gold examples/translation/gold/test_2016_flickr.de-en.pharaoh

For every checkpoint and sentence of ``--subset`` (teacher-forced on the
reference) it records the attention the model computes: soft attention for
``--attention soft``, the prior p(z | x) (its mean for Dirichlet) for latent
models, the posterior q(z | x, y) when the model has an inference
network, and the exact posterior p(z_j | x, y_<=j) of categorical models.
Writes ``alignments.jsonl`` (piece-level matrices),
``summary.json`` / ``summary.md`` (sharpness, and AER when ``--gold`` is
given) and one PNG heatmap per ``--plot`` sentence.

Gold alignments are Pharaoh lines ``i-j`` (sure) or ``i?j`` (possible),
source word i to target word j, words being whitespace tokens of the raw
text, one line per sentence of the subset in order; an empty line leaves
that sentence unscored.  Model alignments are made word-level by averaging
a target word's pieces and summing a source word's pieces, then each target
word links to its most probable source word (the usual attention AER).
"""

import argparse
import json
import logging
import os
import sys
from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch

from fairseq_varattn.alignments import (  # noqa: F401  (word_ids, exact_posterior: this tool's API too)
    alignment_matrices,
    attention_label,
    exact_posterior,
    hard_links,
    kinds_of,
    word_ids,
    word_matrix,
)

Q_PANEL = "posterior q(z|x,y)"
EXACT_PANEL = "exact posterior p(z|x,y)"
# summary rows name each panel's role, so that scripts read the numbers they
# want without parsing display labels; every other panel is the model's own
# attention (soft attention, the prior, or a Transformer's cross-attention)
ROLES = {Q_PANEL: "q", EXACT_PANEL: "exact_posterior"}

logger = logging.getLogger("varattn_tools.align")

Links = Set[Tuple[int, int]]


# -- alignment error rate -----------------------------------------------------------
def parse_pharaoh(line: str) -> Tuple[Links, Links]:
    """``"0-0 1?2"`` -> (sure, possible); possible includes sure (Och & Ney 2003)."""
    sure, possible = set(), set()
    for item in line.split():
        sep = "?" if "?" in item else "-"
        try:
            i, j = (int(x) for x in item.split(sep))
        except ValueError:
            raise ValueError(f"bad Pharaoh link {item!r} (expected i-j or i?j)") from None
        possible.add((i, j))
        if sep == "-":
            sure.add((i, j))
    return sure, possible


def read_gold(path: str) -> List[Optional[Tuple[Links, Links]]]:
    with open(path, encoding="utf-8") as f:
        return [parse_pharaoh(line) if line.strip() else None for line in f.read().splitlines()]


def alignment_counts(hyp: Links, sure: Links, possible: Links) -> Tuple[int, int, int, int]:
    """(|A & S|, |A & P|, |A|, |S|) of one sentence."""
    return len(hyp & sure), len(hyp & possible), len(hyp), len(sure)


def aer_of_counts(counts) -> float:
    a_s, a_p, a, s = (sum(c[k] for c in counts) for k in range(4))
    if a + s == 0:
        raise ValueError("no links to score")
    return 1.0 - (a_s + a_p) / (a + s)


def paired_aer_p(pairs_a, pairs_b, resamples: int = 1000, seed: int = 1) -> float:
    """Two-sided paired bootstrap p-value of the AER difference of two
    alignments of the same sentences (resampling sentences, as ``alignment_scores``)."""
    import random

    a = [alignment_counts(*p) for p in pairs_a]
    b = [alignment_counts(*p) for p in pairs_b]
    if len(a) != len(b) or not a:
        raise ValueError(f"paired AERs need the same sentences on both sides ({len(a)} and {len(b)})")
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        ids = [rng.randrange(len(a)) for _ in a]
        diffs.append(aer_of_counts([a[k] for k in ids]) - aer_of_counts([b[k] for k in ids]))
    below = sum(d <= 0 for d in diffs) / resamples
    above = sum(d >= 0 for d in diffs) / resamples
    return min(1.0, 2 * min(below, above))


def alignment_scores(pairs: Iterable[Tuple[Links, Links, Links]], resamples: int = 1000, seed: int = 1) -> dict:
    """Corpus AER with a 95% percentile bootstrap interval over sentences,
    precision |A & P| / |A| and recall |A & S| / |S| (Och & Ney 2003)."""
    import random

    counts = [alignment_counts(*p) for p in pairs]
    if not counts:
        raise ValueError("no sentences to score")
    rng = random.Random(seed)
    samples = sorted(aer_of_counts([rng.choice(counts) for _ in counts]) for _ in range(resamples))
    a_s, a_p, a, s = (sum(c[k] for c in counts) for k in range(4))
    return {
        "aer": aer_of_counts(counts),
        "aer_low": samples[int(0.025 * resamples)],
        "aer_high": samples[int(0.975 * resamples) - 1],
        "precision": a_p / a if a else 0.0,
        "recall": a_s / s if s else 0.0,
        "sentences": len(counts),
    }


def error_breakdown(pairs: Iterable[Tuple[Links, Links, Links]]) -> dict:
    """Where (hyp, sure, possible) triples disagree, in counts of links:

    - ``wrong_unaligned``: a link of a target word the gold leaves unaligned;
    - ``wrong_adjacent``: a wrong link one source word away from a gold link of its target word;
    - ``wrong_other``: any other link outside the possible ones;
    - ``missed_multi``: a missed sure link of a target word with several sure links
      (one link per target word, as the models give, cannot have them all);
    - ``missed_other``: any other missed sure link."""
    out = dict.fromkeys(("wrong_unaligned", "wrong_adjacent", "wrong_other", "missed_multi", "missed_other"), 0)
    for hyp, sure, possible in pairs:
        gold_sources = {}
        for i, j in possible:
            gold_sources.setdefault(j, set()).add(i)
        sure_count = {}
        for _, j in sure:
            sure_count[j] = sure_count.get(j, 0) + 1
        for i, j in hyp - possible:
            if j not in gold_sources:
                out["wrong_unaligned"] += 1
            elif any(abs(i - g) == 1 for g in gold_sources[j]):
                out["wrong_adjacent"] += 1
            else:
                out["wrong_other"] += 1
        for i, j in sure - hyp:
            out["missed_multi" if sure_count[j] > 1 else "missed_other"] += 1
    return out


def alignment_error_rate(pairs: Iterable[Tuple[Links, Links, Links]]) -> float:
    """Corpus AER = 1 - (|A & S| + |A & P|) / (|A| + |S|) over (hyp, sure, possible) triples."""
    return aer_of_counts([alignment_counts(*p) for p in pairs])


def mean_entropy(matrix: torch.Tensor) -> float:
    p = matrix.clamp_min(0)
    return float(-(p * p.clamp_min(1e-30).log()).sum(1).mean())


# -- running a checkpoint ----------------------------------------------------------------
def load(path: str, data: str):
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    model = models[0].eval()
    return model, task


def panel_label(model, kind: str) -> str:
    """The display label of one alignment kind (fairseq_varattn.alignments.KINDS)."""
    return {"attention": attention_label(model), "q": Q_PANEL, "posterior": EXACT_PANEL}[kind]


@torch.no_grad()
def alignments_of(model, task, subset: str, max_sentences: Optional[int], kinds=None) -> Dict[int, dict]:
    """sentence id -> {src, tgt pieces, panels {label: (N, T) matrix}}."""
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    wanted = range(len(dataset) if max_sentences is None else min(max_sentences, len(dataset)))
    kinds = kinds_of(model) if kinds is None else list(kinds)
    out = {}
    for start in range(0, len(wanted), 32):
        sample = dataset.collater([dataset[i] for i in wanted[start : start + 32]])
        target = sample["target"]
        net = sample["net_input"]
        panels = {panel_label(model, k): m for k, m in alignment_matrices(model, net, target, kinds).items()}
        for b, sid in enumerate(sample["id"].tolist()):
            src_keep = net["src_tokens"][b].ne(src_dict.pad()) & net["src_tokens"][b].ne(src_dict.eos())
            tgt_keep = target[b].ne(tgt_dict.pad()) & target[b].ne(tgt_dict.eos())
            out[sid] = {
                "src": [src_dict[t] for t in net["src_tokens"][b][src_keep].tolist()],
                "tgt": [tgt_dict[t] for t in target[b][tgt_keep].tolist()],
                "panels": {k: v[b][tgt_keep][:, src_keep].cpu() for k, v in panels.items()},
            }
    return out


# -- output -----------------------------------------------------------------------------------
def plot_sentence(sid: int, records: List[Tuple[str, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    panels = [
        (f"{name}: {label}", rec["src"], rec["tgt"], m) for name, rec in records for label, m in rec["panels"].items()
    ]
    src, tgt = panels[0][1], panels[0][2]
    width = max(4.0, 0.32 * len(src) + 1.5)
    height = max(3.0, 0.3 * len(tgt) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, (title, s, t, m) in zip(axes[0], panels):
        ax.imshow(m.numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(s)), s, rotation=90, fontsize=7)
        ax.set_yticks(range(len(t)), t, fontsize=7)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"sentence {sid}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(name: str, aligned: Dict[int, dict], gold) -> List[dict]:
    rows = []
    labels = next(iter(aligned.values()))["panels"].keys()
    for label in labels:
        entropies, maxima, scored = [], [], []
        for sid, rec in aligned.items():
            m = rec["panels"][label]
            entropies.append(mean_entropy(m))
            maxima.append(float(m.max(1).values.mean()))
            if gold is not None and sid < len(gold) and gold[sid] is not None:
                words = word_matrix(m, word_ids(rec["tgt"]), word_ids(rec["src"]))
                scored.append((hard_links(words), *gold[sid]))
        row = {
            "checkpoint": name,
            "alignment": label,
            "role": ROLES.get(label, "attention"),
            "sentences": len(aligned),
            "entropy_nats": sum(entropies) / len(entropies),
            "max_prob": sum(maxima) / len(maxima),
        }
        if scored:
            scores = alignment_scores(scored)
            row["aer"] = scores["aer"]
            row["aer_low"], row["aer_high"] = scores["aer_low"], scores["aer_high"]
            row["aer_sentences"] = len(scored)
        rows.append(row)
    return rows


def markdown(rows: List[dict]) -> str:
    lines = [
        "| checkpoint | alignment | mean entropy (nats) | mean max prob | AER [95% bootstrap interval] (sentences) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        aer = f"{r['aer']:.3f} [{r['aer_low']:.3f}, {r['aer_high']:.3f}] ({r['aer_sentences']})" if "aer" in r else "-"
        lines.append(
            f"| {r['checkpoint']} | {r['alignment']} | {r['entropy_nats']:.3f} | {r['max_prob']:.3f} | {aer} |"
        )
    return "\n".join(lines) + "\n"


def parse_ids(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sentence ids, got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="fairseq binary data dir the checkpoints were trained on")
    parser.add_argument(
        "--path",
        action="append",
        required=True,
        help="checkpoint; repeat to compare models (e.g. soft and variational)",
    )
    parser.add_argument("--name", action="append", help="label per --path (default: its folder name)")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-sentences", type=int, help="only the first N sentences")
    parser.add_argument("--plot", type=parse_ids, default=[], help="sentence ids to draw, e.g. 0,1,2")
    parser.add_argument("--gold", help="Pharaoh gold alignments (i-j sure, i?j possible) for AER")
    args = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout, force=True
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    import fairseq_varattn  # noqa: F401  (registers the plugin, safe globals)

    if args.name and len(args.name) != len(args.path):
        parser.error("give one --name per --path")
    names = args.name or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in args.path]
    gold = read_gold(args.gold) if args.gold else None
    os.makedirs(args.out, exist_ok=True)

    runs, rows = [], []
    for name, path in zip(names, args.path):
        model, task = load(path, args.data)
        logger.info("%s: %s, %s", name, path, attention_label(model))
        aligned = alignments_of(model, task, args.subset, args.max_sentences)
        missing = [sid for sid in args.plot if sid not in aligned]
        if missing:
            parser.error(f"--plot ids {missing} are not in {args.subset} (it has {len(aligned)} sentences)")
        runs.append((name, aligned))
        rows.extend(summarise(name, aligned, gold))

    with open(os.path.join(args.out, "alignments.jsonl"), "w", encoding="utf-8") as f:
        for name, aligned in runs:
            for sid in sorted(aligned):
                rec = aligned[sid]
                f.write(
                    json.dumps(
                        {
                            "checkpoint": name,
                            "id": sid,
                            "src": rec["src"],
                            "tgt": rec["tgt"],
                            "alignments": {
                                k: [[round(x, 5) for x in row] for row in v.tolist()] for k, v in rec["panels"].items()
                            },
                        }
                    )
                    + "\n"
                )
    for sid in args.plot:
        png = os.path.join(args.out, f"sentence-{sid}.png")
        plot_sentence(sid, [(name, aligned[sid]) for name, aligned in runs], png)
        logger.info("wrote %s", png)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()

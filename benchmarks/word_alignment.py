"""Word alignments of this project's models against eflomal, a dedicated statistical aligner, on one gold.

    python benchmarks/word_alignment.py \\
        --model elbo-enum=runs/converge/transformer-elbo-enum-seed1 \\
        --model soft=runs/converge/transformer-soft-seed1 \\
        --data runs/multi30k/bin --sentencepiece-model runs/multi30k/spm.model \\
        --out benchmarks/results/word-alignment

eflomal (``pip install eflomal``, a benchmark-only dependency: IBM1 + HMM +
fertility, Östling & Tiedemann 2016) aligns Multi30k's training text plus
test_2016_flickr in both directions, as its users run it: words are
whitespace tokens, lower-cased, with punctuation stripped at word edges (a
token that is all punctuation is kept, so word indices stay those of the raw
text).  Each ``--model NAME=DIR[:REVERSE_DIR]`` aligns test_2016_flickr's raw
text with every alignment it has (its attention or prior, q, the exact
posterior); with a reverse (target-to-source) model its alignments are
symmetrised too, as hard links (intersection, union, grow-diag-final-and)
and by agreement (the two posteriors multiplied, each English word linked
to its argmax: ``fairseq_varattn.alignments.agreement``).  Every row is scored on the same hand-aligned test sentences
(``examples/translation/gold``): AER with a 95% bootstrap interval over
sentences, precision, recall, and alignment time per 1,000 sentence pairs
(eflomal: its whole run over the 30,000 pairs; models: the 1,000 test
pairs, batch 32, on this machine's CPU).
"""

import argparse
import gzip
import json
import os
import platform
import string
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools.align import alignment_scores, error_breakdown, paired_aer_p, read_gold  # noqa: E402
from varattn_tools.experiments import git_commit  # noqa: E402
from varattn_tools.symmetrize import METHODS, flip, parse, symmetrize  # noqa: E402

RAW = os.path.join(REPO, "data", "multi30k")
GOLD = os.path.join(REPO, "examples", "translation", "gold", "test_2016_flickr.de-en.pharaoh")


def raw_lines(split, lang):
    with gzip.open(os.path.join(RAW, f"{split}.{lang}.gz"), "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def eflomal_tokens(line: str) -> str:
    """Lower-cased whitespace tokens, punctuation stripped at word edges, indices kept."""
    out = []
    for token in line.split():
        stripped = token.strip(string.punctuation + "„“”‚‘’«»").lower()
        out.append(stripped or token.lower())
    return " ".join(out)


def run_eflomal(src, tgt, workdir):
    """Forward and reverse links (both source-target, as eflomal writes them) and the seconds taken."""
    from eflomal import Aligner

    fwd, rev = os.path.join(workdir, "fwd"), os.path.join(workdir, "rev")
    start = time.time()
    Aligner().align(
        [eflomal_tokens(s) for s in src],
        [eflomal_tokens(t) for t in tgt],
        links_filename_fwd=fwd,
        links_filename_rev=rev,
    )
    seconds = time.time() - start
    with open(fwd, encoding="utf-8") as f, open(rev, encoding="utf-8") as r:
        return [parse(x) for x in f.read().splitlines()], [parse(x) for x in r.read().splitlines()], seconds


def model_alignments(model_dir, data, spm, sources, targets):
    """kind -> the ``Alignment`` of each pair, and seconds per 1000 pairs."""
    from fairseq_varattn import hub

    model = hub.from_pretrained(model_dir, "checkpoint_best.pt", data, bpe="sentencepiece", sentencepiece_model=spm)
    out, seconds = {}, {}
    model.align(sources[:8], targets[:8])  # the first call's one-off costs are not alignment time
    for kind in model.alignment_kinds():
        start = time.time()
        aligned = model.align(sources, targets, kind=kind, batch_size=32)
        seconds[kind] = 1000 * (time.time() - start) / len(sources)
        out[kind] = aligned
    return out, seconds


def links_of(aligned):
    return [set(a.links()) for a in aligned]


def gold_pairs(links, gold):
    return [(links[sid], *gold[sid]) for sid in range(min(len(gold), len(links))) if gold[sid] is not None]


def score(name, links, gold, per_1000, against=None):
    """A row's AER, precision, recall, errors and time; with ``against`` (the
    gold pairs of eflomal's grow-diag-final-and), its paired bootstrap p."""
    pairs = gold_pairs(links, gold)
    row = {"row": name, **alignment_scores(pairs), **error_breakdown(pairs), "seconds_per_1000": per_1000}
    if against is not None:
        row["p_vs_eflomal"] = paired_aer_p(pairs, against)
    return row


def _p(p):
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _p_cell(row):
    """A model row's paired bootstrap p against eflomal ("-" for eflomal's rows and older results)."""
    if "p_vs_eflomal" not in row:
        return "-"
    return "< 0.001" if row["p_vs_eflomal"] < 0.001 else f"{row['p_vs_eflomal']:.3f}"


def markdown(result):
    lines = [
        f"`python benchmarks/word_alignment.py` on {result['date']} ({result['commit']}), "
        f"{result['machine']}; gold: {result['gold_sentences']} hand-aligned sentences of test_2016_flickr "
        f"({result['gold_sure']} sure, {result['gold_possible']} possible links); AER with its 95% bootstrap "
        "interval over sentences (1000 resamples).",
        "",
        "| alignment | AER [95% interval] | p (AER vs eflomal's grow-diag-final-and) | precision | recall "
        "| seconds per 1,000 pairs |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['row']} | {r['aer']:.3f} [{r['aer_low']:.3f}, {r['aer_high']:.3f}] | {_p_cell(r)} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['seconds_per_1000']:.1f} |"
        )
    if all("wrong_other" in r for r in result["rows"]):
        lines += [
            "",
            "Where the errors are (links; `varattn_tools.align.error_breakdown`): wrong links of target "
            "words the gold leaves unaligned, wrong links one source word from a gold link, other wrong "
            "links; missed sure links of target words with several sure links, other missed sure links.",
            "",
            "| alignment | wrong: gold-unaligned | wrong: adjacent | wrong: other | missed: multi-link | "
            "missed: other |",
            "|---|---|---|---|---|---|",
        ]
        keys = ("wrong_unaligned", "wrong_adjacent", "wrong_other", "missed_multi", "missed_other")
        lines += [f"| {r['row']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in result["rows"]]
    tested = [r for r in result["rows"] if "p_vs_grow_diag_final_and" in r]
    if tested:
        lines += [""] + [
            f"- {r['row']} against grow-diag-final-and of the same two directions: paired bootstrap "
            f"p {_p(r['p_vs_grow_diag_final_and'])} (1000 resamples of the sentences)"
            for r in tested
        ]
    lines += ["", *[f"- {n}" for n in result.get("notes", [])]]
    return "\n".join(lines).rstrip() + "\n"


def summary(result):
    """The README's rows: eflomal in the models' direction and symmetrised, and the best model row."""
    rows = result["rows"]
    keep = [r for r in rows if r["row"].startswith("eflomal, de→en") or r["row"] == "eflomal, grow-diag-final-and"]
    models = []
    for r in rows:
        name = r["row"].split(",")[0]
        if name != "eflomal" and name not in models:
            models.append(name)
    if models:
        keep.append(min((r for r in rows if r["row"].split(",")[0] in models), key=lambda r: r["aer"]))
    lines = [
        "| alignment | AER [95% interval] | p (vs eflomal's grow-diag-final-and) | precision | recall |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['row']} | {r['aer']:.3f} [{r['aer_low']:.3f}, {r['aer_high']:.3f}] | {_p_cell(r)} | "
        f"{r['precision']:.3f} | {r['recall']:.3f} |"
        for r in keep
    ]
    return (
        f"{result['gold_sentences']} hand-aligned test sentences, {result['date']} ({result['commit']}); "
        "the best model row; all rows and timings: `benchmarks/README.md`.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=MODEL_DIR[:REVERSE_MODEL_DIR]")
    parser.add_argument("--data", default="runs/multi30k/bin", help="dictionaries of the De-En models")
    parser.add_argument("--reverse-data", help="dictionaries of the En-De models (default: --data)")
    parser.add_argument("--sentencepiece-model", default="runs/multi30k/spm.model")
    parser.add_argument("--train-lines", type=int, default=None, help="only the first N training pairs (tests)")
    parser.add_argument("--test-lines", type=int, default=None, help="only the first N test pairs (tests)")
    parser.add_argument("--note", action="append", default=[], help="a line under the table")
    parser.add_argument("--out", required=True, help="writes OUT.json, OUT.md and OUT-summary.md")
    parser.add_argument("--render", action="store_true", help="only rewrite OUT.md and OUT-summary.md from OUT.json")
    opts = parser.parse_args(argv)
    if opts.render:
        with open(opts.out + ".json") as f:
            result = json.load(f)
        for path, text in ((opts.out + ".md", markdown(result)), (opts.out + "-summary.md", summary(result))):
            with open(path, "w") as f:
                f.write(text)
        return
    gold = read_gold(GOLD)
    src_test, tgt_test = (
        raw_lines("test_2016_flickr", "de")[: opts.test_lines],
        raw_lines("test_2016_flickr", "en")[: opts.test_lines],
    )
    src_train, tgt_train = raw_lines("train", "de")[: opts.train_lines], raw_lines("train", "en")[: opts.train_lines]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        fwd, rev, seconds = run_eflomal(src_train + src_test, tgt_train + tgt_test, work)
    per_1000 = 1000 * seconds / len(fwd)
    n = len(src_train)
    fwd, rev = fwd[n:], rev[n:]
    rows.append(score("eflomal, de→en (each English word's link)", fwd, gold, per_1000))
    rows.append(score("eflomal, en→de", rev, gold, per_1000))
    combined = {method: [symmetrize(f, r, method) for f, r in zip(fwd, rev)] for method in METHODS}
    for method in METHODS:
        rows.append(score(f"eflomal, {method}", combined[method], gold, per_1000))
    # every model row is tested against the best-known way to use eflomal
    eflomal = gold_pairs(combined["grow-diag-final-and"], gold)
    for spec in opts.model:
        name, _, dirs = spec.partition("=")
        forward_dir, _, reverse_dir = dirs.partition(":")
        aligned, seconds = model_alignments(forward_dir, opts.data, opts.sentencepiece_model, src_test, tgt_test)
        links = {kind: links_of(a) for kind, a in aligned.items()}
        for kind, kind_links in links.items():
            rows.append(score(f"{name}, {kind}, de→en", kind_links, gold, seconds[kind], eflomal))
        if reverse_dir:
            back, back_seconds = model_alignments(
                reverse_dir, opts.reverse_data or opts.data, opts.sentencepiece_model, tgt_test, src_test
            )
            for kind in [k for k in links if k in back]:
                reverse = [flip(x) for x in links_of(back[kind])]
                rows.append(score(f"{name}, {kind}, en→de", reverse, gold, back_seconds[kind], eflomal))
                both = seconds[kind] + back_seconds[kind]
                sym = {method: [symmetrize(f, r, method) for f, r in zip(links[kind], reverse)] for method in METHODS}
                for method in METHODS:
                    rows.append(score(f"{name}, {kind}, {method}", sym[method], gold, both, eflomal))
                agreed = links_of([f.agreement(r) for f, r in zip(aligned[kind], back[kind])])
                rows.append(score(f"{name}, {kind}, agreement", agreed, gold, both, eflomal))
                gdfa = sym["grow-diag-final-and"]
                rows[-1]["p_vs_grow_diag_final_and"] = paired_aer_p(gold_pairs(agreed, gold), gold_pairs(gdfa, gold))
    scored = [g for g in gold if g is not None]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(REPO),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "command": " ".join(["python", "benchmarks/word_alignment.py", *(argv or sys.argv[1:])]),
        "train_pairs": n,
        "test_pairs": len(src_test),
        "gold_sentences": len(scored),
        "gold_sure": sum(len(s) for s, _ in scored),
        "gold_possible": sum(len(p - s) for s, p in scored),
        "rows": rows,
        "notes": opts.note,
    }
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(opts.out + ".md", "w") as f:
        f.write(table)
    with open(opts.out + "-summary.md", "w") as f:
        f.write(summary(result))
    print(table)


if __name__ == "__main__":
    main()

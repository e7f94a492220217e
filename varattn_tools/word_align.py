"""Word alignments of a parallel corpus from a trained checkpoint, one Pharaoh line per pair.

    varattn-word-align runs/demo/model --source test.de --target test.en --out test.de-en.align
    varattn-word-align CKPT_DIR --checkpoint-file checkpoint_best.pt --data runs/multi30k/bin \\
        --sentencepiece-model runs/multi30k/spm.model --source test.de --target test.en --kind q
    varattn-word-align CKPT_DIR --data runs/multi30k/bin --subset test --out test.align   # a binarised split

Reads raw text (plain or .gz, one sentence per line; the model's
sentencepiece model is applied) and writes ``i-j`` links, source word i to
target word j, words being whitespace tokens, as fast_align and eflomal
write them: each target word linked to its most probable source word under
the exact posterior p(z_j | x, y_<=j) (``--kind posterior``, the default for
categorical attention), q(z | x, y) (``q``) or the model's attention or
prior (``attention``).  ``--soft`` writes every link with its weight,
``i-j:0.731`` (weights >= ``--min-weight``).  Every input line gets one
output line, in order; an empty line on either side gives an empty line.
With ``--subset``, the pairs are a binarised split of ``--data`` instead
(its sentencepiece pieces spell the words), in the split's order.
With ``--reverse-model DIR`` (a target-to-source model), each pair is also
aligned in the other direction and the two posteriors are combined before
deciding (``--kind``'s matrices multiplied, each target word linked to the
source word both support most: ``fairseq_varattn.alignments.agreement``),
which aligns better than symmetrising two hard alignments
(benchmarks/README.md, "Word alignment against eflomal").  Symmetrise two
hard alignments with ``varattn-symmetrize``.
"""

import argparse
import gzip
import logging
import os
import sys
import time

logger = logging.getLogger("varattn_tools.word_align")


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def soft_line(weights, min_weight: float) -> str:
    """``i-j:w`` for every weight w >= min_weight of a (target words, source words) matrix."""
    return " ".join(
        f"{i}-{j}:{float(weights[j, i]):.3f}"
        for j in range(weights.size(0))
        for i in range(weights.size(1))
        if weights[j, i] >= min_weight
    )


def align_corpus(
    model,
    sources,
    targets,
    kind=None,
    soft=False,
    min_weight=0.1,
    batch_size=32,
    chunk=1000,
    progress=None,
    reverse=None,
):
    """One output line per pair, in order (empty for pairs with an empty side);
    ``reverse``: a target-to-source model whose alignments are combined with
    the model's (``Alignment.agreement``)."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source lines but {len(targets)} target lines")
    lines = [""] * len(sources)
    todo = [k for k, (s, t) in enumerate(zip(sources, targets)) if s.strip() and t.strip()]
    start = time.time()
    for first in range(0, len(todo), chunk):
        ids = todo[first : first + chunk]
        batch_src, batch_tgt = [sources[k] for k in ids], [targets[k] for k in ids]
        aligned = model.align(batch_src, batch_tgt, kind=kind, batch_size=batch_size)
        if reverse is not None:
            back = reverse.align(batch_tgt, batch_src, kind=kind, batch_size=batch_size)
            aligned = [a.agreement(b) for a, b in zip(aligned, back)]
        for k, alignment in zip(ids, aligned):
            lines[k] = soft_line(alignment.weights, min_weight) if soft else alignment.pharaoh()
        if progress is not None:
            done = first + len(ids)
            progress(f"{done}/{len(todo)} pairs aligned, {done / max(time.time() - start, 1e-9):.0f} pairs/s")
    return lines


def align_split(opts):
    """Pharaoh lines of a binarised split, in the split's order (varattn-align's batch path)."""
    from fairseq_varattn import alignments

    from .align import alignments_of, load, panel_label

    model, task = load(os.path.join(opts.model_dir, opts.checkpoint_file), opts.data)
    kinds = alignments.kinds_of(model)
    kind = opts.kind or ("posterior" if "posterior" in kinds else "attention")
    if kind not in kinds:
        sys.exit(f"error: --kind {kind}: this checkpoint has {', '.join(kinds)}")
    label = panel_label(model, kind)
    aligned = alignments_of(model, task, opts.subset, None, kinds=[kind])
    lines = []
    for sid in range(len(aligned)):
        rec = aligned[sid]
        words = alignments.word_alignment(rec["panels"][label], rec["src"], rec["tgt"])
        hard = alignments.pharaoh(alignments.hard_links(words))
        lines.append(soft_line(words, opts.min_weight) if opts.soft else hard)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model_dir",
        help="folder of the checkpoint (and, as fairseq's released models, dict.*.txt and sentencepiece.bpe.model)",
    )
    parser.add_argument("--checkpoint-file", default="checkpoint_best.pt")
    parser.add_argument("--data", default=".", help="folder of the dictionaries (default: the model directory)")
    parser.add_argument("--sentencepiece-model", help="default: MODEL_DIR/sentencepiece.bpe.model")
    parser.add_argument("--source", help="source text, one sentence per line")
    parser.add_argument("--target", help="target text, as many lines")
    parser.add_argument("--subset", help="align a binarised split of --data (e.g. test) instead of text")
    parser.add_argument("--out", required=True, help="Pharaoh output, one line per pair")
    parser.add_argument(
        "--kind",
        choices=["posterior", "q", "attention"],
        help="default: posterior for categorical attention, else attention",
    )
    parser.add_argument(
        "--reverse-model",
        help="folder of a target-to-source checkpoint: combine both directions' alignments of --kind "
        "(their product) before linking each target word",
    )
    parser.add_argument("--reverse-checkpoint-file", default="checkpoint_best.pt")
    parser.add_argument("--reverse-data", help="the reverse model's dictionaries (default: --data)")
    parser.add_argument("--soft", action="store_true", help="write i-j:weight for every weight >= --min-weight")
    parser.add_argument("--min-weight", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    opts = parser.parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO, stream=sys.stderr, force=True
    )
    if opts.subset:
        if opts.reverse_model:
            parser.error("--reverse-model aligns raw text: give --source and --target")
        if opts.source or opts.target or opts.data == ".":
            parser.error("--subset aligns a split of --data DIR: give --data, not --source/--target")
        lines = align_split(opts)
        with open(opts.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        logger.info("wrote %d lines to %s", len(lines), opts.out)
        return
    if not (opts.source and opts.target):
        parser.error("give --source and --target (or --subset)")
    sources, targets = read_lines(opts.source), read_lines(opts.target)
    if len(sources) != len(targets):
        parser.error(f"{opts.source} has {len(sources)} lines but {opts.target} has {len(targets)}")

    from fairseq_varattn import hub

    spm = opts.sentencepiece_model or os.path.join(opts.model_dir, "sentencepiece.bpe.model")
    if not os.path.isfile(spm):
        parser.error(
            f"no sentencepiece model {spm!r}: pass --sentencepiece-model (varattn-prepare wrote OUT/spm.model)"
        )
    try:
        model = hub.from_pretrained(
            opts.model_dir, opts.checkpoint_file, opts.data, bpe="sentencepiece", sentencepiece_model=spm
        )
        kinds = model.alignment_kinds()
        reverse = None
        if opts.reverse_model:
            reverse = hub.from_pretrained(
                opts.reverse_model,
                opts.reverse_checkpoint_file,
                opts.reverse_data or opts.data,
                bpe="sentencepiece",
                sentencepiece_model=spm,
            )
            pair, back = (
                (model.cfg.task.source_lang, model.cfg.task.target_lang),
                (
                    reverse.cfg.task.source_lang,
                    reverse.cfg.task.target_lang,
                ),
            )
            if back != pair[::-1]:
                raise ValueError(
                    f"--reverse-model translates {back[0]}->{back[1]}, but the model {pair[0]}->{pair[1]}: "
                    f"the reverse model must translate {pair[1]}->{pair[0]}"
                )
            kinds = [k for k in kinds if k in reverse.alignment_kinds()]
        if opts.kind is not None and opts.kind not in kinds:
            raise ValueError(
                f"--kind {opts.kind}: {'these checkpoints have' if reverse else 'this checkpoint has'} "
                f"{', '.join(kinds)} (q needs --inference-network, posterior --attention categorical)"
            )
        logger.info(
            "%s: %d pairs, alignment %s",
            opts.model_dir,
            len(sources),
            opts.kind or ("posterior" if "posterior" in kinds else "attention"),
        )
        start = time.time()
        kind = opts.kind or ("posterior" if "posterior" in kinds else "attention")
        lines = align_corpus(
            model,
            sources,
            targets,
            kind,
            opts.soft,
            opts.min_weight,
            opts.batch_size,
            progress=logger.info,
            reverse=reverse,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    assert len(lines) == len(sources)
    with open(opts.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    elapsed = time.time() - start
    logger.info(
        "wrote %d lines to %s in %.1f s (%.1f s per 1000 pairs)",
        len(lines),
        opts.out,
        elapsed,
        1000 * elapsed / max(len(lines), 1),
    )


if __name__ == "__main__":
    main()

"""How converge.py evaluates a checkpoint: PPL on every sentence, the
validation diagnostics, sacreBLEU of beam-5 translations and the alignment
scores on the hand-aligned test sentences."""

import gzip
import json
import os
import shutil
import sys

import converge_plan as plan
from converge_logs import validation_diagnostics

from varattn_tools.experiments import git_commit, read_nll, run, validate_command


def commit():
    """The repository's commit, recorded with each result."""
    return git_commit(plan.REPO)


def sacrebleu_score(generate_text, work):
    """Detokenised hypotheses in corpus order, scored against the raw references."""
    hyps = {}
    for line in generate_text.splitlines():
        if line.startswith("D-"):
            sid, _, text = line[2:].split("\t", 2)
            hyps[int(sid)] = text
    with gzip.open(plan.RAW_TEST_REF, "rt", encoding="utf-8") as f:
        refs = f.read().splitlines()
    if sorted(hyps) != list(range(len(refs))):
        raise RuntimeError(f"{len(hyps)} hypotheses for {len(refs)} references")
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score([hyps[i] for i in range(len(refs))], [refs])
    with open(os.path.join(work, "hyp.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(hyps[i] for i in range(len(refs))) + "\n")
    return score.score, str(bleu.get_signature())


def gold_lines():
    """Lines of the gold file: the test sentences to align (empty ones are unscored)."""
    with open(plan.GOLD, encoding="utf-8") as f:
        return len(f.read().splitlines())


def alignment_scores(data, ckpt, work, env, latent):
    """AER and entropy of each panel of the alignment tool: the model's own
    attention (the prior if ``latent``, else soft attention), q's posterior
    and the exact posterior."""
    out = os.path.join(work, "alignments")
    run(
        [
            sys.executable,
            "-m",
            "varattn_tools.align",
            data,
            "--subset",
            "test",
            "--path",
            ckpt,
            "--name",
            "model",
            "--out",
            out,
            "--gold",
            plan.GOLD,
            "--max-sentences",
            str(gold_lines()),
            "--plot",
            "0,1,3",
        ],
        os.path.join(work, "alignments.log"),
        env,
    )
    with open(os.path.join(out, "summary.json")) as f:
        rows = json.load(f)
    scores = {}
    for row in rows:
        key = {"q": "posterior", "exact_posterior": "posterior_exact"}.get(row["role"], "prior" if latent else "soft")
        scores[f"aer_{key}"] = row.get("aer")
        if "aer_low" in row:  # its 95% bootstrap interval over sentences
            scores[f"aer_{key}_interval"] = [row["aer_low"], row["aer_high"]]
        scores["aer_sentences"] = row.get("aer_sentences")
        scores[f"test_entropy_{key}_nats"] = row["entropy_nats"]
    return scores


def perplexity(subset, ckpt, work, opts, env):
    """PPL of ``ckpt`` on every sentence of ``subset`` (fairseq-validate with
    the run's own criterion; its log goes to ``work``), and that log."""
    log = os.path.join(work, f"{subset}.log")
    text = run(validate_command(opts.data, plan.USER_DIR, ckpt, subset, 3000, 1), log, env)
    return 2 ** read_nll(subset, text, log), text


def evaluate(row, ckpt, work, opts, env, latent, hypotheses=None):
    """Fill ``row`` with what a result records of checkpoint ``ckpt``: valid
    and test PPL on every sentence, the validation diagnostics, sacreBLEU of
    beam-5 translations and the alignment scores (their logs go to ``work``).
    The detokenised translations are copied to ``hypotheses``, kept with the
    results so that BLEU differences can be tested sentence by sentence."""
    common = [opts.data, "--user-dir", plan.USER_DIR]
    # Training validates on fairseq's default batches, which leave out a last
    # batch whose size is not a multiple of 8 (fairseq issue #5036): the same
    # for every variant, so early stopping is like for like, but the numbers
    # reported are measured again here on every sentence.
    every = ["--required-batch-size-multiple", "1"]
    for subset in ("valid", "test"):
        row[f"{subset}_ppl"], text = perplexity(subset, ckpt, work, opts, env)
        if subset == "valid":
            row.update(validation_diagnostics(text))
    gen = run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.generate",
            *common,
            *every,
            "--path",
            ckpt,
            "--gen-subset",
            "test",
            "--beam",
            "5",
            "--batch-size",
            "64",
            "--post-process",
            "sentencepiece",
            "--num-workers",
            "0",
        ],
        os.path.join(work, "generate.log"),
        env,
    )
    row["test_bleu"], row["bleu_signature"] = sacrebleu_score(gen, work)
    if hypotheses is not None:
        os.makedirs(os.path.dirname(hypotheses), exist_ok=True)
        shutil.copyfile(os.path.join(work, "hyp.txt"), hypotheses)
        row["test_hypotheses"] = os.path.relpath(hypotheses, plan.HERE)
    row.update(alignment_scores(opts.data, ckpt, work, env, latent))

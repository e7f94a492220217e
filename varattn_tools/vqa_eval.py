"""VQA accuracy of a ``varattn_vqa`` checkpoint, overall and per answer type.

    python -m varattn_tools.vqa_eval DATA --path checkpoints/checkpoint_best.pt --subset test

Prints (and with ``--json FILE`` writes) the standard VQA accuracy
min(#annotators who gave the predicted answer / 3, 1) in %, per answer type
(from the annotations' ``answer_type``), and, when DATA/gold_regions.json
exists, attention accuracy: how often the prior's (and q's) most probable
region is the gold region.
"""

import argparse
import json
import logging
import os
import sys
from collections import defaultdict

import torch


def evaluate(model, task, subset, batch_size=256):
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    totals = defaultdict(float)
    counts = defaultdict(int)
    model.eval()
    for start in range(0, len(dataset), batch_size):
        sample = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        result = task.evaluate(model, sample)
        for b, index in enumerate(sample["id"].tolist()):
            kind = dataset.answer_type(index)
            for key in ("vqa_acc", "attn_acc_prior", "attn_acc_q"):
                if key in result:
                    totals[(key, "all")] += float(result[key][b])
                    totals[(key, kind)] += float(result[key][b])
            counts["all"] += 1
            counts[kind] += 1
    return {f"{key}/{kind}": 100.0 * value / counts[kind] for (key, kind), value in totals.items()}, dict(counts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--path", required=True, help="varattn_vqa checkpoint")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)

    from fairseq import checkpoint_utils

    import fairseq_varattn  # noqa: F401  (registers the task and model; safe globals)

    if not os.path.isfile(args.path):
        parser.error(f"checkpoint {args.path!r} does not exist")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([args.path], arg_overrides={"data": args.data})
    if not hasattr(task, "evaluate"):
        parser.error(f"{args.path} is not a varattn_vqa checkpoint (task {task.__class__.__name__})")
    with torch.no_grad():
        scores, counts = evaluate(models[0], task, args.subset)
    kinds = ["all"] + sorted(k for k in counts if k != "all")
    print(f"{args.subset}: {counts['all']} questions")
    print("| answer type | questions | VQA accuracy | prior attention acc. | q attention acc. |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        cells = [
            f"{scores[f'{key}/{kind}']:.2f}" if f"{key}/{kind}" in scores else "-"
            for key in ("vqa_acc", "attn_acc_prior", "attn_acc_q")
        ]
        print(f"| {kind} | {counts[kind]} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scores": scores, "counts": counts}, f, indent=1)


if __name__ == "__main__":
    main()

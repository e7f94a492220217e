"""Beam-5 generation of trained checkpoints on real test sentences.

speed.py times beam search on untrained models and a stand-in lexical table
(the sentence-shortlist layer's worst case, |U| = T K); this times the
checkpoints themselves, on the test split of their data, where U is the real
table's.  Every row decodes the same batches to the same fixed length, so
the rows do the same number of steps; rows are interleaved batch by batch,
and a row's speed against the first is the median, with quartiles, of the
ratios on each (batch, repeat).  A checkpoint of the sentence-shortlist layer also gets a row
``NAME-summed``, its beam-search mixture with R_j summed over the words
outside U for every token (``_mixture_in_place_summed``), and an accuracy
pass: how far the log-softmax's mass is from 1, how many tokens the fast
path sums the outside words of, and the largest difference between the paths.

    python benchmarks/beam_checkpoints.py --data runs/multi30k-quarter/bin \\
        --checkpoints soft=runs/screen/soft-seed1/checkpoint_best.pt,\\
sentence128=runs/screen/marginal-sentence128-seed1/checkpoint_best.pt \\
        --json benchmarks/results/beam-checkpoints.json
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from varattn_tools.experiments import write_result  # noqa: E402


def quartiles(values):
    return statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3


def load(path, data):
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    return models[0].eval(), task


def test_batches(task, sentences, count):
    task.load_dataset("test")
    itr = task.get_batch_iterator(
        dataset=task.dataset("test"), max_sentences=sentences, required_batch_size_multiple=1
    ).next_epoch_itr(shuffle=False)
    return [batch for _, batch in zip(range(count), itr)]


def beam(model, task, length):
    """Beam 5 where every hypothesis runs ``length`` steps (then its end of
    sentence), so every row and repeat does the same steps; built outside
    the timed regions."""
    from fairseq.sequence_generator import SequenceGenerator

    return SequenceGenerator(
        [model], task.target_dictionary, beam_size=5, min_len=length, max_len_b=length, max_len_a=0
    )


def decode(generator, batches):
    import torch

    with torch.no_grad():
        for batch in batches:
            generator.generate(generator.model.models, batch)


def is_sentence_layer(model):
    from fairseq_varattn.modules.sentence_shortlist import SentenceShortlistOutputLayer

    head = getattr(model.decoder, "head", None)
    return head is not None and isinstance(head.output, SentenceShortlistOutputLayer)


class MixturePath:
    """Which beam-search mixture the sentence-shortlist layer calls."""

    def __init__(self):
        from fairseq_varattn.modules import sentence_shortlist

        self.module = sentence_shortlist
        self.fast = sentence_shortlist.mixture_in_place

    def use(self, summed):
        self.module.mixture_in_place = self.module._mixture_in_place_summed if summed else self.fast


def accuracy(generator, batches, path):
    """The fast mixture against the summed one on every call of a beam
    search: the log-softmax's mass error, the tokens whose R_j the fast
    path sums over the outside words, the largest difference."""

    stats = {"tokens": 0, "summed_tokens": 0, "largest_mass_error": 0.0, "largest_difference": 0.0}
    module = path.module
    sensitive = module._sensitive_tokens

    def counted(*args):
        out = sensitive(*args)
        stats["summed_tokens"] += int(out.sum())
        return out

    def checked(a, selection, log_w):
        summed = module._mixture_in_place_summed(a.clone(), selection, log_w)
        stats["tokens"] += a.size(0) * a.size(1)
        stats["largest_mass_error"] = max(
            stats["largest_mass_error"], float((a.double().exp().sum(-1) - 1).abs().max())
        )
        out = path.fast(a, selection, log_w)
        stats["largest_difference"] = max(stats["largest_difference"], float((out - summed).abs().max()))
        return out

    module.mixture_in_place, module._sensitive_tokens = checked, counted
    try:
        decode(generator, batches)
    finally:
        module._sensitive_tokens = sensitive
        path.use(summed=False)
    stats["summed_fraction"] = round(stats["summed_tokens"] / max(1, stats["tokens"]), 4)
    return stats


def mixture_calls(generator, batches, path, repeats):
    """The sentence-shortlist mixture alone: the inputs of every call of one
    beam search, captured, then each path run over all of them, the fast and
    the summed interleaved, ``repeats`` times.  A whole beam search on this
    machine moves by several percent from run to run; this isolates the part
    that differs between the layers.  Returns ms per call (medians) and the
    per-repeat ratio summed / fast."""
    module, captured = path.module, []

    def capture(a, selection, log_w):
        captured.append((a.clone(), selection, log_w.clone()))
        return path.fast(a, selection, log_w)

    module.mixture_in_place = capture
    try:
        decode(generator, batches)
    finally:
        path.use(summed=False)

    def run(fn):
        start = time.perf_counter()
        for a, selection, log_w in captured:
            fn(a.clone(), selection, log_w)
        return time.perf_counter() - start

    copies = [run(lambda *args: None) for _ in range(3)]
    times = {"fast": [], "summed": []}
    for _ in range(repeats):
        times["fast"].append(run(path.fast))
        times["summed"].append(run(module._mixture_in_place_summed))
    copy = statistics.median(copies)
    per_call = {k: round((statistics.median(v) - copy) * 1000 / len(captured), 3) for k, v in times.items()}
    ratios = [s / f for f, s in zip(times["fast"], times["summed"])]
    return {
        "calls": len(captured),
        "ms_per_call": per_call,
        "summed_over_fast": round(statistics.median(ratios), 3),
        "fast_faster_in": f"{sum(r > 1 for r in ratios)}/{len(ratios)}",
    }


def breakdown(generator, batches, path, repeats):
    """Wall time of the parts of one beam search over ``batches``, ms summed
    over its steps (median of ``repeats``): each part is a method of the
    model's own modules (or the sentence layer's mixture) wrapped in a timer
    on the instance, so nothing else changes; "generator" is the rest of
    fairseq's beam search."""
    spent = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    model = generator.model.models[0]
    decoder, head = model.decoder, getattr(model.decoder, "head", None)
    parts = [
        ("encoder", model.encoder, "forward"),
        ("decoder body", decoder, "extract_features"),
        ("normalise", decoder, "get_normalized_probs"),
        ("reorder states", decoder, "reorder_incremental_state"),
    ]
    if head is not None:
        parts.append(("output", head, "output_logits"))
        for name, method in (("output: decoder logits", "decoder_logits"), ("output: source side", "source_cache")):
            if hasattr(head.output, method):
                parts.append((name, head.output, method))
    for name, owner, method in parts:
        setattr(owner, method, timed(name, getattr(owner, method)))
    if is_sentence_layer(model):
        path.module.mixture_in_place = timed("output: mixture", path.fast)
    runs = []
    try:
        for _ in range(repeats):
            spent.clear()
            start = time.perf_counter()
            decode(generator, batches)
            total = time.perf_counter() - start
            inner = sum(v for k, v in spent.items() if not k.startswith("output:"))
            runs.append({"total": total, **spent, "generator": total - inner})
    finally:
        for _, owner, method in parts:
            delattr(owner, method)  # the class's method again
        path.use(summed=False)
    return {k: round(statistics.median(r.get(k, 0.0) for r in runs) * 1000, 1) for k in runs[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the binarised data the checkpoints were trained on")
    parser.add_argument("--checkpoints", required=True, help="NAME=PATH,...; the first is the baseline")
    parser.add_argument("--sentences", type=int, default=64, help="sentences a batch")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--length", type=int, default=16, help="every hypothesis is decoded to this length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--mixture-repeats",
        type=int,
        default=0,
        help="also time the sentence-shortlist mixture alone on one beam search's calls, this many times",
    )
    parser.add_argument(
        "--breakdown-repeats",
        type=int,
        default=0,
        help="also time the parts of every row's beam search (encoder, decoder body, output, ...), this many times",
    )
    parser.add_argument("--note", default="", help="how the machine was shared, for the JSON")
    parser.add_argument("--json")
    opts = parser.parse_args()

    import torch

    import fairseq_varattn  # noqa: F401  (registers the plugin's models)

    torch.set_num_threads(opts.threads)
    paths = dict(item.split("=", 1) for item in opts.checkpoints.split(","))
    models, task = {}, None
    for name, path in paths.items():
        models[name], task = load(path, opts.data)
    batches = test_batches(task, opts.sentences, opts.batches)
    generators = {name: beam(model, task, opts.length) for name, model in models.items()}
    mixture = MixturePath()
    rows = []  # (row, model name, summed)
    for name, model in models.items():
        rows.append((name, name, False))
        if is_sentence_layer(model):
            rows.append((f"{name}-summed", name, True))

    def run(model_name, summed, batch):
        mixture.use(summed)
        start = time.perf_counter()
        decode(generators[model_name], [batch])
        mixture.use(summed=False)
        return time.perf_counter() - start

    for row in rows:  # warm-up, not timed
        run(*row[1:], batches[0])
    # rows interleaved batch by batch: this machine's speed drifts by tens of
    # percent over seconds, so each row is compared with the first on the
    # same batch moments apart, and the ratio is the median of those pairs
    seconds = {row[0]: [[] for _ in batches] for row in rows}
    for _ in range(opts.repeats):
        for b, batch in enumerate(batches):
            for row in rows:
                seconds[row[0]][b].append(run(*row[1:], batch))
    sentences = sum(len(b["id"]) for b in batches)
    first = seconds[rows[0][0]]

    def summary(times):
        totals = [sum(t[r] for t in times) for r in range(opts.repeats)]
        pairs = [f[r] / t[r] for f, t in zip(first, times) for r in range(opts.repeats)]
        return {
            "sentences_per_s": round(sentences / statistics.median(totals), 1),
            "speed_vs_first": round(statistics.median(pairs), 3),
            "speed_vs_first_quartiles": [round(q, 3) for q in quartiles(pairs)],
            "seconds": [round(t, 3) for t in totals],
        }

    results = {row: summary(times) for row, times in seconds.items()}
    checks = {
        name: accuracy(generators[name], batches, mixture) for name, model in models.items() if is_sentence_layer(model)
    }
    mixtures = {
        name: mixture_calls(generators[name], batches, mixture, opts.mixture_repeats)
        for name, model in models.items()
        if opts.mixture_repeats and is_sentence_layer(model)
    }
    parts = {
        name: breakdown(generators[name], batches, mixture, opts.breakdown_repeats)
        for name, model in models.items()
        if opts.breakdown_repeats
    }
    print(
        f"beam 5, {sentences} test sentences in {len(batches)} batches, {opts.length} steps, {opts.threads} thread(s)"
    )
    print(f"| row | sentences/s | speed vs {rows[0][0]} | quartiles |")
    print("|---|---|---|---|")
    for row, r in results.items():
        low, _, high = r["speed_vs_first_quartiles"]
        print(f"| {row} | {r['sentences_per_s']} | {r['speed_vs_first']:.2f} | {low:.2f}-{high:.2f} |")
    for name, stats in checks.items():
        print(f"{name}: {json.dumps(stats)}")
    for name, stats in parts.items():
        print(f"{name}, ms per part: {json.dumps(stats)}")
    for name, stats in mixtures.items():
        print(f"{name}, the mixture alone: {json.dumps(stats)}")
    if opts.json:
        fields = {
            "torch": torch.__version__,
            "checkpoints": paths,
            "sizes": {
                k: getattr(opts, k)
                for k in (
                    "sentences",
                    "batches",
                    "length",
                    "repeats",
                    "mixture_repeats",
                    "breakdown_repeats",
                    "threads",
                )
            },
            "results": results,
            "accuracy": checks,
            "mixture_alone": mixtures,
            "breakdown_ms": parts,
            "note": opts.note,
        }
        write_result(opts.json, "benchmarks/beam_checkpoints.py", sys.argv[1:], fields, REPO)


if __name__ == "__main__":
    main()

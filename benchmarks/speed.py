"""Training speed and peak memory of every variant, side by side in one run.

    python benchmarks/speed.py                      # IWSLT-like sizes: V=10k, T=N=30
    python benchmarks/speed.py --variants lstm,soft # the foundation check only
    python benchmarks/speed.py --breakdown          # + forward, backward and the latent parts

Each variant trains on the same random batches (forward, backward, Adam
step); the timed steps are interleaved round-robin across variants so
machine noise hits all of them alike.  Speed is reported as target tokens/s
and as a ratio to ``soft`` (``varattn_lstm --attention soft``).  Peak memory
is measured in a fresh subprocess per variant: CUDA's max allocated bytes on
a GPU, else the peak RSS (VmHWM, reset after the model is built) over the
post-build RSS (Linux), with glibc's mmap threshold fixed so that the RSS
follows the live tensors.
"""

import argparse
import collections
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.data import Dictionary
from fairseq.models.lstm import LSTMModel
from fairseq.models.lstm import base_architecture as lstm_base
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import base_architecture as transformer_base
from fairseq.sequence_generator import SequenceGenerator

import fairseq_varattn  # noqa: F401
from fairseq_varattn.models.inference_network import InferenceNetwork, TransformerInferenceNetwork
from fairseq_varattn.models.varattn_lstm import VarAttnLSTMModel, varattn_lstm_iwslt_de_en
from fairseq_varattn.models.varattn_lstm import base_architecture as varattn_base
from fairseq_varattn.models.varattn_transformer import VarAttnTransformerModel
from fairseq_varattn.models.varattn_transformer import base_architecture as varattn_transformer_base
from fairseq_varattn.modules.factored_output import FactoredOutputLayer
from fairseq_varattn.modules.lexical import spread_table
from fairseq_varattn.modules.output_layer import AlignmentOutputLayer
from fairseq_varattn.modules.shortlist_output import ShortlistOutputLayer
from varattn_tools import rows, variants
from varattn_tools.experiments import HEAP_MALLOC, append_markdown, git_commit, machine

# Rows are named as every results table names them (varattn_tools/rows.py):
# "soft" is varattn_lstm's soft attention (joint layer), a latent variant alone
# has the factored layer ("-joint": the paper's joint layer), "-rR" and "-topK"
# add --factored-source-rank R and --alignment-topk K, "transformer-VARIANT" is
# varattn_transformer (factored, linear), "lstm" and "transformer" are
# fairseq's own models of the same size.  Tables before 2026-12-06 named the
# same rows factored-VARIANT, VARIANT (joint) and transformer-factored-VARIANT.
DEFAULT_ROWS = [
    "soft",
    "marginal-joint",
    "soft-factored",
    "marginal",
    "hard-enum",
    "elbo-enum",
    "elbo-reinforce",
    "marginal-top5",
    "marginal-r64",
    "elbo-enum-r64",
]
# varattn_transformer against fairseq's transformer of the same size
TRANSFORMER_ROWS = [
    "transformer",
    "transformer-soft-joint",
    "transformer-marginal",
    "transformer-elbo-enum",
    "transformer-marginal-r64",
    "transformer-elbo-enum-r64",
]


REPORT = []

# --breakdown: the forward passes that set a latent step apart from soft attention's
PARTS = {
    "log p(y given z = i)": [
        (AlignmentOutputLayer, "alignment_logprobs"),
        (FactoredOutputLayer, "alignment_logprobs"),
        (ShortlistOutputLayer, "alignment_logprobs"),
    ],
    # REINFORCE's baseline, Gumbel-softmax and Dirichlet samples
    "output at a context": [
        (AlignmentOutputLayer, "context_logprobs"),
        (FactoredOutputLayer, "context_logprobs"),
        (ShortlistOutputLayer, "weighted_logprobs"),
    ],
    "q network": [(InferenceNetwork, "forward"), (TransformerInferenceNetwork, "forward")],
}


def report(line):
    """A line of the result tables: printed, and kept for --markdown."""
    REPORT.append(line)
    print(line)


class Task:
    def __init__(self, d):
        self.source_dictionary = self.target_dictionary = d


def make_dictionary(vocab):
    d = Dictionary()
    for i in range(vocab - d.nspecial):
        d.add_symbol(f"w{i}")
    return d


def build(name, d, opts):
    row = rows.parse(name)
    variant, arch = row.variant, "transformer" if row.transformer else "lstm"
    sizes = dict(
        dropout=0.1,
        encoder_embed_dim=opts.embed,
        encoder_hidden_size=opts.hidden // 2,
        decoder_embed_dim=opts.embed,
        decoder_hidden_size=opts.hidden,
        decoder_out_embed_dim=opts.out_embed or opts.hidden,
    )
    task = Task(d)
    torch.manual_seed(0)
    if arch == "transformer":
        # fairseq's transformer_iwslt_de_en shape at --embed width, 2+2 layers
        sizes = dict(
            dropout=0.1,
            encoder_embed_dim=opts.embed,
            decoder_embed_dim=opts.embed,
            encoder_ffn_embed_dim=2 * opts.embed,
            decoder_ffn_embed_dim=2 * opts.embed,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
        )
        if variant is None:
            args = argparse.Namespace(**sizes)
            transformer_base(args)
            model = TransformerModel.build_model(args, task)
        else:
            overrides = row.model_overrides("transformer")
            args = argparse.Namespace(**sizes, **overrides)
            varattn_transformer_base(args)
            model = VarAttnTransformerModel.build_model(args, task)
    elif variant is None:
        args = argparse.Namespace(
            encoder_bidirectional=True, criterion="cross_entropy", encoder_layers=1, decoder_layers=1, **sizes
        )
        lstm_base(args)
        model = LSTMModel.build_model(args, task)
    else:
        overrides = row.model_overrides()
        if opts.preset == "iwslt":  # the paper's model: its sizes replace --embed and --hidden
            args = argparse.Namespace(alignment_chunk_size=opts.chunk, **overrides)
            varattn_lstm_iwslt_de_en(args)
        else:
            args = argparse.Namespace(alignment_chunk_size=opts.chunk, **sizes, **overrides)
            varattn_base(args)
        model = VarAttnLSTMModel.build_model(args, task)
    head = getattr(getattr(model, "decoder", None), "head", None)
    if head is not None and isinstance(head.output, ShortlistOutputLayer):
        head.output.set_table(spread_table(len(d), head.output.shortlist.size(1), d))
    criterion_name = "cross_entropy" if variant is None else variants.get(variant).criterion
    if criterion_name == "cross_entropy":
        criterion = CrossEntropyCriterion(task, sentence_avg=False)
    else:
        criterion = CRITERION_REGISTRY[criterion_name].build(task, **variants.criterion_options(variant))
    model.to(opts.device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, criterion, optimizer


def make_batch(d, opts, seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (opts.batch, opts.src_len), generator=g)
    tgt = torch.randint(d.nspecial, len(d), (opts.batch, opts.tgt_len), generator=g)
    src[:, -1] = tgt[:, -1] = d.eos()
    prev = torch.cat([torch.full((opts.batch, 1), d.eos()), tgt[:, :-1]], 1)
    batch = {
        "net_input": {
            "src_tokens": src,
            "src_lengths": torch.full((opts.batch,), opts.src_len),
            "prev_output_tokens": prev,
        },
        "target": tgt,
        "ntokens": tgt.numel(),
    }
    return _to(batch, opts.device)


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def step(model, criterion, optimizer, batch):
    """One training step; returns the seconds of its forward and of its backward pass."""
    device = batch["target"].device
    optimizer.zero_grad()
    _sync(device)
    start = time.perf_counter()
    loss, _, _ = criterion(model, batch)
    _sync(device)
    forward_end = time.perf_counter()
    loss.backward()
    _sync(device)
    backward_end = time.perf_counter()
    optimizer.step()
    _sync(device)
    return forward_end - start, backward_end - forward_end


@contextlib.contextmanager
def timing_parts(spent, device):
    """Adds each PARTS method's wall time (synchronised on a GPU) to ``spent``
    while the block runs, and restores the methods after it."""

    def timed(part, fn):
        def wrapper(*args, **kwargs):
            _sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            spent[part] += time.perf_counter() - start
            return out

        return wrapper

    with patched_methods(PARTS, timed):
        yield


@contextlib.contextmanager
def patched_methods(methods_by_label, wrap):
    """While the block runs, each (class, method) of ``methods_by_label``
    ({label: [(class, name), ...]}) is replaced by ``wrap(label, method)``;
    the methods are put back after it, also after an error."""
    saved = [(owner, name, owner.__dict__[name]) for methods in methods_by_label.values() for owner, name in methods]
    for label, methods in methods_by_label.items():
        for owner, name in methods:
            setattr(owner, name, wrap(label, owner.__dict__[name]))
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def breakdown(names, built, batches, opts):
    """Median milliseconds per step of the forward pass, of the backward pass
    and of the forward time spent in each of PARTS (inside the forward)."""
    spent = collections.Counter()
    rows = {}
    with timing_parts(spent, opts.device):
        for n in names:
            model, criterion, optimizer = built[n]
            per = collections.defaultdict(list)
            for batch in batches[1:]:
                spent.clear()
                forward, backward = step(model, criterion, optimizer, batch)
                per["forward"].append(forward)
                per["backward"].append(backward)
                for part in PARTS:
                    per[part].append(spent[part])
            rows[n] = {k: 1000 * statistics.median(v) for k, v in per.items()}
    report(
        f"\nwhere a step's time goes: median ms per step over {len(batches) - 1} more steps; "
        "each part's time is part of the forward's"
    )
    report("| variant | forward | backward | " + " | ".join(PARTS) + " |")
    report("|---|---|---|" + "---|" * len(PARTS))
    for n, r in rows.items():
        report(
            f"| {n} | {r['forward']:.0f} | {r['backward']:.0f} | "
            + " | ".join(f"{r[p]:.0f}" if r[p] else "-" for p in PARTS)
            + " |"
        )
    return rows


def measure_memory(name, opts):
    d = make_dictionary(opts.vocab)
    model, criterion, optimizer = build(name, d, opts)
    batch = make_batch(d, opts, 0)
    if opts.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(model, criterion, optimizer, batch)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # Reset the kernel's peak-RSS mark (VmHWM) so imports and model building
    # do not count; then peak minus current RSS is what training steps add.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_kb("VmRSS")
    for _ in range(2):
        step(model, criterion, optimizer, batch)
    return (_proc_status_kb("VmHWM") - base) / 1024


def training_malloc():
    """Re-run this process under the malloc settings the training scripts use
    (``varattn_tools.experiments.HEAP_MALLOC``: freed memory stays in the heap),
    so that speeds are those of training; values the user exported win.  glibc
    reads them at start-up only, hence the re-exec."""
    if os.environ.get("VARATTN_BENCHMARK_MALLOC") == "set":
        return
    env = {**HEAP_MALLOC, **os.environ, "VARATTN_BENCHMARK_MALLOC": "set"}
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def malloc_note():
    return ", ".join(f"{k}={os.environ[k]}" for k in HEAP_MALLOC if k in os.environ) or "glibc's default malloc"


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_ROWS),
        help="comma-separated row names (varattn_tools/rows.py: [transformer-]VARIANT[-joint|-factored]"
        f"[-rR][-topK], lstm, transformer; default {','.join(DEFAULT_ROWS)}); 'transformer-set' for "
        f"{','.join(TRANSFORMER_ROWS)}",
    )
    parser.add_argument(
        "--generate", default="", help="rows whose beam-5 generation speed to measure, e.g. soft,marginal"
    )
    parser.add_argument("--gen-sentences", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--src-len", type=int, default=30)
    parser.add_argument("--tgt-len", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument(
        "--out-embed",
        type=int,
        default=0,
        help="the LSTM decoder's output embedding (the output projection's width; default: --hidden); "
        "the converged comparison trains with 128",
    )
    parser.add_argument("--chunk", type=int, default=0, help="--alignment-chunk-size for latent variants")
    parser.add_argument(
        "--preset",
        choices=["default", "iwslt"],
        default="default",
        help="iwslt: varattn_lstm rows use the paper's model (varattn_lstm_iwslt_de_en: 2 layers, "
        "1024-d annotations, 768-d decoder) instead of --embed/--hidden",
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="also write the tables here (benchmarks/results.md)")
    parser.add_argument("--memory-only", help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="after the timed steps, --steps more per row that split the step into forward, "
        "backward and the forward's latent parts (log p(y | z = i), the output at a "
        "context, q's network)",
    )
    opts = parser.parse_args()

    if opts.memory_only:
        print(json.dumps({"peak_mb": measure_memory(opts.memory_only, opts)}))
        return

    training_malloc()
    names = [n for n in opts.variants.split(",") if n]
    if names == ["transformer-set"]:
        names = TRANSFORMER_ROWS
    gen_names = [n for n in opts.generate.split(",") if n]
    for n in names + gen_names:
        try:
            rows.parse(n)
        except KeyError as err:
            parser.error(f"{n}: {err}")
    if opts.preset == "iwslt":
        other = [n for n in names + gen_names if rows.parse(n).variant is None or rows.parse(n).transformer]
        if other:
            parser.error(f"--preset iwslt sizes varattn_lstm rows only, not {other}")
    d = make_dictionary(opts.vocab)
    built = {n: build(n, d, opts) for n in names}
    batches = [make_batch(d, opts, s) for s in range(opts.steps + 1)]
    for n in names:  # warm-up step, not timed
        step(*built[n], batches[0])
    times = {n: [] for n in names}
    for s in range(opts.steps):
        for n in names:
            t0 = time.perf_counter()
            step(*built[n], batches[s + 1])
            times[n].append(time.perf_counter() - t0)
            print(f"  step {s + 1}/{opts.steps} {n:15s} {times[n][-1]:.3f}s", file=sys.stderr, flush=True)

    tokens = opts.batch * opts.tgt_len
    results = {}
    for n in names:
        tps = tokens / statistics.median(times[n])
        results[n] = {"tokens_per_s": tps}
        if not opts.no_memory:
            cmd = [sys.executable, __file__, "--memory-only", n] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(opts).items()
                if k
                in ("vocab", "src_len", "tgt_len", "batch", "embed", "hidden", "out_embed", "chunk", "device", "preset")
            ]
            # glibc's default mmap threshold adapts to past frees, so freed
            # tensors may or may not return to the kernel and the peak RSS
            # varied by 10% between identical runs; a fixed threshold
            # serves every tensor over 64 KiB by mmap, and the peak RSS is
            # the peak of live tensors (reproducible to 0.1 MB)
            env = {k: v for k, v in os.environ.items() if k not in HEAP_MALLOC}
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            results[n]["peak_mb"] = json.loads(out.strip().splitlines()[-1])["peak_mb"]

    ref_name = "soft" if "soft" in results else "transformer"
    ref = results.get(ref_name)
    report(
        f"\ndevice={opts.device} vocab={opts.vocab} T={opts.src_len} N={opts.tgt_len} "
        f"batch={opts.batch} "
        + (
            "model=varattn_lstm_iwslt_de_en "
            if opts.preset == "iwslt"
            else f"embed={opts.embed} hidden={opts.hidden} out-embed={opts.out_embed or opts.hidden} "
        )
        + f"chunk={opts.chunk} "
        f"steps={opts.steps} (median step time; {malloc_note()})"
    )
    report(f"| variant | tokens/s | speed vs {ref_name} | peak MB | memory vs {ref_name} |")
    report("|---|---|---|---|---|")
    for n in names:
        r = results[n]
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
        mem = r.get("peak_mb")
        mem_ratio = f"{mem / ref['peak_mb']:.2f}" if ref and mem and ref.get("peak_mb") else "-"
        report(
            f"| {n} | {r['tokens_per_s']:.0f} | {speed} | {mem:.0f} | {mem_ratio} |"
            if mem is not None
            else f"| {n} | {r['tokens_per_s']:.0f} | {speed} | - | - |"
        )
    if opts.breakdown:
        for n, parts in breakdown(names, built, batches, opts).items():
            results[n]["breakdown_ms"] = parts
    if gen_names:
        results["generation"] = benchmark_generation(gen_names, d, opts)
    if opts.json:
        with open(opts.json, "w") as f:
            meta = {
                "commit": git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), mark_changes=True),
                "date": str(datetime.date.today()),
                "machine": machine(),
            }
            json.dump({**meta, "options": vars(opts), "results": results}, f, indent=2)
    if opts.markdown:
        append_markdown(opts.markdown, REPORT)


def benchmark_generation(names, d, opts):
    """Beam-5 sentences/s with fairseq's SequenceGenerator (incremental
    decoding), fixed output length, interleaved repetitions."""
    models = {n: build(n, d, opts)[0].eval() for n in names}
    g = torch.Generator().manual_seed(0)
    src = torch.randint(d.nspecial, len(d), (opts.gen_sentences, opts.src_len), generator=g)
    src[:, -1] = d.eos()
    sample = {
        "net_input": {
            "src_tokens": src.to(opts.device),
            "src_lengths": torch.full((opts.gen_sentences,), opts.src_len).to(opts.device),
        }
    }
    generators = {
        n: SequenceGenerator([m], d, beam_size=5, min_len=opts.tgt_len, max_len_b=opts.tgt_len, max_len_a=0)
        for n, m in models.items()
    }
    times = {n: [] for n in names}
    with torch.no_grad():
        for n in names:  # warm-up
            generators[n].generate([models[n]], sample)
        for _ in range(max(1, opts.steps // 2)):
            for n in names:
                t0 = time.perf_counter()
                generators[n].generate([models[n]], sample)
                times[n].append(time.perf_counter() - t0)
    out = {n: {"sentences_per_s": opts.gen_sentences / statistics.median(times[n])} for n in names}
    ref = out.get("soft")
    report(
        f"\nbeam-5 generation, {opts.gen_sentences} sentences of {opts.src_len} tokens, "
        f"{opts.tgt_len} output tokens each"
    )
    report("| variant | sentences/s | speed vs soft |")
    report("|---|---|---|")
    for n in names:
        speed = f"{out[n]['sentences_per_s'] / ref['sentences_per_s']:.2f}" if ref else "-"
        report(f"| {n} | {out[n]['sentences_per_s']:.1f} | {speed} |")
    return out


if __name__ == "__main__":
    main()

"""Where a training step's milliseconds go, row by row, next to what the
arithmetic says they should cost on this machine (issue: latent attention
close to soft attention's speed; benchmarks/README.md, "Profile").

    python benchmarks/profile_step.py                       # the converged comparison's LSTM sizes
    python benchmarks/profile_step.py --variants soft,marginal --steps 2

Rows are benchmarks/speed.py's (same model building, same random batches).
For each row, ``--steps`` training steps run under ``torch.profiler``; every
operator's own time is put in one of a few groups (GEMMs, exponentials and
logs, other element-wise passes, reductions, copies and indexing, the LSTM
kernels, the optimizer), for the forward and the backward separately, and
the forward is also split by the model part that ran it (the output layer's
methods, q's network).  The achieved GEMM rate is measured on the output
projection's own shapes, and the GEMMs' FLOPs (counted by the profiler)
divided by it give what the GEMMs should take.  Autograd's saved tensors
are summed (distinct storages) during the forward.
"""

import argparse
import collections
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speed  # noqa: E402  (the benchmark's rows and batches)

from fairseq_varattn.models.inference_network import InferenceNetwork, TransformerInferenceNetwork  # noqa: E402
from fairseq_varattn.modules.factored_output import FactoredOutputLayer  # noqa: E402
from fairseq_varattn.modules.output_layer import AlignmentOutputLayer  # noqa: E402
from varattn_tools.experiments import append_markdown, median_ms  # noqa: E402

DEFAULT_ROWS = "soft,soft-factored,marginal,elbo-enum,elbo-reinforce"

# forward regions: (label, [(class, method)]); the first region entered owns the time
REGIONS = {
    "log p(y given z = i)": [(AlignmentOutputLayer, "alignment_logprobs"), (FactoredOutputLayer, "alignment_logprobs")],
    "output at a context": [
        (AlignmentOutputLayer, "context_logprobs"),
        (FactoredOutputLayer, "context_logprobs"),
        (AlignmentOutputLayer, "soft_logits"),
        (FactoredOutputLayer, "soft_logits"),
    ],
    "q network": [(InferenceNetwork, "forward"), (TransformerInferenceNetwork, "forward")],
}

GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}
EXP = {
    "aten::exp",
    "aten::exp_",
    "aten::log",
    "aten::log_",
    "aten::_log_softmax",
    "aten::_softmax",
    "aten::_log_softmax_backward_data",
    "aten::_softmax_backward_data",
    "aten::logsumexp",
    "aten::tanh",
    "aten::tanh_backward",
    "aten::sigmoid",
    "aten::sigmoid_backward",
    "aten::digamma",
    "aten::lgamma",
}
REDUCE = {"aten::sum", "aten::amax", "aten::max", "aten::amin", "aten::mean", "aten::norm", "aten::any"}
COPY = {
    "aten::copy_",
    "aten::clone",
    "aten::cat",
    "aten::gather",
    "aten::scatter_add_",
    "aten::scatter_add",
    "aten::scatter",
    "aten::index",
    "aten::index_select",
    "aten::index_put_",
    "aten::_index_put_impl_",
    "aten::embedding_dense_backward",
    "aten::embedding",
    "aten::index_add_",
    "aten::empty",
    "aten::zeros",
    "aten::zero_",
    "aten::fill_",
    "aten::new_empty",
    "aten::empty_strided",
    "aten::contiguous",
    "aten::resize_",
    "aten::nonzero",
    "aten::masked_select",
}
LSTM = {"aten::lstm", "aten::_thnn_fused_lstm_cell", "aten::lstm_cell", "aten::_thnn_fused_lstm_cell_backward_impl"}
GROUPS = ("GEMM", "exp, log, softmax, tanh", "element-wise", "reductions", "copies, indexing", "other")


def group(name):
    if name in GEMM:
        return "GEMM"
    if name in EXP:
        return "exp, log, softmax, tanh"
    if name in REDUCE:
        return "reductions"
    if name in COPY:
        return "copies, indexing"
    if name.startswith("aten::") and any(
        name.startswith(f"aten::{op}")
        for op in ("add", "sub", "mul", "div", "neg", "masked_fill", "where", "bernoulli", "clamp", "pow", "sqrt")
    ):
        return "element-wise"
    return "other"


def regions():
    """Each REGIONS method inside a ``record_function`` named after its region, while the block runs."""

    def wrap(label, fn):
        def wrapper(*args, **kwargs):
            with record_function(f"region::{label}"):
                return fn(*args, **kwargs)

        return wrapper

    return speed.patched_methods(REGIONS, wrap)


def saved_tensor_mb(model, criterion, batch):
    """MB of distinct storages autograd saves for backward during one forward."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = criterion(model, batch)
    del loss
    return sum(seen.values()) / 2**20


def achieved_rate(a, b, product, repeats=5):
    """GFLOP/s of ``product(a, b)`` on this machine (median of ``repeats`` after a warm-up)."""
    seconds = median_ms(lambda: product(a, b), repeats, warmup=1) / 1000
    return 2 * a.shape[:-1].numel() * a.size(-1) * b.size(-1) / seconds / 1e9


def gemm_rate(m, k, n):
    """Achieved GFLOP/s of an (m, k) x (k, n) float32 product."""
    return achieved_rate(torch.randn(m, k), torch.randn(k, n), torch.mm)


def bmm_rate(batch, m, k, n):
    return achieved_rate(torch.randn(batch, m, k), torch.randn(batch, k, n), torch.bmm)


WARMUP_STEPS = 3


def profile_row(name, built, batches):
    model, criterion, optimizer = built
    # warm-up: the first steps grow the heap to the step's peak, and a product
    # that writes into freshly faulted pages ran at a sixth of its speed there
    # (the (B, N, T) x (B, T, V) backward product: 239 ms in step 2, 15 ms from step 3)
    for _ in range(WARMUP_STEPS):
        speed.step(model, criterion, optimizer, batches[0])
    with regions(), profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for batch in batches[1:]:
            optimizer.zero_grad()
            with record_function("phase::forward"):
                loss, _, _ = criterion(model, batch)
            with record_function("phase::backward"):
                loss.backward()
            with record_function("phase::optimizer"):
                optimizer.step()
    steps = len(batches) - 1
    events = prof.events()
    # each operator's own (self) time, by phase and group; forward ops also by region
    spans = {"phase": [], "region": []}
    for e in events:
        for kind in spans:
            if e.name.startswith(kind + "::"):
                spans[kind].append((e.time_range.start, e.time_range.end, e.name.split("::", 1)[1], e.thread))
    by_group = collections.defaultdict(float)
    by_op = collections.defaultdict(float)
    by_region = collections.defaultdict(float)
    flops = collections.defaultdict(float)
    total = collections.defaultdict(float)
    for e in events:
        if e.name.startswith(("phase::", "region::")) or not e.name.startswith("aten::"):
            continue
        phase = _inside(spans["phase"], e)
        if phase is None:  # autograd's backward runs on its own thread: inside the backward's wall time
            phase = "backward" if _inside_any(spans["phase"], e, "backward") else "other"
        ms = e.self_cpu_time_total / 1000 / steps
        by_group[(phase, group(e.name))] += ms
        by_op[(phase, e.name)] += ms
        total[phase] += ms
        if e.name in GEMM and e.flops:
            flops[phase] += e.flops / steps
        if phase == "forward":
            by_region[_inside(spans["region"], e) or "rest of the forward"] += ms
    wall = collections.defaultdict(float)
    for start, end, name, _ in spans["phase"]:
        wall[name] += (end - start) / 1000 / steps
    return {"op": by_op, "group": by_group, "region": by_region, "flops": flops, "wall": wall, "self": total}


def _inside(spans, e):
    for start, end, name, thread in spans:
        if thread == e.thread and start <= e.time_range.start and e.time_range.end <= end:
            return name
    return None


def _inside_any(spans, e, wanted):
    return any(
        name == wanted and start <= e.time_range.start and e.time_range.end <= end for start, end, name, _ in spans
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants", default=DEFAULT_ROWS, help=f"rows of benchmarks/speed.py (default {DEFAULT_ROWS})"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="profiled steps per row (after WARMUP_STEPS warm-up steps)"
    )
    parser.add_argument("--vocab", type=int, default=8004)
    parser.add_argument("--src-len", type=int, default=15)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--embed", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out-embed", type=int, default=128)
    parser.add_argument("--ops", type=int, default=0, help="also list each row's N slowest operators per phase")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--markdown", help="also append the tables here")
    opts = parser.parse_args()
    opts.chunk, opts.preset, opts.device = 0, "default", "cpu"
    speed.training_malloc()
    names = [n for n in opts.variants.split(",") if n]
    for n in names:
        try:
            speed.rows.parse(n)
        except KeyError as err:
            parser.error(f"{n}: {err}")

    lines = []

    def out(line=""):
        lines.append(line)
        print(line, flush=True)

    rows_out = opts.batch * opts.tgt_len
    rate = gemm_rate(rows_out, opts.out_embed, opts.vocab)
    rate_t = gemm_rate(opts.vocab, rows_out, opts.out_embed)  # the weight gradient's shape
    rate_b = bmm_rate(opts.batch, opts.tgt_len, opts.vocab, opts.src_len)
    out(
        f"threads={torch.get_num_threads()} vocab={opts.vocab} T={opts.src_len} N={opts.tgt_len} batch={opts.batch} "
        f"embed={opts.embed} hidden={opts.hidden} out-embed={opts.out_embed}, {opts.steps} profiled steps per row, "
        f"{speed.malloc_note()}"
    )
    out(
        f"achieved float32 GEMM rate: output projection ({rows_out}x{opts.out_embed})x({opts.out_embed}x{opts.vocab}) "
        f"{rate:.1f} GFLOP/s; its weight gradient ({opts.vocab}x{rows_out})x({rows_out}x{opts.out_embed}) "
        f"{rate_t:.1f} GFLOP/s; the normalisers' batched product {opts.batch} x ({opts.tgt_len}x{opts.vocab})x"
        f"({opts.vocab}x{opts.src_len}) {rate_b:.1f} GFLOP/s"
    )
    d = speed.make_dictionary(opts.vocab)
    batches = [speed.make_batch(d, opts, s) for s in range(opts.steps + 1)]
    results = {}
    saved = {}
    for n in names:
        built = speed.build(n, d, opts)
        results[n] = profile_row(n, built, batches)
        saved[n] = saved_tensor_mb(built[0], built[1], batches[0])
        print(f"  profiled {n}", file=sys.stderr, flush=True)

    out()
    out("ms per step, each operator's own time; GEMM FLOPs at the achieved rate give the 'should' column")
    header = "| row | phase | wall | " + " | ".join(GROUPS) + " | GEMM GFLOP | GEMM should |"
    out(header)
    out("|---" * (header.count("|") - 1) + "|")
    for n, r in results.items():
        for phase in ("forward", "backward", "optimizer"):
            cells = " | ".join(f"{r['group'].get((phase, g), 0):.0f}" for g in GROUPS)
            gf = r["flops"].get(phase, 0) / 1e9
            out(f"| {n} | {phase} | {r['wall'].get(phase, 0):.0f} | {cells} | {gf:.1f} | {1000 * gf / rate:.0f} |")
    out()
    out("the forward by model part (ms per step, operators' own time) and autograd's saved tensors")
    labels = list(REGIONS) + ["rest of the forward"]
    out("| row | " + " | ".join(labels) + " | saved MB |")
    out("|---" * (len(labels) + 2) + "|")
    for n, r in results.items():
        out(f"| {n} | " + " | ".join(f"{r['region'].get(k, 0):.0f}" for k in labels) + f" | {saved[n]:.0f} |")
    if opts.ops:
        out()
        out(f"each row's {opts.ops} slowest operators per phase (ms per step, own time)")
        for n, r in results.items():
            for phase in ("forward", "backward"):
                top = sorted(((ms, op) for (p, op), ms in r["op"].items() if p == phase), reverse=True)[: opts.ops]
                out(f"- {n}, {phase}: " + ", ".join(f"{op[6:]} {ms:.0f}" for ms, op in top))
    if opts.json:
        with open(opts.json, "w") as f:
            rates = {"output_projection": rate, "weight_gradient": rate_t, "normalisers_bmm": rate_b}
            rows = {
                n: {
                    "wall_ms": dict(r["wall"]),
                    "gemm_gflop": dict(r["flops"]),
                    "groups_ms": {f"{p}/{g}": ms for (p, g), ms in r["group"].items()},
                    "forward_parts_ms": dict(r["region"]),
                    "saved_mb": saved[n],
                }
                for n, r in results.items()
            }
            json.dump({"options": vars(opts), "gemm_gflop_per_s": rates, "rows": rows}, f, indent=2)
    if opts.markdown:
        append_markdown(opts.markdown, lines)


if __name__ == "__main__":
    main()

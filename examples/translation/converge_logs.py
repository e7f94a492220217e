"""What converge.py reads from fairseq's training and validation logs: the
learning curve, the best epoch, how a (resumed) run ended, its pace, and the
latent criterions' diagnostics."""

import statistics

from varattn_tools import fairseq_log
from varattn_tools.fairseq_log import best_epoch, stats, training_status, validations
from varattn_tools.rows import variant_name

DIAGNOSTICS = (
    "kl",
    "entropy_p",
    "entropy_q",
    "entropy_post",
    "entropy_uniform",
    "prior_maxp",
    "q_maxp",
    "prior_concentration",
    "q_concentration",
    # whether the output depends on the alignment at all (docs/design.md, "Is the latent attention learning?")
    "logpy_spread",
    "score_spread",
    "annot_spread",
)
# what each epoch's validation line contributes to a run's learning curve
CURVE_KEYS = ("ppl", "kl", "entropy_p", "entropy_q", "entropy_post", "entropy_uniform", "logpy_spread")


def _numbers(values, keys):
    return {k: v for k in keys if isinstance(v := values.get(k), float)}


def validation_curve(text):
    """Every epoch's validation numbers, in epoch order (the last line of an
    epoch that a resume validated twice): [{"epoch": 1, "ppl": ..., "kl": ...}, ...]
    with the CURVE_KEYS the criterion logs (soft attention logs ppl alone)."""
    return [{"epoch": epoch, **_numbers(s.values, CURVE_KEYS)} for epoch, s in validations(text).items()]


def parse_training(text):
    """What the training log says: per-epoch train wps, the best validation
    line, the learning curve."""
    wps = [s.values["wps"] for s in stats(text, "train") if isinstance(s.values.get("wps"), float)]
    valid = validations(text)
    if not valid:
        raise RuntimeError("no validation in the training log")

    best = best_epoch(text)
    return {
        "train_wps": statistics.mean(wps) if wps else None,
        "epochs_run": max(valid),
        "best_epoch": best,
        "valid_ppl_training": valid[best].values["ppl"],  # on fairseq's default batches (see run_one)
        "valid_curve": validation_curve(text),
    }


def needs_training(text, cap):
    """Whether the run must (resume and) train: it has not finished, or it
    stopped at a lower epoch cap than today's ``cap`` (its ``epoch_cap``)."""
    status = training_status(text)
    return status == "training" or (status == "cap" and parse_training(text)["epochs_run"] < cap)


def validation_diagnostics(text):
    """KL and entropies fairseq-validate logs for the best checkpoint (latent criterions only)."""
    values = fairseq_log.last(text, "valid").values
    return {f"valid_{k}": v if isinstance(v := values.get(k), float) else None for k in DIAGNOSTICS}


def minutes_per_epoch(text, last=3):
    """The median time between the last ``last`` + 1 epochs' validations, in
    minutes, or None: what an epoch takes lately (a median, so one gap where a
    run was interrupted and resumed does not count)."""
    times = {epoch: s.time for epoch, s in validations(text).items()}
    epochs = sorted(times)[-(last + 1) :]
    gaps = [(times[b] - times[a]).total_seconds() / 60 / (b - a) for a, b in zip(epochs, epochs[1:])]
    return statistics.median(gaps) if gaps else None


def prior_sharpness(name, values):
    """How sharp the prior is at a validation's ``values``, for the status of a run
    in training: a prior at the uniform entropy has learnt nothing, one near
    0 bits from the first epochs may have collapsed ("" for soft attention;
    a Dirichlet's entropy is differential, so only its mean's largest weight)."""
    parts = []
    entropy, uniform = values.get("entropy_p"), values.get("entropy_uniform")
    if entropy is not None and uniform is not None and not variant_name(name).endswith("dirichlet"):
        parts.append(f"prior entropy {entropy} bits (uniform {uniform})")
    if (maxp := values.get("prior_maxp")) is not None:
        parts.append(f"largest prior weight {maxp}")
    return "".join(", " + p for p in parts)

"""The named variants of the paper's comparison: one table that every script,
benchmark and test reads.

A variant is an attention kind, a criterion with its options, and whether it
needs an inference network.  ``train_options`` turns it into fairseq-train
options, ``model_overrides`` / ``criterion_options`` into the Python values
that tests and benchmarks build models and criterions from.  ``factored``
(True / False; None: the architecture's default) picks the factored or the joint
output layer, with which exact enumeration costs about what
soft attention costs (docs/design.md, "Output layers").
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass(frozen=True)
class Variant:
    attention: str
    criterion: str
    options: Dict[str, object] = field(default_factory=dict)
    needs_q: bool = False
    #: sampling estimators skip the exact nll on training batches (validation
    #: always computes it): otherwise every update pays for an enumeration
    sampled: bool = False


VARIANTS: Dict[str, Variant] = {
    "soft": Variant("soft", "cross_entropy"),
    "marginal": Variant("categorical", "varattn_marginal"),
    "hard-enum": Variant("categorical", "varattn_hard", {"estimator": "enum"}),
    # REINFORCE trains no baseline (the paper's recipe, va.sh): a trained soft
    # baseline under q makes q run ahead of the prior (examples/translation/README.md,
    # "REINFORCE's baseline")
    "hard-reinforce": Variant("categorical", "varattn_hard", {"estimator": "reinforce"}, sampled=True),
    "elbo-enum": Variant("categorical", "varattn_elbo", {"estimator": "enum"}, needs_q=True),
    "elbo-reinforce": Variant("categorical", "varattn_elbo", {"estimator": "reinforce"}, needs_q=True, sampled=True),
    "elbo-gumbel": Variant("categorical", "varattn_elbo", {"estimator": "gumbel"}, needs_q=True, sampled=True),
    "dirichlet": Variant("dirichlet", "varattn_dirichlet", needs_q=True, sampled=True),
    "rws": Variant("categorical", "varattn_rws", {"num_samples": 5}, needs_q=True, sampled=True),
}


def get(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    return VARIANTS[name]


def criterion_options(name: str) -> Dict[str, object]:
    """The criterion's config fields (``Criterion.build(task, **these)``)."""
    variant = get(name)
    return {**variant.options, **({"skip_exact_nll_in_training": True} if variant.sampled else {})}


def model_overrides(name: str, inference_network: str = "birnn", factored: Optional[bool] = None) -> Dict[str, object]:
    """The model's args for this variant (``--attention``, ``--inference-network``, ``--output-layer``)."""
    variant = get(name)
    out = {"attention": variant.attention, "inference_network": inference_network if variant.needs_q else "none"}
    if variant.needs_q and inference_network in ("birnn", "transformer"):
        # fairseq-train's default; models built from Python get the legacy "own" without it
        out["inference_embeddings"] = "decoder"
    if factored is not None:  # None: the architecture's default
        out["output_layer"] = "factored" if factored else "joint"
    return out


def _flag(key: str, value) -> List[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return []
    return [flag, str(value)]


def train_options(name: str, inference_network: str = "birnn", factored: Optional[bool] = None) -> List[str]:
    """fairseq-train options selecting the variant's model and criterion."""
    out = ["--criterion", get(name).criterion]
    for key, value in model_overrides(name, inference_network, factored).items():
        if not (key == "inference_network" and value == "none") and key != "inference_embeddings":
            out += _flag(key, value)  # (--inference-embeddings decoder is fairseq-train's default)
    for key, value in criterion_options(name).items():
        out += _flag(key, value)
    return out

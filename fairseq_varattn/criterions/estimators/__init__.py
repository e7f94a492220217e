"""Estimators of -E_dist[log p(y | z)] and its gradient, selected by
``--estimator`` (docs/design.md, "Adding an estimator").

An estimator is a class registered here by name.  It declares which
criterions may use it, the option dataclass it reads (mixed into those
criterions' configs), the keys it logs with their units (criterions/logged.py)
and checks its options; ``reconstruction`` returns the per-token loss, the
distribution the expectation was taken under (a truncated one for top-k
enumeration, so the caller's KL uses the same) and what it logs.
"""

from typing import Dict, NamedTuple, Tuple, Type

import torch

ESTIMATORS: Dict[str, Type["Estimator"]] = {}


class Reconstruction(NamedTuple):
    loss: torch.Tensor
    #: the distribution the expectation is under: the caller's KL uses it
    used: object
    logged: dict


class Estimator:
    name = ""
    #: the criterions whose --estimator may name it
    criterions: Tuple[str, ...] = ("varattn_elbo", "varattn_hard")
    #: the dataclass of its options (mixed into those criterions' configs), or None
    options = None
    #: the keys it adds to the logging output, with their units (criterions/logged.py)
    logged: Dict[str, str] = {}

    def __init__(self, cfg):
        self.cfg = cfg
        self.check(cfg)

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ValueError on invalid values of its options."""

    def reconstruction(self, batch, dist) -> Reconstruction:
        raise NotImplementedError

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Log what it derives from its ``DERIVED`` keys."""


def register_estimator(cls):
    if cls.name in ESTIMATORS:
        raise ValueError(f"estimator {cls.name!r} registered twice")
    ESTIMATORS[cls.name] = cls
    return cls


def estimators_for(criterion: str):
    """The estimator classes a criterion's --estimator may name, in registry order."""
    return tuple(c for c in ESTIMATORS.values() if criterion in c.criterions)


def option_classes(criterion: str):
    """The option dataclasses of a criterion's estimators (bases of its config)."""
    return tuple(c.options for c in estimators_for(criterion) if c.options is not None)


def logged_by(criterion: str) -> Dict[str, str]:
    return {k: u for c in estimators_for(criterion) for k, u in c.logged.items()}


# the registry's order is --estimator's order of choices
from . import enumeration, reinforce, gumbel  # noqa: E402, F401, I001

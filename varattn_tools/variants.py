"""The named variants of the paper's comparison, one table for every script,
benchmark and test: name -> the fairseq-train options that select its model
and criterion (on top of an architecture preset).

``FACTORED`` adds the factored output layer: with it exact enumeration costs
about what soft attention costs (docs/design.md, "Output layers").
"""

CATEGORICAL = ("--attention", "categorical")
WITH_Q = ("--attention", "categorical", "--inference-network", "birnn")
# Sampling estimators skip the exact nll on training batches (validation
# always computes it): otherwise every update pays for an enumeration.
SAMPLED = ("--skip-exact-nll-in-training",)

VARIANTS = {
    "soft": ("--attention", "soft", "--criterion", "cross_entropy"),
    "marginal": (*CATEGORICAL, "--criterion", "varattn_marginal"),
    "hard-enum": (*CATEGORICAL, "--criterion", "varattn_hard", "--estimator", "enum"),
    "hard-reinforce": (*CATEGORICAL, "--criterion", "varattn_hard", "--estimator", "reinforce",
                       "--train-baseline", *SAMPLED),
    "elbo-enum": (*WITH_Q, "--criterion", "varattn_elbo", "--estimator", "enum"),
    "elbo-reinforce": (*WITH_Q, "--criterion", "varattn_elbo", "--estimator", "reinforce",
                       "--train-baseline", *SAMPLED),
    "elbo-gumbel": (*WITH_Q, "--criterion", "varattn_elbo", "--estimator", "gumbel", *SAMPLED),
    "dirichlet": ("--attention", "dirichlet", "--inference-network", "birnn",
                  "--criterion", "varattn_dirichlet", *SAMPLED),
    "rws": (*WITH_Q, "--criterion", "varattn_rws", "--num-samples", "5", *SAMPLED),
}

FACTORED = ("--output-layer", "factored")
# criterions whose validation logs a KL(q || p)
KL_CRITERIONS = ("varattn_elbo", "varattn_dirichlet", "varattn_rws")


def options(name, factored=False):
    """fairseq-train options of a variant, as a list."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    return [*VARIANTS[name], *(FACTORED if factored else ())]


def criterion_of(name):
    opts = VARIANTS[name]
    return opts[opts.index("--criterion") + 1]

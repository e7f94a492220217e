from . import elbo, hard, marginal  # noqa: F401

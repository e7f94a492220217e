from . import dirichlet, elbo, hard, marginal, rws  # noqa: F401

"""The automatic marginal warm-up (``--latent-warmup auto``, the default;
docs/design.md, "The automatic warm-up").

A criterion with an inference network and a categorical alignment (the
ELBO, wake-sleep) trains by the exact marginal likelihood, with q learning
to copy the exact posterior, until q has caught up with a posterior that has
left uniform; then by its own objective.  The ELBO's gradient pulls the
model's posterior towards q: while q still lags near uniform, that pull
makes log p(y_j | z_j = i) alike over i and the annotations alike, after
which no posterior, and so no q, can align.

The hand-over is decided on training batches from two running means (per
target token, in nats): ``info``, how far the exact posterior is below
uniform, H(uniform) - H(posterior), and ``lead``, how much sharper q is than
the prior, H(prior) - H(q).  The exact posterior is on average at least as
sharp as the prior (conditioning on y_j cannot add entropy in expectation),
so a q flatter than the prior has not yet learnt what y_j says; handed over
then, the ELBO's KL pulls the prior back to that q.  The warm-up ends once
``info`` >= ``MIN_INFO`` and ``lead`` >= 0, or at
``--latent-warmup-max-updates``.  (KL(q || posterior) itself is a poor
signal in training: dropout makes the posterior of each batch noisy in ways
no q can follow.)  The state lives in the model's ``latent_warmup_state``
buffer, so it is saved in checkpoints and a resumed run continues (or stays
out of) its warm-up.
"""

import math

import torch

#: decay of the running means: about the last 50 updates count
DECAY = 0.98
#: the posterior must be at least a bit below uniform before q can be said to follow it
MIN_INFO = math.log(2.0)
# positions in the model's latent_warmup_state buffer
INFO, LEAD, DONE = range(3)


def initial_state() -> torch.Tensor:
    return torch.zeros(3)


def finished_state() -> torch.Tensor:
    """The state of a checkpoint trained before the automatic warm-up: it has no warm-up to do."""
    return torch.tensor([0.0, 0.0, 1.0])


def applies(cfg, model, criterion) -> bool:
    """Whether ``criterion`` warms ``model`` up automatically: ``--latent-warmup auto``
    with neither fixed warm-up, a categorical alignment and an inference network."""
    from .alignment import CategoricalAlignment

    return (
        getattr(cfg, "latent_warmup", "off") == "auto"
        and cfg.soft_warmup_updates == 0
        and cfg.marginal_warmup_updates == 0
        and criterion.distribution_class is CategoricalAlignment
        and criterion.needs_inference_network
        and hasattr(model, "latent_warmup_state")
    )


def active(model, max_updates: int) -> bool:
    return (model.latent_warmup_state[DONE] == 0).item() and getattr(model, "num_updates", 0) < max_updates


def caught_up(info: float, lead: float) -> bool:
    return info >= MIN_INFO and lead >= 0.0


@torch.no_grad()
def update(model, info: torch.Tensor, lead: torch.Tensor) -> None:
    """Fold one batch's means into the running ones; end the warm-up once q has caught up."""
    state = model.latent_warmup_state
    state[INFO] = DECAY * state[INFO] + (1 - DECAY) * info.to(state.dtype)
    state[LEAD] = DECAY * state[LEAD] + (1 - DECAY) * lead.to(state.dtype)
    if caught_up(float(state[INFO]), float(state[LEAD])):
        state[DONE] = 1.0

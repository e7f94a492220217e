"""``--estimator gumbel``: reparameterised Gumbel-softmax relaxations of
samples from dist (the ELBO only: docs/design.md, "Criterions")."""

from dataclasses import dataclass, field

from ...modules.losses import relaxed_nll
from . import Estimator, Reconstruction, register_estimator


@dataclass
class GumbelOptions:
    gumbel_temperature: float = field(
        default=0.1, metadata={"help": "Gumbel-softmax temperature (the paper's code uses 0.1)"}
    )


@register_estimator
class Gumbel(Estimator):
    name = "gumbel"
    criterions = ("varattn_elbo",)
    options = GumbelOptions

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.gumbel_temperature <= 0:
            raise ValueError(f"--gumbel-temperature must be > 0, got {cfg.gumbel_temperature}")

    def reconstruction(self, batch, dist) -> Reconstruction:
        relaxed = dist.gumbel_softmax(self.cfg.num_samples, self.cfg.gumbel_temperature)
        return Reconstruction(relaxed_nll(batch.simplex_logp_y(relaxed)), dist, {})

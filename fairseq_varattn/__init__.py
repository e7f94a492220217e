"""fairseq-varattn: latent alignment and variational attention for fairseq.

Importing the package (or ``--user-dir fairseq_varattn``) registers the
``varattn_*`` models, criterions and tasks, allow-lists the classes that
fairseq checkpoints hold for torch's ``weights_only`` loader, and filters
one deprecation warning fairseq itself triggers (see ``compat``).
"""

from .compat import install

install()

from . import criterions, models, tasks  # noqa: E402,F401  (registration)

__version__ = "0.1.0"

"""How each per-token sum in a criterion's logging output is reported.

Criterions and estimators declare every key they log with one of these
units; ``VarAttnCriterion.forward`` refuses a key nobody declared, so
``reduce_metrics`` never drops one silently (docs/design.md, "Criterions").
"""

#: a quantity in nats: reported per target token, in bits
BITS = "bits"
#: a per-token quantity in its own units: reported per target token as is
RAW = "raw"
#: summed for a metric its declarer derives in its own ``reduce_metrics``
DERIVED = "derived"

#: what every latent criterion may log (besides ``loss`` and ``nll``): its
#: objective's terms, the warm-ups' markers and the batch's diagnostics
#: (criterions/batch.py, ``LatentBatch.diagnostics``)
COMMON = {
    "kl": BITS,
    "kl_post": BITS,
    "entropy_q": BITS,
    "entropy_p": BITS,
    "entropy_post": BITS,
    "entropy_uniform": BITS,
    "prior_maxp": RAW,
    "q_maxp": RAW,
    "score_spread": RAW,
    "logpy_spread": RAW,
    "annot_spread": RAW,
    "prior_concentration": RAW,
    "q_concentration": RAW,
    "soft_warmup": RAW,
    "marginal_warmup": RAW,
}

"""The shortlist output layer (``--output-layer shortlist``; docs/design.md,
"Output layers").

The factored layer's source side b_i = W_o d(f(W_c x~_i)) is one vocabulary
projection per source position, as much arithmetic as soft attention's whole
output projection when source and target are about as long; at the
converged comparison's sizes that caps its speed near 0.68x soft attention's
(benchmarks/README.md, "Profile at the converged comparison's sizes").  This
layer lets source position i raise only the K target types its word most
often translates to, S(x_i) (an IBM model 1 table, ``modules/lexical.py``):

    logit(j, i, v) = a_jv + c_iv,   c_iv = softplus(b_iv) [v in S(x_i)],
    b_iv = W_o[v] . d(f(W_c x~_i)),  a_j as in the factored layer.

Everything exact enumeration needs is then a product over the K candidates
instead of the vocabulary.  Since exp(softplus(b)) - 1 = exp(b),

    L_ji = logsumexp_v(a_jv + c_iv) = log(Z_j + sum_k exp(a_j,S_ik + b_ik)),  Z_j = sum_v exp(a_jv):

one logsumexp over the vocabulary per target token (soft attention's own)
and B N T K gathers, with no subtraction to lose precision (why c is a
softplus: an unconstrained c would need Z_j - sum_k exp(a_j,S_ik), which
cancels when the candidates hold a_j's mass).  Context paths (soft
attention, the REINFORCE baseline, Gumbel-softmax and Dirichlet samples) are
the log-linear pool softmax(a_j + sum_i w_i c_i): at a one-hot w it is the
categorical component p(y | z = i) itself, and it costs a scatter of T K
values per token rather than a projection.

The table is a buffer (checkpoints carry it, generation needs no data); a
new model builds it on first use from ``table_builder``, which the
translation models set to read the task's train split.  Filler entries (a
source type with fewer than K candidates, padding) hold the target
dictionary's pad with b = FILLER, so c = 0 there and every sum stays finite
(an all -inf logsumexp would put NaN into the gradients of padding rows).
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .alignment import CategoricalAlignment
from .factored_output import FactoredOutputLayer, SourceLogitsCache, _float32

# b at filler entries: exp(FILLER) is 0 in float32 and softplus(FILLER) is 0,
# but FILLER is finite, so no inf - inf reaches a gradient
FILLER = -1e4


def _candidate_index(candidates: torch.Tensor, rows: int) -> torch.Tensor:
    """candidates (B, T, K) as an index into (B, rows, V): (B, rows, T K)."""
    bsz, t, k = candidates.shape
    return candidates.reshape(bsz, 1, t * k).expand(bsz, rows, t * k)


def _boosts(a, candidates, b, lse_a=None):
    """(logsumexp_v a_jv (B, N, 1), a_{j,S_ik} + b_ik (B, N, T, K), L (B, N, T));
    ``lse_a``: the first, when the caller knows it."""
    bsz, n, _ = a.shape
    t, k = candidates.shape[1:]
    if lse_a is None:
        lse_a = torch.logsumexp(a, dim=-1, keepdim=True)
    boosts = a.gather(-1, _candidate_index(candidates, n)).view(bsz, n, t, k) + b.unsqueeze(1)
    return lse_a, boosts, torch.logaddexp(lse_a, torch.logsumexp(boosts, dim=-1))


@_float32
def log_normalisers(a: torch.Tensor, candidates: torch.Tensor, b: torch.Tensor, lse_a=None) -> torch.Tensor:
    """L_ji = logsumexp_v(a_jv + c_iv) for a (B, N, V), candidates and b (B, T, K): (B, N, T)."""
    return _boosts(a, candidates, b, lse_a)[2]


class _GoldLogLikelihood(torch.autograd.Function):
    """a_{j,y_j} + c_{i,y_j} - L_ji with a hand-written backward.  Autograd's
    graph of the same expression scatters three (B, N, V) gradients into a
    (the normaliser's softmax, the candidates' gather, the gold gather) and
    sums them; this backward writes one:

        d/da_jv = [v = y_j] sum_i g_ji - exp(a_jv - lse_j) sum_i g_ji exp(lse_j - L_ji)
                  - sum_{(i, k): S_ik = v} g_ji exp(a_jv + b_ik - L_ji)
        d/db_ik = sum_j g_ji ([S_ik = y_j] sigmoid(b_ik) - exp(a_{j,S_ik} + b_ik - L_ji))

    (lse_j = logsumexp_v a_jv; the last terms are L's shares, kept from the
    forward).  ``softmax_a``: exp(a - lse), when the caller has it, saves the
    backward its vocabulary-sized subtraction and exponential."""

    @staticmethod
    def forward(ctx, a, b, candidates, target, lse_a, softmax_a):
        bsz, n, _ = a.shape
        lse_a, boosts, norm = _boosts(a, candidates, b, lse_a)
        hit = candidates.unsqueeze(1).eq(target.view(bsz, n, 1, 1))  # B, N, T, K: at most one k per (j, i)
        gold_c = (F.softplus(b).unsqueeze(1) * hit).sum(-1)
        out = a.gather(-1, target.unsqueeze(-1)) + gold_c - norm
        shares = (boosts - norm.unsqueeze(-1)).exp_()  # B, N, T, K
        ctx.save_for_backward(a, b, candidates, target, lse_a, norm, shares, hit, softmax_a)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, candidates, target, lse_a, norm, shares, hit, softmax_a = ctx.saved_tensors
        g_shares = g.unsqueeze(-1) * shares  # B, N, T, K
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            dense = (g * (lse_a - norm).exp()).sum(-1, keepdim=True)  # B, N, 1
            grad_a = _softmax_times(a, lse_a, softmax_a, -dense)
            grad_a.scatter_add_(-1, _candidate_index(candidates, a.size(1)), -g_shares.flatten(-2))
            grad_a.scatter_add_(-1, target.unsqueeze(-1), g.sum(-1, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_b = (hit * (g.unsqueeze(-1) * torch.sigmoid(b).unsqueeze(1)) - g_shares).sum(1)
        return grad_a, grad_b, None, None, None, None


def _softmax_times(a, lse_a, softmax_a, g):
    """softmax_v(a_jv) g_j as a new tensor: one pass over the saved softmax
    when there is one, else exp(a - lse)."""
    if softmax_a is not None:
        return softmax_a * g
    return (a - lse_a).exp_().mul_(g)


def _known_partition(lse_a, softmax_a):
    """A caller's ``vocabulary_partition`` (either part may be None) as the
    autograd functions take it: constants in float32."""
    return [None if t is None else t.detach().float() for t in (lse_a, softmax_a)]


def vocabulary_partition(a: torch.Tensor):
    """(logsumexp_v a_jv (B, N, 1), softmax_v a_jv (B, N, V)) of a float32 a.

    softmax is one fused pass where logsumexp is three (shift, exponential,
    sum; benchmarks/README.md, "The shortlist layer at the converged
    comparison's sizes"), and the largest probability gives the log-sum-exp
    exactly: max_v softmax_v = exp(max_v a_v - lse), with max_v softmax in
    [1/V, 1], so its log loses nothing."""
    softmax_a = torch.softmax(a, dim=-1)
    return a.amax(-1, keepdim=True) - softmax_a.amax(-1, keepdim=True).log(), softmax_a


@_float32
def gold_log_likelihood(a, candidates, b, target, lse_a=None, softmax_a=None) -> torch.Tensor:
    """log p(y_j | z_j = i) = a_{j,y_j} + c_{i,y_j} - L_ji: (B, N, T).
    ``lse_a``, ``softmax_a``: ``vocabulary_partition(a)``, when the caller
    has it (its gradient is part of this function's own)."""
    return _GoldLogLikelihood.apply(a, b, candidates, target, *_known_partition(lse_a, softmax_a))


# rows whose dense term is this far below their largest term are summed the
# exact way: beyond it a term 87 nats below the largest (float32's range)
# would no longer be negligible next to the dense term
SHIFT_RANGE = 60.0


@_float32
def log_mixture(a, candidates, b, log_w, slots=None, lse_a=None, overwrite=False) -> torch.Tensor:
    """log sum_i w_ji p(y_j = v | z_j = i) for every v: (B, N, V); log_w
    (B, N, T) -inf where position i has no weight (padding, outside a top-k set).

    With rho_ji = log w_ji - L_ji, sum_i w_ji exp(a_jv + c_iv - L_ji)
    = exp(a_jv) (sum_i exp(rho_ji) + sum_{(i, k): S_ik = v} exp(rho_ji + b_ik)):
    a dense term per token (every word) plus, at the candidates, their terms
    summed by word (a scatter-add: a word may be a candidate of several
    positions), all shifted by the token's largest term M_j.  Rows whose
    dense term lies more than SHIFT_RANGE below M_j (a boost of > 60 nats) are
    recomputed with a shift per word (``_exact_mixture``).  ``slots``:
    ``_word_slots(candidates, 0)`` when the caller keeps it (beam search).
    ``lse_a``: logsumexp_v a_jv (B, N, 1) when the caller knows it (beam
    search passes log_softmax of the logits, whose lse is 0: p(y | z) does
    not change when a_j moves by a constant, and a log-softmax costs less
    than a separate logsumexp).  ``overwrite``: without
    autograd, the result may be written over ``a`` (beam search's own
    log_softmax(a_j), read by nothing else): one pass over the vocabulary
    without a new (B, N, V) tensor."""
    bsz, n, _ = a.shape
    rho = log_w - log_normalisers(a, candidates, b, lse_a)  # B, N, T
    dense = torch.logsumexp(rho, dim=-1, keepdim=True)  # B, N, 1
    index = _candidate_index(candidates, n)
    terms = (rho.unsqueeze(-1) + b.unsqueeze(1)).reshape(bsz, n, -1)  # B, N, T K; -inf without weight
    top = torch.maximum(dense, terms.amax(-1, keepdim=True)).detach()
    bad = (top - dense).squeeze(-1) > SHIFT_RANGE  # B, N
    any_bad = bool(bad.any())
    if torch.is_grad_enabled():
        sums = torch.zeros_like(a).scatter_add(-1, index, (terms - top).exp())  # a word's terms, summed
        out = torch.log(sums + (dense - top).exp()) + (a + top)
    else:
        slots = _word_slots(candidates, 0) if slots is None else slots
        # the exact rows below read a: keep it when there are any
        out = _mixture_in_place(a, slots, dense, terms, top, overwrite and not any_bad)
    if any_bad:
        rows = bad.nonzero(as_tuple=True)
        out = out.index_put(rows, _exact_mixture(a[rows], index[rows], dense[rows], terms[rows]))
    return out


def _mixture_in_place(a, slots, dense, terms, top, overwrite=False):
    """``log_mixture``'s result without autograd (generation): a_jv + dense_j
    for every word, one pass, then the sentence's distinct candidate words
    overwritten, their terms summed in a (B, N, T K) buffer, not a (B, N, V)
    one.  ``slots``: ``_word_slots(candidates, 0)`` (unused slots hold word 0,
    nothing summed there); ``overwrite``: the result goes into ``a``."""
    bsz, n, _ = a.shape
    slot, words = slots
    sums = torch.zeros_like(terms).scatter_add_(-1, slot.unsqueeze(1).expand_as(terms), (terms - top).exp_())
    words = words.unsqueeze(1).expand(-1, n, -1)
    at = sums.add_((dense - top).exp()).log_().add_(top).add_(a.gather(-1, words))
    return (a.add_(dense) if overwrite else a + dense).scatter_(-1, words, at)


def _exact_mixture(a, index, dense, terms):
    """``log_mixture``'s rows ``a`` (R, V) from their ``index``, ``dense`` and
    ``terms`` with a shift per (token, word): exact for any logits, at the
    price of a few more passes over the vocabulary."""
    top = torch.full_like(a, float("-inf")).scatter_reduce(-1, index, terms.detach(), "amax")
    hit = torch.isfinite(top)
    top = top.masked_fill(~hit, 0.0)
    sums = torch.zeros_like(a).scatter_add(-1, index, (terms - top.gather(-1, index)).exp())
    # log(1) where no term landed: log(0)'s backward would put NaN into the kept entries
    boost = torch.where(hit, sums.masked_fill(~hit, 1.0).log() + top, float("-inf"))
    return a + torch.logaddexp(dense, boost)


def _pooled_values(weights: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w_ji c_ik for every candidate entry: weights (B, N, T) or (B, N, M, T),
    b (B, T, K) -> (B, N, [M,] T K)."""
    w = weights.float()
    c = F.softplus(b).view(b.size(0), *([1] * (w.dim() - 2)), *b.shape[1:])  # B, 1, [1,] T, K
    return (w.unsqueeze(-1) * c).flatten(-2)


def _word_slots(candidates: torch.Tensor, fill: int):
    """Each sentence's candidate words without repeats: (slot of every entry
    (B, T K), the word of every slot (B, T K), ``fill`` for unused slots).  A
    word is a candidate of every position whose source word lists it."""
    flat = candidates.flatten(1)
    ordered, order = flat.sort(dim=-1)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot_of_ordered = new.long().cumsum(-1) - 1
    slot = torch.empty_like(flat).scatter_(-1, order, slot_of_ordered)
    words = torch.full_like(flat, fill).scatter_(-1, slot_of_ordered, ordered)  # repeats write the same word
    return slot, words


@_float32
def pooled_gold_log_likelihood(
    a, candidates, b, weights, target, fill: int, lse_a=None, softmax_a=None
) -> torch.Tensor:
    """log softmax_v(a_jv + sum_i w_ji c_iv) at y_j without a vocabulary-sized
    pool: a (B, N, V), candidates and b (B, T, K), weights (B, N, T) or
    (B, N, M, T), target (B, N) -> (B, N) or (B, N, M).

    With P_jv = sum_i w_ji c_iv, nonzero only at the sentence's candidate
    words U, the normaliser is log(Z_j + sum_{u in U} exp(a_ju) expm1(P_ju)),
    every term positive; the gold word's pool is the sum of the entries
    listing it.  ``fill`` (the target pad) marks filler entries; ``lse_a``,
    ``softmax_a``: ``vocabulary_partition(a)`` when the caller has it."""
    bsz, n, _ = a.shape
    extra = weights.dim() - 3  # 1 with M samples per token
    values = _pooled_values(weights, b)  # B, N, [M,] T K
    slot, words = _word_slots(candidates, fill)
    spread = (bsz, 1, *([1] * extra), slot.size(-1))
    pool = torch.zeros_like(values).scatter_add(-1, slot.view(spread).expand_as(values), values)
    a_words = a.gather(-1, words.unsqueeze(1).expand(-1, n, -1)).view(bsz, n, *([1] * extra), -1)
    if lse_a is None:
        lse_a = torch.logsumexp(a, dim=-1, keepdim=True)
    else:
        lse_a = _KnownLogSumExp.apply(a, *_known_partition(lse_a, softmax_a))
    lse_a = lse_a.view(bsz, n, *([1] * extra), 1)
    # log expm1(P) = P + log(-expm1(-P)), -inf where P = 0 (unused slots, fillers)
    live = pool > 0
    safe = pool.clamp_min(1e-30)
    log_boost = torch.where(live, safe + torch.log(-torch.expm1(-safe)), float("-inf"))
    boosted = a_words + log_boost
    norm = torch.logsumexp(torch.cat([lse_a.expand(*boosted.shape[:-1], 1), boosted], dim=-1), dim=-1)
    hit = candidates.flatten(1).view(bsz, 1, *([1] * extra), -1).eq(target.view(bsz, n, *([1] * extra), 1))
    gold = a.gather(-1, target.unsqueeze(-1)).view(bsz, n, *([1] * extra)) + (values * hit).sum(-1)
    return gold - norm


class _KnownLogSumExp(torch.autograd.Function):
    """logsumexp_v a_jv from its value (computed once per batch, ``BatchTerms``),
    with logsumexp's gradient softmax(a_j) (``softmax_a`` when known)."""

    @staticmethod
    def forward(ctx, a, lse_a, softmax_a):
        ctx.save_for_backward(a, lse_a, softmax_a)
        return lse_a.clone()

    @staticmethod
    def backward(ctx, g):
        a, lse_a, softmax_a = ctx.saved_tensors
        return _softmax_times(a, lse_a, softmax_a, g), None, None


class BatchTerms:
    """``ShortlistOutputLayer.batch_terms``: a (B, N, V), S and b (B, T, K)
    under one dropout draw, and ``vocabulary_partition(a)``: logsumexp_v a_jv
    (B, N, 1) and softmax_v a_jv (B, N, V), without gradient (each path that
    reads them adds logsumexp's gradient itself, from the saved softmax)."""

    def __init__(self, a, candidates, b):
        self.a, self.candidates, self.b = a, candidates, b
        with torch.no_grad():
            self.lse_a, self.softmax_a = vocabulary_partition(a.float())

    def partition(self) -> dict:
        return {"lse_a": self.lse_a, "softmax_a": self.softmax_a}


class ShortlistSource:
    """What beam search keeps per sentence: S and b (U, T, K) and the
    candidate words' slots (``_word_slots``, U, T K)."""

    def __init__(self, candidates: torch.Tensor, b: torch.Tensor, slots=None):
        self.candidates, self.b = candidates, b
        self.slot, self.words = _word_slots(candidates, 0) if slots is None else slots

    @property
    def rows(self) -> int:
        return self.b.size(0)

    def index_select(self, index: torch.Tensor) -> "ShortlistSource":
        pick = [t.index_select(0, index) for t in (self.candidates, self.b, self.slot, self.words)]
        return ShortlistSource(pick[0], pick[1], (pick[2], pick[3]))


class ShortlistOutputLayer(FactoredOutputLayer):
    """The factored layer's parameters (W_h, W_c, W_o, bias) plus the lexical
    table; see the module docstring."""

    def __init__(
        self,
        hidden_dim,
        context_dim,
        embed_dim,
        vocab_size,
        source_vocab: int,
        shortlist_size: int,
        pad: int,
        dropout=0.0,
        activation="tanh",
    ):
        super().__init__(hidden_dim, context_dim, embed_dim, vocab_size, dropout, 0, activation)
        if shortlist_size < 1:
            raise ValueError(f"--shortlist-size must be >= 1, got {shortlist_size}")
        self.pad = pad
        self.register_buffer("shortlist", torch.full((source_vocab, shortlist_size), pad, dtype=torch.long))
        self.register_buffer("shortlist_built", torch.tensor(False))
        #: () -> (source_vocab, K) table; called once, before a new model's first use
        self.table_builder: Optional[Callable[[], torch.Tensor]] = None

    def set_table(self, table: torch.Tensor) -> None:
        if table.shape != self.shortlist.shape:
            raise ValueError(
                f"a shortlist table of shape {tuple(table.shape)} for a layer of {tuple(self.shortlist.shape)}"
            )
        self.shortlist.copy_(table)
        self.shortlist_built.fill_(True)

    def candidates(self, source_tokens: Optional[torch.Tensor]) -> torch.Tensor:
        """S(x_i) for source tokens (B, T): (B, T, K)."""
        if source_tokens is None:
            raise ValueError("the shortlist output layer needs the source tokens (AlignmentStep.source_tokens)")
        if not bool(self.shortlist_built):
            if self.table_builder is None:
                raise RuntimeError(
                    "this shortlist layer has no lexical table: load it from a checkpoint, or build the "
                    "model with a translation task whose data directory holds the binarised train split"
                )
            with torch.no_grad():
                self.set_table(self.table_builder().to(self.shortlist.device))
        return self.shortlist[source_tokens]

    # -- pieces -----------------------------------------------------------
    def _logits(self, h, enc, source_tokens, masks=None, terms=None):
        """(a (B, N, V), S, b) under one dropout draw (``masks``, else a new one);
        ``terms``: ``batch_terms`` under the same masks."""
        if terms is not None:
            return terms.a, terms.candidates, terms.b
        decoder_mask, source_mask = self.dropout_masks(h) if masks is None else masks
        a = self.decoder_logits(h, decoder_mask).float()
        return (a, *self.source_boosts(enc, source_tokens, source_mask))

    def batch_terms(self, h, enc, masks, source_tokens=None) -> dict:
        """a_j, S, b and logsumexp_v a_jv: every path of a batch (enumeration,
        the REINFORCE baseline, relaxed samples) reads them unchanged."""
        return {"terms": BatchTerms(*self._logits(h, enc, source_tokens, masks))}

    def source_boosts(self, enc, source_tokens, mask=None):
        """(S (B, T, K), b (B, T, K)): b_ik = W_o[S_ik] . d(f(W_c x~_i)), FILLER at filler entries."""
        candidates = self.candidates(source_tokens)
        w = self._masked(self._source_features(enc), mask)  # B, T, D
        rows = F.embedding(candidates, self.fc_out.weight)  # B, T, K, D
        b = torch.matmul(rows, w.unsqueeze(-1)).squeeze(-1).float()
        return candidates, b.masked_fill(candidates.eq(self.pad), FILLER)

    def context_logits(self, h, ctx, masks=None):
        raise NotImplementedError(
            "the shortlist output layer reads alignment weights, not contexts: use weighted_logprobs"
        )

    # -- log p(y | h, weights over the source) ------------------------------
    def weighted_logits(self, h, weights, enc, source_tokens, masks=None):
        """softmax(a_j + sum_i w_ji c_i) logits; weights (B, N, T) or (B, N, M, T)."""
        a, candidates, b = self._logits(h, enc, source_tokens, masks)
        values = _pooled_values(weights, b)  # B, N, [M,] T K
        if weights.dim() == 4:
            a = a.unsqueeze(2)
        index = candidates.reshape(b.size(0), *([1] * (weights.dim() - 2)), -1).expand_as(values)
        pooled = torch.zeros(*values.shape[:-1], a.size(-1), device=a.device).scatter_add(-1, index, values)
        return a + pooled

    def weighted_logprobs(self, h, weights, enc, target=None, masks=None, source_tokens=None, terms=None):
        """``terms``: ``batch_terms`` under the same ``masks``, when the caller has them."""
        if target is None:
            return F.log_softmax(self.weighted_logits(h, weights, enc, source_tokens, masks), dim=-1)
        # the gold word only (baselines, relaxed samples): no vocabulary-sized pool
        a, candidates, b = self._logits(h, enc, source_tokens, masks, terms)
        known = {} if terms is None else terms.partition()
        return pooled_gold_log_likelihood(a, candidates, b, weights, target, self.pad, **known)

    def expected_logits(self, features, step):
        """Soft attention's output: the pool at the expected alignment."""
        return self.weighted_logits(step.hidden, step.weights, step.encoder_states, step.source_tokens)

    # -- log p(y_j | z_j = i) for the gold target --------------------------
    def alignment_logprobs(self, h, enc, target, positions=None, masks=None, source_tokens=None, terms=None):
        a, candidates, b = self._logits(h, enc, source_tokens, masks, terms)
        logp = gold_log_likelihood(a, candidates, b, target, **({} if terms is None else terms.partition()))
        return logp if positions is None else logp.gather(-1, positions)

    # -- the mixture over the vocabulary (generation, scoring) -------------
    def source_cache(self, step):
        """S, b and the candidate words' slots, once per sentence
        (``SourceLogitsCache``): b's gather of K rows of W_o per source
        position costs more than the rest of a step, and the slots a sort
        per step."""
        enc, tokens = step.encoder_states, step.source_tokens
        return SourceLogitsCache.build(
            enc, lambda first: ShortlistSource(*self.source_boosts(enc[first], tokens[first]))
        )

    @staticmethod
    def reorder_source_cache(cache, new_order):
        return SourceLogitsCache.reorder(cache, new_order)

    def mixture_logprobs(self, h, enc, prior: CategoricalAlignment, topk: int = 0, cache=None, source_tokens=None):
        log_w = prior.truncated_log_weights(topk)
        if cache is None:
            a, candidates, b = self._logits(h, enc, source_tokens)
            return log_mixture(a, candidates, b, log_w)
        a = F.log_softmax(self.decoder_logits(h, self.dropout_masks(h)[0]).float(), dim=-1)
        source, k = SourceLogitsCache.grouped(cache)
        # rows r k .. r k + k - 1 read sentence r's source: its tokens are one "batch row" of k N
        rows, n = a.shape[:2]
        out = log_mixture(
            a.reshape(rows // k, k * n, -1),
            source.candidates,
            source.b,
            log_w.reshape(rows // k, k * n, -1),
            slots=(source.slot, source.words),
            lse_a=a.new_zeros(rows // k, k * n, 1),
            overwrite=True,
        )
        return out.view(rows, n, -1)

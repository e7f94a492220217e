"""The factored output layer (``--output-layer factored``; docs/design.md, "Output layers").

The alignment enters the logits additively:

    logit(j, i, v) = a_jv + b_iv,   a_j = W_o d(f(W_h h_j)) + bias,
                                    b_i = W_o d(f(W_c x~_i))

with d = dropout, f the output activation (``--output-activation``: tanh,
or none) and one vocabulary matrix W_o shared by both sides.  Then
everything exact enumeration needs is a product of small matrices instead of
one vocabulary softmax per (j, i) pair:

* the T normalisers, L_ji = logsumexp_v(a_jv + b_iv)
  = m_j + m_i + log sum_v exp(a_jv - m_j) exp(b_iv - m_i), one (N, V) x (V, T)
  product per sentence (m_j, m_i the row maxima);
* log p(y_j | z_j = i) = a_{j,y_j} + b_{i,y_j} - L_ji, gathers for every i;
* the mixture over the vocabulary (generation, ``--score-reference``),
  log p(y_j = v) = a_jv + log sum_i exp(c_ji + b_iv) with c_ji = log p(z_j = i) - L_ji,
  a second product, (N, T) x (T, V), of shifted exp(c_ji + m_i) with the
  same exp(b_iv - m_i) the normalisers read.

Cost: a costs what soft attention's output costs, b one more projection per
*source* position (computed once per sentence, not per target token), the
two products N T V, which is small next to the N D V of a projection.

Why W_o is shared (rather than a separate or low-rank source projection):
it keeps the parameters of the joint layer exactly (W_h, W_c, W_o, bias), so
the two layers are compared at equal size, and it makes every *context*
path linear in the two halves: p(y_j | context c) = softmax(W_o (d(u_j) +
d(tanh(W_c c))) + bias) is a single projection, so soft attention, the
REINFORCE baseline, Gumbel-softmax and Dirichlet samples cost what they cost
with the joint layer.  The
low-rank alternative is an option, ``--factored-source-rank r``: b_i =
E d(tanh(S x~_i)) with its own E (V x r), which cuts b's cost by D/r and
makes context paths two projections; it pays off where the output layer
dominates a step (a small Transformer: benchmarks/README.md).

Soft attention in this family is softmax(a_j + g(E_p[x~])) with
g(c) = W_o d(tanh(W_c c)): the output at the expected context, which is how
the joint layer (and the paper) define soft attention, and the same function
the relaxed estimators evaluate at their sampled contexts.  (The log-linear
pool softmax(a_j + sum_i p_i b_i) would make soft attention a normalised
geometric mixture of the categorical components; it costs the same here,
but it would be a different model from soft attention's usual definition and
from what Gumbel-softmax and Dirichlet samples are fed.)

Numerics: the shifted products can underflow when a_j and b_i peak at words
whose logits differ by more than about 87 nats (float32's range).  Entries
that underflow are recomputed exactly (a logsumexp over the vocabulary for
that (j, i) pair, or over the source for that row of the mixture), so the
result is exact and finite for any logits; the products themselves always run
in float32, also under autocast.
"""

from functools import cached_property
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.models.lstm import Linear

from .alignment import CategoricalAlignment
from .output_base import OutputLayerBase

# Products smaller than this are recomputed exactly: far above float32's
# smallest normal number (1.2e-38), so what is kept has full precision.
UNDERFLOW = 1e-30


def _float32(fn):
    """Run ``fn`` outside autocast, in float32: the products must not lose
    their dynamic range to bf16/fp16."""

    def wrapper(*args, **kwargs):
        device_type = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args), **kwargs)

    return wrapper


class SourceFactors:
    """b and what the products need of it, computed once per sentence (and
    cached across beam-search steps): exp(b - its row maxima), which both
    products read.  Padding positions need no mask: their weights are 0."""

    def __init__(self, b: torch.Tensor):
        self.b = b.float()
        self.row_max = self.b.detach().amax(-1, keepdim=True)  # B, T, 1

    @cached_property
    def row_exp(self):
        return (self.b - self.row_max).exp_()

    @property
    def rows(self) -> int:
        return self.b.size(0)

    def index_select(self, index: torch.Tensor) -> "SourceFactors":
        out = SourceFactors.__new__(SourceFactors)
        for name in ("b", "row_max"):
            setattr(out, name, getattr(self, name).index_select(0, index))
        if "row_exp" in self.__dict__:  # computed already: select, do not recompute
            out.__dict__["row_exp"] = self.__dict__["row_exp"].index_select(0, index)
        return out


@_float32
def log_normalisers(a: torch.Tensor, b) -> torch.Tensor:
    """L_ji = logsumexp_v(a_jv + b_iv) for a (B, N, V), b (B, T, V) or its
    ``SourceFactors``: (B, N, T)."""
    source = b if isinstance(b, SourceFactors) else SourceFactors(b)
    m_a, _, prod, bad = _shifted_product(a, source.row_exp)
    out = m_a + source.row_max.transpose(1, 2) + prod.log()
    if bad.any():
        index, _, exact = _exact_normalisers(a, source.b, bad)
        out = out.index_put(index, exact)
    return out


def _shifted_product(a, b_exp):
    """The normalisers' product for a (B, N, V) and exp(b - row max) (B, T, V):
    (m_a, exp(a - m_a), their product with underflowing entries set to 1,
    the mask of those entries, which the caller recomputes exactly)."""
    m_a = a.detach().amax(-1, keepdim=True)
    a_exp = (a - m_a).exp_()
    prod = torch.bmm(a_exp, b_exp.transpose(1, 2))
    bad = ~(prod > UNDERFLOW)  # also catches NaN from inf - inf rows
    return m_a, a_exp, prod.masked_fill(bad, 1.0), bad


def _exact_normalisers(a, b, bad):
    """L_ji = logsumexp_v(a_jv + b_iv) without the products, at the (b, j, i)
    entries of ``bad``: (their index, the logit rows a_j + b_i, L)."""
    index = bad.nonzero(as_tuple=True)
    rows = a[index[0], index[1]] + b[index[0], index[2]]
    return index, rows, torch.logsumexp(rows, dim=-1)


class _GoldLogLikelihood(torch.autograd.Function):
    """a_{j,y_j} + b_{i,y_j} - L_ji with the products above and a hand-written
    backward.  Autograd's graph of the same expression keeps, at the peak of
    its backward, the two exp factors, their gradients, the two products'
    gradients and the gathers' scattered gradients: about seven (B, N, V)-sized
    tensors, the peak of a whole training step of enumeration.  This backward
    needs the two saved factors and one new tensor per side:

        d/da_jv = [v = y_j] sum_i g_ji - exp(a_jv - m_j) sum_i (g_ji / P_ji) exp(b_iv - m_i)

    (P the shifted product; the row maxima cancel from the gradient), and the
    same with the roles of a and b exchanged."""

    @staticmethod
    def forward(ctx, a, b, b_exp, b_max, target):
        m_a, a_exp, prod, bad = _shifted_product(a, b_exp)  # bad: redone by the caller, g is 0 there
        gold_a = a.gather(-1, target.unsqueeze(-1))
        gold_b = b.gather(-1, _source_index(target, b.size(1))).transpose(1, 2)
        out = gold_a + gold_b - (m_a + b_max.transpose(1, 2) + prod.log())
        ctx.save_for_backward(a_exp, b_exp, prod, target)
        ctx.mark_non_differentiable(bad)
        return out, bad

    @staticmethod
    def backward(ctx, g, _bad):
        a_exp, b_exp, prod, target = ctx.saved_tensors
        w = -g / prod  # B, N, T; negated here rather than the (B, N, V) results
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = torch.bmm(w, b_exp).mul_(a_exp)
            grad_a.scatter_add_(-1, target.unsqueeze(-1), g.sum(-1, keepdim=True))
        if ctx.needs_input_grad[1]:
            grad_b = torch.bmm(w.transpose(1, 2), a_exp).mul_(b_exp)
            grad_b.scatter_add_(-1, _source_index(target, b_exp.size(1)), g.transpose(1, 2))
        return grad_a, grad_b, None, None, None


def _source_index(target, t):
    """target (B, N) as an index into b (B, T, V): y_j for every source row i."""
    return target.unsqueeze(1).expand(-1, t, -1)


@_float32
def gold_log_likelihood(a: torch.Tensor, b, target: torch.Tensor) -> torch.Tensor:
    """log p(y_j | z_j = i) = a_{j,y_j} + b_{i,y_j} - L_ji for a (B, N, V),
    b (B, T, V) or its ``SourceFactors``, target (B, N): (B, N, T).  Equal to
    gathering from ``log_normalisers`` but with about half the backward's
    peak memory (``_GoldLogLikelihood``)."""
    source = b if isinstance(b, SourceFactors) else SourceFactors(b)
    out, bad = _GoldLogLikelihood.apply(a, source.b, source.row_exp.detach(), source.row_max, target)
    if bad.any():
        index, rows, norm = _exact_normalisers(a, source.b, bad)
        gold = rows.gather(-1, target[index[0], index[1]].unsqueeze(-1)).squeeze(-1)
        out = out.index_put(index, gold - norm)
    return out


@_float32
def log_mixture(a: torch.Tensor, b, c: torch.Tensor) -> torch.Tensor:
    """log sum_i exp(a_jv + b_iv + c_ji) for a (B, N, V), b (B, T, V) or its
    ``SourceFactors``, c (B, N, T), -inf where position i has no weight
    (padding, outside a top-k set).

    With d_ji = c_ji + max_v b_iv and m_j = max_i d_ji, the sum is
    a_jv + m_j + log sum_i exp(d_ji - m_j) exp(b_iv - max_v b_iv): the
    product reads the same exp(b - row max) as the normalisers, so one copy
    of b's factors is streamed per step.  A row underflows only where some
    word is ~69 nats below the top of every weighted b_i (a trained model's
    b spans at most ~32 nats: docs/design.md, "Output layers"); such rows
    are recomputed exactly."""
    source = b if isinstance(b, SourceFactors) else SourceFactors(b)
    d = c + source.row_max.transpose(1, 2)  # B, N, T; -inf stays -inf
    m_d = d.detach().amax(-1, keepdim=True)  # B, N, 1
    m_d = m_d.masked_fill(~torch.isfinite(m_d), 0.0)  # a row without weight: redone below
    prod = torch.bmm((d - m_d).exp(), source.row_exp)  # B, N, V
    # one reduction finds the rows to redo (NaN fails the comparison too); the
    # rest are a log and in-place adds: at generation these passes over the
    # vocabulary cost about what the product does
    bad_rows = ~(prod.detach().amin(-1) > UNDERFLOW)  # B, N
    redo = bool(bad_rows.any())
    if redo:  # no log(0) in the graph: its backward would put NaN into the kept rows' gradients
        prod = prod.masked_fill(bad_rows.unsqueeze(-1), 1.0)
    out = prod.log().add_(a).add_(m_d)
    if redo:
        bi, ji = bad_rows.nonzero(as_tuple=True)
        exact = a[bi, ji] + torch.logsumexp(c[bi, ji].unsqueeze(-1) + source.b[bi], dim=1)
        out = out.index_put((bi, ji), exact)
    return out


def log_marginal(a: torch.Tensor, source: SourceFactors, log_w: torch.Tensor, k: int = 1) -> torch.Tensor:
    """log sum_i w_ji softmax_v(a_j + b_i)_v for every v: (B * k, N, V), where
    a (B * k, N, V) holds k rows (beam hypotheses) per sentence of ``source``
    and log_w (B * k, N, T) the alignment weights: the k hypotheses of a
    sentence become k * N rows against its one b."""
    rows, n = a.shape[:2]
    a = a.reshape(rows // k, k * n, -1)
    log_w = log_w.reshape(rows // k, k * n, -1)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (a, log_w, source.b))
    out = None if needs_grad else _log_marginal_no_grad(a, source, log_w)
    if out is None:
        out = log_mixture(a, source, log_w - log_normalisers(a, source))
    return out.reshape(rows, n, -1)


# the sentences one pass of ``_log_marginal_no_grad`` takes hold about this
# many bytes of exp(b): the mixture's product reads them again from cache
_CHUNK_BYTES = 4 << 20


@torch.no_grad()
@_float32
def _log_marginal_no_grad(a, source: SourceFactors, log_w):
    """``log_marginal``'s value for a (S, R, V), log_w (S, R, T) without
    autograd (beam search, scoring), or None where an entry underflows (the
    caller then takes the exact path).

    The same two products as ``log_normalisers`` and ``log_mixture``, with
    fewer passes over the (S, R, V) rows: exp(a - lse a) is one fused softmax
    (lse a = max a - log max softmax, exact as in docs/design.md, "Output
    layers"), with which the normalisers' shifts cancel in the mixture's
    coefficients, d_ji = log w_ji - L_ji + max_v b_iv
    = log w_ji - lse_v a_jv - log sum_v softmax(a_j)_v exp(b_iv - max_v b_iv);
    and the products, the log and the adds run a few sentences at a time, so
    the mixture reads exp(b) and writes its rows while they are in cache."""
    p = torch.softmax(a, dim=-1)
    lse_a = a.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log_()
    out = torch.empty_like(p)
    b_exp = source.row_exp
    step = max(1, _CHUNK_BYTES // max(1, b_exp[0].numel() * b_exp.element_size()))
    for first in range(0, a.size(0), step):
        part = slice(first, first + step)
        z = torch.bmm(b_exp[part], p[part].transpose(1, 2)).transpose(1, 2)  # s, R, T
        if not bool(z.amin() > UNDERFLOW):
            return None
        d = log_w[part] - lse_a[part] - z.log_()  # -inf where position i has no weight
        m_d = d.amax(-1, keepdim=True)
        if not bool(torch.isfinite(m_d).all()):
            return None
        mix = torch.bmm(d.sub_(m_d).exp_(), b_exp[part], out=out[part])
        if not bool(mix.amin() > UNDERFLOW):
            return None
        mix.log_().add_(a[part]).add_(m_d)
    return out


class FactoredOutputLayer(OutputLayerBase):
    """Same parameters and interface as ``AlignmentOutputLayer``; see the module docstring."""

    #: every log p(y | z = i) costs about what a few do: gather samples from them
    enumeration_is_cheap = True

    def __init__(self, hidden_dim, context_dim, embed_dim, vocab_size, dropout=0.0, source_rank=0, activation="tanh"):
        super().__init__(hidden_dim, context_dim, embed_dim, vocab_size, dropout, activation)
        # --factored-source-rank r: b_i = E d(tanh(S x~_i)) with E (V x r), S (r x C)
        # of its own, T r V instead of T D V per sentence (see the module docstring)
        self.source_rank = source_rank
        if source_rank > 0:
            self.source_proj = Linear(context_dim, source_rank, bias=False)
            self.source_out = Linear(source_rank, vocab_size, bias=False)

    # -- pieces -----------------------------------------------------------
    def dropout_masks(self, h):
        """(decoder mask (B, N, D), source mask (B, 1, D)), or Nones outside training.

        The decoder side gets a mask per target token, the source side one
        per sentence, so no mask varies with the alignment: with a mask per
        (j, i), log p(y_j | z_j = i) would differ across i by dropout noise
        alone, and the prior would be fitted to that noise
        (docs/design.md, "Is the latent attention learning?")."""
        p = self.dropout.p
        if not self.training or p == 0:
            return None, None
        decoder = h.new_empty(*h.shape[:-1], self.fc_out.in_features).bernoulli_(1 - p) / (1 - p)
        source = h.new_empty(h.size(0), 1, self.source_rank or self.fc_out.in_features).bernoulli_(1 - p) / (1 - p)
        return decoder, source

    @staticmethod
    def _masked(features, mask):
        return features if mask is None else features * mask

    def decoder_logits(self, h, mask=None):
        """a_j = W_o d(f(W_h h_j)) + bias."""
        return self.fc_out(self._masked(self.act(self.hidden_proj(h)), mask))

    def _source_features(self, x):
        return self.act(self.source_proj(x) if self.source_rank else self.context_proj(x))

    def _source_project(self, w):
        return self.source_out(w) if self.source_rank else F.linear(w, self.fc_out.weight)

    def source_logits(self, enc, mask=None):
        """b_i = W_o d(f(W_c x~_i)) (or its low-rank form), once per source position."""
        return self._source_project(self._masked(self._source_features(enc), mask))

    # -- log p(y | h, explicit context) ----------------------------------
    def context_logits(self, h, ctx, masks=None):
        """softmax(a_j + g(ctx)) logits; ctx (B, N, C) or (B, N, K, C)."""
        decoder_mask, source_mask = self.dropout_masks(h) if masks is None else masks
        u = self._masked(self.act(self.hidden_proj(h)), decoder_mask)
        w = self._source_features(ctx)
        if ctx.dim() == 4:
            u = u.unsqueeze(2)
            source_mask = None if source_mask is None else source_mask.unsqueeze(2)
        w = self._masked(w, source_mask)
        if self.source_rank:  # two projections: a_j and g(ctx) have their own matrices
            return (self.fc_out(u) + self.source_out(w)).float()
        return self.fc_out(u + w).float()

    def context_logprobs(self, h, ctx, target=None, masks=None):
        return self._select(F.log_softmax(self.context_logits(h, ctx, masks), dim=-1), target)

    def soft_logits(self, features, h, ctx):
        """Soft attention's output: the output at the expected context ``ctx``."""
        return self.context_logits(h, ctx)

    # -- log p(y_j | z_j = i) for the gold target --------------------------
    def alignment_logprobs(
        self, h, enc, target, positions: Optional[torch.Tensor] = None, masks=None, source_tokens=None
    ):
        """log p(y_j | x, y_<j, z_j = i): (B, N, T), or (B, N, K) at ``positions``."""
        decoder_mask, source_mask = self.dropout_masks(h) if masks is None else masks
        a = self.decoder_logits(h, decoder_mask).float()  # B, N, V
        b = self.source_logits(enc, source_mask).float()  # B, T, V
        logp = gold_log_likelihood(a, SourceFactors(b), target)  # B, N, T
        return logp if positions is None else logp.gather(-1, positions)

    # -- the mixture over the vocabulary (generation, scoring) -------------
    def source_cache(self, step):
        enc = step.encoder_states
        return SourceLogitsCache.build(enc, lambda first: SourceFactors(self.source_logits(enc[first])))

    @staticmethod
    def reorder_source_cache(cache, new_order):
        return SourceLogitsCache.reorder(cache, new_order)

    def mixture_logprobs(self, h, enc, prior: CategoricalAlignment, topk: int = 0, cache=None, source_tokens=None):
        """log sum_i p(z_j = i) p(y_j = v | z_j = i) for every v: (B, N, V);
        ``topk`` > 0 keeps the k most probable alignments, renormalised.
        ``cache``: a ``SourceLogitsCache`` for ``enc`` (incremental decoding)."""
        decoder_mask, source_mask = self.dropout_masks(h)
        a = self.decoder_logits(h, decoder_mask).float()
        if cache is None:
            source, k = SourceFactors(self.source_logits(enc, source_mask)), 1
        else:
            source, k = SourceLogitsCache.grouped(cache)
        return log_marginal(a, source, prior.truncated_log_weights(topk), k)


class SourceLogitsCache:
    """What the output layer computes from the source alone (the factored
    layer's b = g(x~), the shortlist layer's candidates and boosts) for
    incremental decoding, computed once per *sentence*.

    Beam search repeats each sentence's encoder outputs once per hypothesis
    and reorders the hypotheses at every step.  Caching b per hypothesis
    would hold (and copy, at every reorder) beam x T x V floats per sentence;
    this cache holds T x V per distinct sentence plus each hypothesis's
    sentence index, and when the hypotheses of each sentence sit next to each
    other in equal numbers (fairseq's layout) the products run on the
    sentence's b without any copy.  Sentences that finish are dropped from
    the cache when the decoder stops asking for them.

    The per-sentence part ("source") is anything with ``rows`` and
    ``index_select(index)`` (``SourceFactors``; the shortlist layer's
    ``ShortlistSource``).
    """

    @staticmethod
    def build(enc, compute):
        """A cache for the rows of ``enc`` (R, T, C):
        {"source": compute(first) for U sentences, "sentence": (R,)}, where
        ``first`` (R,) marks each sentence's first row.

        Consecutive rows with the same annotations (beam copies) share one
        sentence.  "The same" allows a relative 1e-5: identical sentences in
        one batch can come out of the encoder a few ulps apart.
        """
        rows = enc.size(0)
        flat = enc.detach().reshape(rows, -1).float()
        tolerance = 1e-5 * flat.abs().amax().clamp_min(1.0)
        new = torch.ones(rows, dtype=torch.bool, device=enc.device)
        new[1:] = (flat[1:] - flat[:-1]).abs().amax(-1) > tolerance
        sentence = new.long().cumsum(0) - 1
        return {"source": compute(new), "sentence": sentence}

    @staticmethod
    def reorder(cache, new_order):
        sentence = cache["sentence"].index_select(0, new_order)
        kept = torch.unique(sentence)
        source = cache["source"]
        if kept.numel() < source.rows:
            source = source.index_select(kept)
            sentence = torch.searchsorted(kept, sentence)
        return {"source": source, "sentence": sentence}

    @staticmethod
    def grouped(cache):
        """(SourceFactors of U sentences, hypotheses per sentence k) so that row
        r belongs to sentence r // k, copying only if the rows are not laid out so."""
        source, sentence = cache["source"], cache["sentence"]
        sentences, rows = source.rows, sentence.numel()
        if rows % sentences == 0:
            k = rows // sentences
            layout = torch.arange(sentences, device=sentence.device).repeat_interleave(k)
            if torch.equal(sentence, layout):
                return source, k
        return source.index_select(sentence), 1

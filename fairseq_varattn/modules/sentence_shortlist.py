"""The sentence-shortlist output layer (``--output-layer sentence-shortlist``;
docs/design.md, "Output layers").

The shortlist layer lets source position i raise only its own word's K
candidates S(x_i), and only raise them (c >= 0).  This layer lets every
position move, up or down, any word of the sentence's candidate set
U(x) = union_i S(x_i) (the same IBM model 1 table, ``modules/lexical.py``):

    logit(j, i, v) = a_jv + c_iv,   c_iv = b_iv = W_o[v] . d(f(W_c x~_i)) for v in U(x), 0 otherwise.

Since U is one set for the whole sentence, with R_j = sum_{v not in U} exp(a_jv),

    L_ji = logsumexp_v(a_jv + c_iv) = log(R_j + sum_{u in U} exp(a_ju + b_iu))

is the factored layer's normaliser over a reduced vocabulary of |U| + 1
columns, a'_j = (a_jU, log R_j) and b'_i = (b_iU, 0): the gold likelihood,
the mixture, their underflow handling and hand-written backward are the
factored layer's own (``factored_output.py``) on a few hundred columns
instead of V, and b costs T |U| D instead of T V D.  log R_j is a
logsumexp over the words outside U, not Z_j minus the candidates' mass, so
nothing cancels however much of a_j's mass U holds.  Words outside U (a
token no source word of the sentence lists) are predicted by a_j alone, as
the factored layer predicts them where b_i is flat.

Context paths (soft attention, the REINFORCE baseline, relaxed samples) are
the log-linear pool softmax(a_j + sum_i w_ji c_i), as in the shortlist layer:
a (B, N, T) x (B, T, U) product scattered onto a_j.
"""

from functools import cached_property

import torch
import torch.nn.functional as F

from . import factored_output as factored
from .factored_output import SourceFactors, SourceLogitsCache, _float32
from .shortlist_output import ShortlistOutputLayer


def sentence_words(candidates: torch.Tensor, pad: int):
    """The distinct candidate words of each sentence, candidates (B, T, K):
    (words (B, U) ascending, then ``pad``; valid (B, U)), U the largest count
    in the batch (at least 1).  Filler entries (``pad``) are not words."""
    flat = candidates.flatten(1)
    ordered = flat.sort(dim=-1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    new &= ordered.ne(pad)
    count = new.sum(-1)
    size = max(int(count.max()) if count.numel() else 0, 1)
    # a second sort moves each distinct word to the front, in order
    beyond = torch.iinfo(ordered.dtype).max
    words = ordered.masked_fill(~new, beyond).sort(dim=-1).values[:, :size]
    valid = torch.arange(size, device=flat.device).unsqueeze(0) < count.unsqueeze(1)
    return words.masked_fill(~valid, pad), valid


def selected_mask(words: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """[v in U] for every word: (B, V)."""
    mask = torch.zeros(words.size(0), vocab, dtype=torch.bool, device=words.device)
    # invalid slots all hold pad, which is never in U: writing False there is harmless
    return mask.scatter_(-1, words, valid)


def _rows_of(x: torch.Tensor, n: int, extra: int = 0) -> torch.Tensor:
    """A per-sentence (B, U) tensor viewed against (B, n, [1,] * extra, U)."""
    return x.view(x.size(0), 1, *([1] * extra), x.size(-1)).expand(x.size(0), n, *([1] * extra), x.size(-1))


def _reduced_columns(a, index, valid, log_rest):
    """a'_j = (a_jU, -inf at unused slots, log R_j): (B, N, U + 1)."""
    return torch.cat([a.gather(-1, index).masked_fill_(~valid, float("-inf")), log_rest], dim=-1)


# an outside sum below this (relative to the largest logit) is redone with the
# outside words' own maximum: far above float32's smallest normal number
UNDERFLOW = 1e-30


class _ReducedDecoder(torch.autograd.Function):
    """a'_j = (a_jU, log R_j) and the gold logit a_{j,y_j}, with one (B, N, V)
    tensor saved and one written backward.  Autograd's graph of the same
    (a masked copy for the logsumexp, two gathers) saves the masked copy and
    builds three vocabulary-sized gradients backward, which cost a sentence
    row twice soft attention's backward (benchmarks/README.md, "The
    sentence-shortlist layer").

    log R_j = m_j + log s_j with s_j = sum_{v not in U} exp(a_jv - m_j) and
    m_j = max_v a_jv; e = exp(a - m) at the outside words, 0 in U, is kept
    for the backward: d log R_j / d a_jv = e_jv / s_j.  Rows whose outside
    mass underflows next to m_j (U holds all but e^-69 of it) are redone
    with the outside words' own maximum."""

    @staticmethod
    def forward(ctx, a, index, valid, in_u, target):
        m = a.amax(-1, keepdim=True)
        e = (a - m).exp_().masked_fill_(in_u, 0.0)
        s = e.sum(-1, keepdim=True)
        bad = ~(s > UNDERFLOW)  # B, N, 1; also NaN
        if bool(bad.any()):
            rows = bad.squeeze(-1).nonzero(as_tuple=True)
            outside = a[rows].masked_fill(in_u.expand_as(a)[rows], float("-inf"))
            top = outside.amax(-1, keepdim=True)
            m = m.index_put(rows, top)
            e = e.index_put(rows, (outside - top).exp())
            s = s.index_put(rows, e[rows].sum(-1, keepdim=True))
        reduced = _reduced_columns(a, index, valid, m + s.log())
        ctx.save_for_backward(e, s, index, valid, target)
        return reduced, a.gather(-1, target.unsqueeze(-1))

    @staticmethod
    def backward(ctx, g_reduced, g_gold):
        e, s, index, valid, target = ctx.saved_tensors
        grad = e * (g_reduced[..., -1:] / s)
        grad.scatter_add_(-1, index, g_reduced[..., :-1].masked_fill(~valid, 0.0))
        grad.scatter_add_(-1, target.unsqueeze(-1), g_gold)
        return grad, None, None, None, None


@_float32
def reduced_decoder(a: torch.Tensor, selection: "SentenceSelection", target=None):
    """a'_j = (a_jU, log R_j) for a (B, N, V) and a sentence's ``selection``:
    (B, N, U + 1), -inf at unused slots; with ``target`` (B, N), also the
    gold logits a_{j,y_j} (B, N, 1)."""
    n = a.size(1)
    gold_index = torch.zeros(a.shape[:2], dtype=torch.long, device=a.device) if target is None else target
    index, valid = _rows_of(selection.words, n), _rows_of(selection.valid, n)
    reduced, gold = _ReducedDecoder.apply(a, index, valid, selection.in_u(a.size(-1)), gold_index)
    return reduced if target is None else (reduced, gold)


def reduced_target(target: torch.Tensor, words: torch.Tensor, valid: torch.Tensor):
    """(y_j's column in the reduced vocabulary (B, N): its slot in U, or U for
    "outside U"; whether it is in U (B, N))."""
    size = words.size(-1)
    keys = words.masked_fill(~valid, torch.iinfo(words.dtype).max)  # ascending
    slot = torch.searchsorted(keys, target).clamp_max(size - 1)
    hit = keys.gather(-1, slot).eq(target)
    return torch.where(hit, slot, torch.full_like(slot, size)), hit


class SentenceSelection:
    """One sentence's side of the layer: U's words and validity (B, U) and
    b_iU (B, T, U), 0 at unused slots; ``factors``: b' = (b_iU, 0) as the
    factored layer's ``SourceFactors``."""

    def __init__(self, words: torch.Tensor, valid: torch.Tensor, b: torch.Tensor):
        self.words, self.valid, self.b = words, valid, b
        self._in_u = None

    @cached_property
    def factors(self) -> SourceFactors:
        return SourceFactors(F.pad(self.b.float(), (0, 1)))

    def in_u(self, vocab: int) -> torch.Tensor:
        """[v in U] (B, 1, V), computed once: the reduced logits, the mixture
        and every step of beam search read it."""
        if self._in_u is None or self._in_u.size(-1) != vocab:
            self._in_u = selected_mask(self.words, self.valid, vocab).unsqueeze(1)
        return self._in_u

    @property
    def rows(self) -> int:
        return self.b.size(0)

    def index_select(self, index: torch.Tensor) -> "SentenceSelection":
        out = SentenceSelection(*(t.index_select(0, index) for t in (self.words, self.valid, self.b)))
        if "factors" in self.__dict__:
            out.__dict__["factors"] = self.factors.index_select(index)
        return out


class SelectionTerms:
    """``SentenceShortlistOutputLayer.batch_terms``: a (B, N, V) and the
    sentence's ``SentenceSelection`` under one dropout draw; ``reduced(target)``:
    a' (B, N, U + 1) and the gold logits (B, N, 1), computed once for every
    path of the batch that reads them."""

    def __init__(self, a: torch.Tensor, selection: SentenceSelection):
        self.a, self.selection = a, selection
        self._reduced = None

    def reduced(self, target: torch.Tensor):
        if self._reduced is None or self._reduced[0] is not target:
            pair = reduced_decoder(self.a, self.selection, target)
            self._reduced = (target, pair)
        return self._reduced[1]


@_float32
def gold_log_likelihood(reduced_a, gold_a, selection: SentenceSelection, target) -> torch.Tensor:
    """log p(y_j | z_j = i) = a_{j,y_j} + c_{i,y_j} - L_ji: (B, N, T), from
    ``reduced_decoder(a, ..., target)``.  A target outside U is the reduced
    vocabulary's last column, log R_j, moved back to its own logit a_{j,y_j}."""
    column, hit = reduced_target(target, selection.words, selection.valid)
    out = factored.gold_log_likelihood(reduced_a, selection.factors, column)
    return out + (gold_a - reduced_a[..., -1:]).masked_fill(hit.unsqueeze(-1), 0.0)


@_float32
def log_mixture(a, reduced_a, selection: SentenceSelection, log_w) -> torch.Tensor:
    """log sum_i w_ji p(y_j = v | z_j = i) for every v: (B, N, V); log_w
    (B, N, T), -inf where position i has no weight.  The reduced mixture's
    last column is every outside word's, less its logit: a_jv - log R_j + it."""
    mix = factored.log_marginal(reduced_a, selection.factors, log_w)  # the mixture over U + 1 columns
    outside = a + (mix[..., -1:] - reduced_a[..., -1:])
    # unused slots all hold pad, which is outside U: ``where`` keeps its
    # outside value and sends their scattered copies no gradient
    inside = torch.zeros_like(a).scatter(-1, _rows_of(selection.words, a.size(1)), mix[..., :-1])
    return torch.where(selection.in_u(a.size(-1)), inside, outside)


def _outside_log_mass(a, in_u, at):
    """log sum_{v not in U} exp(a_jv) for the tokens ``at`` (indices into
    a's (B, N)) of a (B, N, V), in_u (B, 1, V): (K, 1), with its own shift,
    for tokens whose outside mass cannot be had otherwise."""
    return torch.logsumexp(a[at].masked_fill_(in_u.squeeze(1)[at[0]], float("-inf")), dim=-1, keepdim=True)


def _outside_mass(a, index, valid, at):
    """sum_{v not in U} exp(a_jv) for the tokens ``at`` of a log-softmax a
    (B, N, V), index (B, N, U) its slots of U: (K, 1).  a <= 0, so exp(a)
    needs no shift; the row's sum less U's is taken in float64 from the
    same float32 terms, so nothing is lost to cancellation however much of
    the mass U holds, and unused slots (pad, outside U) are not subtracted.
    Where every outside word underflows it is 0, which changes no
    normaliser that does not underflow itself (``mixture_in_place`` checks)."""
    e = a[at].exp_()  # K, V
    e_u = e.gather(-1, index[at]).masked_fill_(~valid[at[0]], 0.0)
    return (e.sum(-1, keepdim=True, dtype=torch.float64) - e_u.sum(-1, keepdim=True, dtype=torch.float64)).float()


def _sensitive_tokens(d, top, mix, shifted, low, row_exp, weighted):
    """Tokens (B, N) with a mixture entry sum_i t_i whose sensitivity to a
    common error in Z_j., sum_i (t_i / Z_ji) / sum_i t_i, exceeds 1; ``mix``
    holds the entries over exp(top), t_i = exp(d_ji) row_exp_iv.  Entries
    are compared in linear space and reduced with ``amax``: logs and
    boolean reductions over (B, N, U) cost more here than the products."""
    over_z = torch.where(weighted, d - shifted.log() - low, d)  # log(t_i / Z_ji) less log row_exp_iv
    top_z = over_z.amax(-1, keepdim=True)
    excess = torch.bmm((over_z - top_z).exp_(), row_exp).mul_((top_z - top).exp_()).sub_(mix)
    return excess.amax(-1) > 0.0


@torch.no_grad()
def mixture_in_place(a, selection: SentenceSelection, log_w) -> torch.Tensor:
    """``log_mixture`` for beam search, written over ``a``: a log-softmax
    (B, N, V) that nothing else reads.  Words outside U get a_jv plus one
    constant per token, log sum_i w_ji / Z_ji, so the only pass over a row
    is that add, with a gather and a scatter at U.

    Z_ji = R_j + sum_u p_ju e^{b_iu} needs R_j, the mass outside U.  Taken
    as 1 - sum_u p_ju it needs no exponential of the whole row, and errs by
    the log-softmax's own mass error |1 - sum_v p_jv|, the same for every i.
    A mixture entry sum_i t_i, t_i = w_ji e^{c_iv} / Z_ji, then errs by that
    times sum_i (t_i / Z_ji) / sum_i t_i; where that factor exceeds 1 for
    some entry of a token (10% of a trained model's tokens), R_j is summed
    over the outside words instead, so every entry errs by at most the mass
    error (docs/design.md, "Generation").  Sentences where a product
    underflows take ``_mixture_in_place_summed``, whose shifts are exact for
    any logits.

    Unused slots of U hold pad with b = 0: their column of the products is
    the outside words' column, so no check or write needs them masked."""
    rows, n = a.shape[:2]
    index = _rows_of(selection.words, n).contiguous()  # a gather with an expanded index is twice as slow
    a_u = a.gather(-1, index)
    p = a_u.exp().masked_fill_(~selection.valid.unsqueeze(1), 0.0)  # B, N, U
    source = selection.factors  # b' = (b_iU, 0), m_i = max(0, max_u b_iu): row_exp's last column is e^{-m_i}
    row_exp, low = source.row_exp, source.row_max.transpose(1, 2)  # B, T, U + 1; B, 1, T
    inside = torch.bmm(p, row_exp[..., :-1].transpose(1, 2))  # B, N, T
    outside = (1.0 - p.sum(-1, keepdim=True, dtype=torch.float64)).clamp_min_(0.0).float()  # B, N, 1
    shifted = torch.addcmul(inside, outside, row_exp[..., -1].unsqueeze(1))  # Z_ji e^{-m_i}
    weighted = log_w > float("-inf")

    def mixture():
        # t_i = w_ji e^{b_iv} / Z_ji = exp(log w_ji - log shifted_ji) row_exp_iv: m_i cancels
        d = torch.where(weighted, log_w - shifted.log(), log_w)  # B, N, T
        top = d.amax(-1, keepdim=True)
        return d, top, torch.bmm((d - top).exp_(), row_exp)  # B, N, U + 1

    d, top, mix = mixture()
    unsure = _sensitive_tokens(d, top, mix, shifted, low, row_exp, weighted)
    if bool(unsure.any()):
        at = unsure.nonzero(as_tuple=True)
        outside = _outside_mass(a, index, selection.valid, at)  # K, 1
        shifted[at] = torch.addcmul(inside[at], outside, row_exp[at[0], :, -1])
        d, top, mix = mixture()
    # NaN (an underflowed product's 0 / 0) fails every comparison: that sentence is redone
    smallest = torch.minimum(torch.where(weighted, shifted, 1.0).amin(-1), mix.amin(-1))  # B, N
    good = (smallest > UNDERFLOW) & torch.isfinite(top.squeeze(-1))
    good = good.float().amin(-1) > 0.0  # B: every token of the sentence
    mix = mix.log_().add_(top)
    keep = good.view(rows, 1, 1)
    a.add_(torch.where(keep, mix[..., -1:], 0.0))
    a.scatter_(-1, index, a_u.add_(torch.where(keep, mix[..., :-1], 0.0)))
    if not bool(good.all()):
        redo = (~good).nonzero().squeeze(-1)
        a[redo] = _mixture_in_place_summed(a[redo], selection.index_select(redo), log_w[redo])
    return a


@torch.no_grad()
def _mixture_in_place_summed(a, selection: SentenceSelection, log_w) -> torch.Tensor:
    """``mixture_in_place`` with R_j summed over the words outside U for
    every token.  a's largest entry is at least -log V and none is above 0,
    so exp(a) needs no shift, and the result is a_jv plus one constant per
    token outside U: five passes over each row (the exponential, its mask,
    its sum, the add and a gather) where autograd's version makes nine and
    allocates four (B, N, V) tensors."""
    index = _rows_of(selection.words, a.size(1))
    valid = selection.valid.unsqueeze(1)
    in_u = selection.in_u(a.size(-1))
    rest = a.exp().masked_fill_(in_u, 0.0).sum(-1, keepdim=True)
    log_rest = rest.log()
    bad = ~(rest > UNDERFLOW)  # the outside words underflow next to 1: sum them with their own shift
    if bool(bad.any()):
        rows = bad.squeeze(-1).nonzero(as_tuple=True)
        log_rest = log_rest.index_put(rows, _outside_log_mass(a, in_u, rows))
    mix = factored.log_marginal(_reduced_columns(a, index, valid, log_rest), selection.factors, log_w)
    a.add_(mix[..., -1:] - log_rest)
    # unused slots hold pad, outside U: they write back its own value
    return a.scatter_(-1, index, torch.where(valid, mix[..., :-1], a.gather(-1, index)))


def _pool(weights: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_i w_ji b_iu: weights (B, N, T) or (B, N, M, T), b (B, T, U) -> (B, N, [M,] U)."""
    if weights.dim() == 4:
        return torch.matmul(weights.float(), b.float().unsqueeze(1))
    return torch.bmm(weights.float(), b.float())


@_float32
def pooled_gold_log_likelihood(reduced_a, gold_a, selection: SentenceSelection, weights, target) -> torch.Tensor:
    """log softmax_v(a_jv + sum_i w_ji c_iv) at y_j: (B, N) or (B, N, M) with
    weights (B, N, M, T), over the reduced vocabulary (a'_jU + P_jU, log R_j);
    ``reduced_a``, ``gold_a``: ``reduced_decoder(a, ..., target)``."""
    extra = weights.dim() - 3
    pool = _pool(weights, selection.b)  # B, N, [M,] U
    reduced = reduced_a.view(*reduced_a.shape[:2], *([1] * extra), -1)
    logits = torch.cat([reduced[..., :-1] + pool, reduced[..., -1:].expand(*pool.shape[:-1], 1)], dim=-1)
    column, _ = reduced_target(target, selection.words, selection.valid)
    column = column.view(*column.shape, *([1] * extra), 1).expand(*pool.shape[:-1], 1)
    gold_pool = F.pad(pool, (0, 1)).gather(-1, column).squeeze(-1)
    gold = gold_a.view(*target.shape, *([1] * extra)) + gold_pool
    return gold - torch.logsumexp(logits, dim=-1)


class SentenceShortlistOutputLayer(ShortlistOutputLayer):
    """The factored layer's parameters (W_h, W_c, W_o, bias) plus the
    shortlist layer's lexical table; see the module docstring."""

    def selection(self, enc, source_tokens, mask=None) -> SentenceSelection:
        """U and b_iU = W_o[U] . d(f(W_c x~_i)) of each sentence."""
        words, valid = sentence_words(self.candidates(source_tokens), self.pad)
        w = self._masked(self._source_features(enc), mask)  # B, T, D
        rows = F.embedding(words, self.fc_out.weight)  # B, U, D
        b = torch.bmm(w, rows.transpose(1, 2)).float().masked_fill(~valid.unsqueeze(1), 0.0)
        return SentenceSelection(words, valid, b)

    def _terms(self, h, enc, source_tokens, masks=None, terms=None) -> SelectionTerms:
        if terms is not None:
            return terms
        decoder_mask, source_mask = self.dropout_masks(h) if masks is None else masks
        a = self.decoder_logits(h, decoder_mask).float()
        return SelectionTerms(a, self.selection(enc, source_tokens, source_mask))

    def batch_terms(self, h, enc, masks, source_tokens=None) -> dict:
        return {"terms": self._terms(h, enc, source_tokens, masks)}

    # -- log p(y | h, weights over the source) ------------------------------
    def weighted_logits(self, h, weights, enc, source_tokens, masks=None, terms=None):
        """softmax(a_j + sum_i w_ji c_i) logits; weights (B, N, T) or (B, N, M, T)."""
        t = self._terms(h, enc, source_tokens, masks, terms)
        pool = _pool(weights, t.selection.b)  # B, N, [M,] U
        a = t.a.unsqueeze(2).expand(*pool.shape[:-1], -1) if weights.dim() == 4 else t.a
        index = _rows_of(t.selection.words, a.size(1), weights.dim() - 3).expand(*pool.shape)
        # unused slots hold pad with b = 0: they add nothing
        return a.scatter_add(-1, index, pool)

    def weighted_logprobs(self, h, weights, enc, target=None, masks=None, source_tokens=None, terms=None):
        if target is None:
            return F.log_softmax(self.weighted_logits(h, weights, enc, source_tokens, masks, terms), dim=-1)
        t = self._terms(h, enc, source_tokens, masks, terms)
        return pooled_gold_log_likelihood(*t.reduced(target), t.selection, weights, target)

    # -- log p(y_j | z_j = i) for the gold target --------------------------
    def alignment_logprobs(self, h, enc, target, positions=None, masks=None, source_tokens=None, terms=None):
        t = self._terms(h, enc, source_tokens, masks, terms)
        logp = gold_log_likelihood(*t.reduced(target), t.selection, target)
        return logp if positions is None else logp.gather(-1, positions)

    # -- the mixture over the vocabulary (generation, scoring) -------------
    def source_cache(self, step):
        """U and b_iU once per sentence (``SourceLogitsCache``)."""
        enc, tokens = step.encoder_states, step.source_tokens
        return SourceLogitsCache.build(enc, lambda first: self.selection(enc[first], tokens[first]))

    def mixture_logprobs(self, h, enc, prior, topk: int = 0, cache=None, source_tokens=None):
        log_w = prior.truncated_log_weights(topk)
        if cache is None:
            t = self._terms(h, enc, source_tokens, self.dropout_masks(h))
            return log_mixture(t.a, reduced_decoder(t.a, t.selection), t.selection, log_w)
        # p(y | z) does not change when a_j moves by a constant: a log-softmax
        # keeps beam search's logits in range (``mixture_in_place``)
        a = F.log_softmax(self.decoder_logits(h, self.dropout_masks(h)[0]).float(), dim=-1)
        selection, k = SourceLogitsCache.grouped(cache)
        # rows r k .. r k + k - 1 read sentence r's source: its k N tokens are one batch row
        rows, n = a.shape[:2]
        out = mixture_in_place(a.reshape(rows // k, k * n, -1), selection, log_w.reshape(rows // k, k * n, -1))
        return out.view(rows, n, -1)

"""The shortlist output layer (--output-layer shortlist) and its lexical table.

The layer's sums over K candidates are checked against the dense model they
stand for: c_iv = softplus(b_ik) at v = S_ik and 0 elsewhere, logits
a_j + c_i over the whole vocabulary, explicit softmaxes in float64.  The
IBM model 1 table is checked against a plain loop of EM and on the shipped
corpus.
"""

import argparse

import pytest
import torch
import torch.nn.functional as F
from helpers import ARCHS, build_model, random_batch, shortlist_model

from fairseq_varattn.modules import lexical
from fairseq_varattn.modules.alignment import CategoricalAlignment
from fairseq_varattn.modules.alignment_head import alignment_defaults, check_alignment_args
from fairseq_varattn.modules.shortlist_output import (
    FILLER,
    ShortlistOutputLayer,
    gold_log_likelihood,
    log_mixture,
    log_normalisers,
    pooled_gold_log_likelihood,
    vocabulary_partition,
)

B, N, T, K, V = 2, 4, 5, 3, 17
PAD = 1


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the draws without a generator of their own


def case(scale, seed, fillers=True):
    """a (B, N, V), distinct candidates (B, T, K) and b (B, T, K) with some filler entries."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, N, V, generator=g) * scale
    candidates = torch.stack([torch.randperm(V - 2, generator=g)[:K] + 2 for _ in range(B * T)]).view(B, T, K)
    b = torch.randn(B, T, K, generator=g) * scale
    if fillers:
        candidates[0, 1, 1:] = PAD  # a word with one candidate
        candidates[1, 0] = PAD  # source padding
        b = b.masked_fill(candidates.eq(PAD), FILLER)
    return a, candidates, b


def dense_c(candidates, b):
    """c (B, T, V): softplus(b) at the candidates, 0 elsewhere (and at fillers)."""
    c = torch.zeros(B, T, V, dtype=torch.double)
    values = F.softplus(b.double()).masked_fill(candidates.eq(PAD), 0.0)
    return c.scatter_add(-1, candidates, values)


def explicit_log_softmax(a, candidates, b):
    """log softmax_v(a_j + c_i): (B, N, T, V) in float64."""
    return torch.log_softmax(a.double().unsqueeze(2) + dense_c(candidates, b).unsqueeze(1), dim=-1)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_normalisers_equal_explicit_logsumexp(scale):
    a, candidates, b = case(scale, 0)
    ref = torch.logsumexp(a.double().unsqueeze(2) + dense_c(candidates, b).unsqueeze(1), dim=-1)
    torch.testing.assert_close(log_normalisers(a, candidates, b).double(), ref, rtol=0, atol=1e-4 * max(1, scale))


def known_partition(a, given):
    """What a batch's paths share (``BatchTerms``): nothing, logsumexp_v a_jv
    alone, or ``vocabulary_partition`` (with the softmax the backward reads)."""
    if given == "lse":
        return {"lse_a": torch.logsumexp(a, -1, keepdim=True).detach().float()}
    if given == "partition":
        return dict(zip(("lse_a", "softmax_a"), vocabulary_partition(a.detach().float())))
    return {}


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_vocabulary_partition_equals_logsumexp_and_softmax(scale):
    """lse from the largest probability, against float64 logsumexp, also for
    rows whose maximum is tied and rows far from zero."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(3, 4, V, generator=g) * scale
    a[0, 0] = 0.0  # every word tied
    a[1, 2, :3] = a[1, 2].max() + 1  # a three-way tie at the top
    a[2] += 5000.0
    lse, softmax = vocabulary_partition(a)
    ref = torch.logsumexp(a.double(), -1, keepdim=True)
    torch.testing.assert_close(lse.double(), ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(softmax.double(), torch.softmax(a.double(), -1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("given", [None, "lse", "partition"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_gold_log_likelihood_value_and_gradient_equal_explicit_softmaxes(scale, given):
    """``given``: what of a's log-partition is passed in, as a batch's paths share it."""
    a, candidates, b = case(scale, 1)
    target = torch.randint(2, V, (B, N))
    target[0, :2] = candidates[0, 2, 0]  # gold words that are candidates of some position
    target[1, 1] = candidates[1, 3, 2]
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    got = gold_log_likelihood(a, candidates, b, target, **known_partition(a, given))
    index = target.view(B, N, 1, 1).expand(-1, -1, T, 1)
    ref = explicit_log_softmax(a, candidates, b).gather(-1, index).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1, scale))
    weights = torch.rand(B, N, T, dtype=torch.double)
    grads = torch.autograd.grad((got * weights).sum(), (a, b))
    refs = torch.autograd.grad((ref * weights).sum(), (a, b))
    for x, y in zip(grads, refs):
        assert torch.isfinite(x).all()
        # float32 arithmetic inside (the layer's products run in float32 whatever the input)
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


def test_gold_gradient_is_finite_at_padding_rows():
    """A padded source position (every entry a filler) must not send NaN anywhere."""
    a, candidates, b = case(5.0, 2)
    b = b.requires_grad_()
    out = gold_log_likelihood(a.requires_grad_(), candidates, b, torch.randint(2, V, (B, N)))
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert b.grad[1, 0].abs().max() == 0  # fillers stay out of the model


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_mixture_equals_explicit_sum_over_alignments(scale):
    a, candidates, b = case(scale, 3)
    scores = torch.randn(B, N, T) * 3
    scores[1, :, 0] = float("-inf")  # the padded position has no weight
    log_w = torch.log_softmax(scores, -1)
    ref = torch.logsumexp(explicit_log_softmax(a, candidates, b) + log_w.double().unsqueeze(-1), dim=2)
    with torch.no_grad():  # generation sums the candidates in place, per distinct word
        in_place = log_mixture(a, candidates, b, log_w)
        # beam search passes log_softmax(a): the same p(y | z), no logsumexp of its own
        zero = torch.zeros(B, N, 1)
        normalised = log_mixture(torch.log_softmax(a, -1), candidates, b, log_w, lse_a=zero, overwrite=True)
    for got in (log_mixture(a, candidates, b, log_w), in_place, normalised):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4 * max(1, scale / 10))
        torch.testing.assert_close(got.double().exp().sum(-1), torch.ones(B, N, dtype=torch.double), rtol=0, atol=1e-4)


def test_mixture_rows_with_huge_boosts_are_summed_exactly():
    """A word 150 nats down under a_j but boosted by 200 at one position: its
    terms lie ~150 nats above the row's dense term, beyond one shared
    shift's range (exp underflows to 0, the other words' log-probabilities
    to -inf).  Such rows take the exact path: every word finite and exact."""
    a, candidates, b = case(2.0, 5)
    word = candidates[0, 2, 0]
    a[0, :, word] = -150.0
    b[0, 2, 0] = 200.0
    log_w = torch.log_softmax(torch.randn(B, N, T), -1)
    ref = torch.logsumexp(explicit_log_softmax(a, candidates, b) + log_w.double().unsqueeze(-1), dim=2)
    with torch.no_grad():  # generation's path, writing over its a (a copy here)
        in_place = log_mixture(a.clone(), candidates, b, log_w, overwrite=True)
    for got in (log_mixture(a, candidates, b, log_w), in_place):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def test_mixture_gradient_equals_explicit():
    a, candidates, b = case(3.0, 4)
    a, b = a.double().requires_grad_(), b.double().requires_grad_()
    scores = torch.randn(B, N, T, dtype=torch.double)
    log_w = torch.log_softmax(scores, -1).requires_grad_()
    weights = torch.rand(B, N, V, dtype=torch.double)
    got = torch.autograd.grad((log_mixture(a, candidates, b, log_w) * weights).sum(), (a, b, log_w))
    ref = torch.logsumexp(explicit_log_softmax(a, candidates, b) + log_w.unsqueeze(-1), dim=2)
    refs = torch.autograd.grad((ref * weights).sum(), (a, b, log_w))
    for x, y in zip(got, refs):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)  # float32 inside


def layer_with_table(seed=0, activation="tanh"):
    torch.manual_seed(seed)
    layer = ShortlistOutputLayer(6, 5, 4, V, source_vocab=9, shortlist_size=K, pad=PAD, activation=activation)
    g = torch.Generator().manual_seed(seed)
    table = torch.stack([torch.randperm(V - 2, generator=g)[:K] + 2 for _ in range(9)])
    table[PAD] = PAD
    table[3, 2] = PAD
    layer.set_table(table)
    with torch.no_grad():  # sharpen: trained-like logits, not near-uniform ones
        layer.fc_out.weight.mul_(8)
    return layer.eval()


def test_one_hot_pool_is_the_categorical_component():
    """The context path at a one-hot weight is p(y | z = i): soft attention,
    baselines and relaxed samples read the same function the categorical
    model does."""
    layer = layer_with_table()
    h, enc = torch.randn(B, N, 6), torch.randn(B, T, 5)
    tokens = torch.randint(2, 9, (B, T))
    tokens[1, 0] = PAD
    target = torch.randint(2, V, (B, N))
    target[:, 0] = layer.shortlist[tokens[:, 2], 0]  # a candidate: the boost matters
    logp = layer.alignment_logprobs(h, enc, target, source_tokens=tokens)
    one_hots = torch.eye(T).expand(B, N, T, T)  # (B, N, M = T samples, T)
    pooled = layer.weighted_logprobs(h, one_hots, enc, target, source_tokens=tokens)
    torch.testing.assert_close(pooled, logp, rtol=0, atol=1e-5)
    assert (logp.max(-1).values - logp.min(-1).values)[:, 0].min() > 0.5  # the alignment moves it


@pytest.mark.parametrize("given", [None, "lse", "partition"])
@pytest.mark.parametrize("samples", [0, 3])
def test_pooled_gold_equals_the_vocabulary_pool(samples, given):
    """The context path at the gold word, summed over the sentence's
    candidate words only, against log_softmax over the whole pooled
    vocabulary: values and gradients, repeated candidates included;
    ``given``: what of a's log-partition is passed in, as a batch's paths share it."""
    a, candidates, b = case(4.0, 6)
    candidates[0, 3] = candidates[0, 2]  # a source word twice: every candidate repeated
    b = b.masked_fill(candidates.eq(PAD), FILLER)
    shape = (B, N, samples, T) if samples else (B, N, T)
    weights = torch.softmax(torch.randn(*shape) * 3, -1).double().requires_grad_()
    target = torch.randint(2, V, (B, N))
    target[0, :2] = candidates[0, 2, :2]
    target[1, 3] = candidates[1, 4, 0]
    a, b = a.double().requires_grad_(), b.double().requires_grad_()
    got = pooled_gold_log_likelihood(a, candidates, b, weights, target, PAD, **known_partition(a, given))
    c = dense_c(candidates, b)  # B, T, V
    pooled = (weights.unsqueeze(-1) * c.view(B, 1, *([1] * bool(samples)), T, V)).sum(-2)
    logits = a.unsqueeze(2) + pooled if samples else a + pooled
    index = target.view(B, N, *([1] * bool(samples)), 1).expand(*logits.shape[:-1], 1)
    ref = torch.log_softmax(logits, -1).gather(-1, index).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-4)
    g = torch.rand_like(ref)
    for x, y in zip(
        torch.autograd.grad((got * g).sum(), (a, b, weights)), torch.autograd.grad((ref * g).sum(), (a, b, weights))
    ):
        torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-5)


def test_layer_mixture_is_the_prior_weighted_components():
    layer = layer_with_table(1)
    h, enc = torch.randn(B, N, 6), torch.randn(B, T, 5)
    tokens = torch.randint(2, 9, (B, T))
    prior = CategoricalAlignment(torch.randn(B, N, T) * 2)
    mix = layer.mixture_logprobs(h, enc, prior, source_tokens=tokens)
    for v in range(2, V):
        target = torch.full((B, N), v)
        comp = layer.alignment_logprobs(h, enc, target, source_tokens=tokens)
        torch.testing.assert_close(mix[..., v], torch.logsumexp(comp + prior.log_probs, -1), rtol=0, atol=1e-5)


def test_a_layer_without_table_says_so():
    layer = ShortlistOutputLayer(6, 5, 4, V, source_vocab=9, shortlist_size=K, pad=PAD)
    with pytest.raises(RuntimeError, match="no lexical table"):
        layer.candidates(torch.zeros(1, 2, dtype=torch.long))
    layer.table_builder = lambda: torch.full((9, K), PAD)
    layer.candidates(torch.zeros(1, 2, dtype=torch.long))
    assert bool(layer.shortlist_built)


def test_shortlist_size_needs_the_shortlist_layer():
    args = argparse.Namespace(output_layer="factored", shortlist_size=8)
    alignment_defaults(args)
    with pytest.raises(ValueError, match="--shortlist-size"):
        check_alignment_args(args)
    args.output_layer = "shortlist"
    check_alignment_args(args)


# -- the lexical table ----------------------------------------------------
def loop_ibm1(pairs, iterations):
    """Model 1's EM written as loops over a dict, the textbook way."""
    t = {}
    for src, tgt in pairs:
        for x in src.tolist():
            for y in tgt.tolist():
                t[(x, y)] = 1.0
    for _ in range(iterations):
        counts, totals = {}, {}
        for src, tgt in pairs:
            for y in tgt.tolist():
                norm = sum(t[(x, y)] for x in src.tolist())
                for x in src.tolist():
                    p = t[(x, y)] / norm
                    counts[(x, y)] = counts.get((x, y), 0.0) + p
                    totals[x] = totals.get(x, 0.0) + p
        t = {key: counts[key] / totals[key[0]] for key in t}
    return t


def test_ibm1_equals_a_loop_of_em():
    g = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randint(0, 6, (int(n),), generator=g), torch.randint(0, 7, (int(m),), generator=g))
        for n, m in torch.randint(1, 6, (12, 2), generator=g)
    ]
    src, tgt, t = lexical.ibm1(pairs, 7, iterations=3)
    ref = loop_ibm1(pairs, 3)
    assert len(ref) == t.numel()
    for x, y, p in zip(src.tolist(), tgt.tolist(), t.tolist()):
        assert p == pytest.approx(ref[(x, y)], rel=1e-9)


def test_ibm1_finds_translations_and_the_table_ranks_them():
    """house = Haus, the = das, small = klein: EM untangles what co-occurrence counts cannot."""
    de = {"das": 0, "Haus": 1, "klein": 2, "Buch": 3}
    en = {"the": 0, "house": 1, "small": 2, "book": 3}
    corpus = [
        ("das Haus", "the house"),
        ("das Buch", "the book"),
        ("das Haus klein", "the house small"),
        ("das Buch klein", "the book small"),
        ("Haus", "house"),
    ]
    pairs = [(torch.tensor([de[w] for w in s.split()]), torch.tensor([en[w] for w in e.split()])) for s, e in corpus]
    table = lexical.shortlist_table(*lexical.ibm1(pairs, 4, iterations=10), source_vocab=5, k=2, fill=9)
    assert table[de["Haus"], 0] == en["house"]
    assert table[de["das"], 0] == en["the"]
    assert table[de["klein"], 0] == en["small"]
    assert table[de["Buch"], 0] == en["book"]
    assert (table[4] == 9).all()  # never seen: fillers only
    assert len(set(table[de["das"]].tolist())) == 2  # distinct


def test_table_from_the_shipped_corpus(data_dir):
    """On real text: the table built from the binarised train split lists
    the common translations, and covers most target tokens."""
    from fairseq.data import Dictionary, data_utils

    src_dict = Dictionary.load(f"{data_dir}/dict.de.txt")
    tgt_dict = Dictionary.load(f"{data_dir}/dict.en.txt")
    table = lexical.train_shortlist(data_dir, "de", "en", src_dict, tgt_dict, k=16)
    assert table.shape == (len(src_dict), 16)
    for de, en in (("▁Mann", "▁man"), ("▁Frau", "▁woman"), ("▁Hund", "▁dog")):
        if src_dict.index(de) != src_dict.unk() and tgt_dict.index(en) != tgt_dict.unk():
            assert tgt_dict.index(en) in table[src_dict.index(de), :3].tolist(), (de, en)
    valid = [
        data_utils.load_indexed_dataset(lexical.split_prefix(data_dir, "valid", "de", "en", lang), d)
        for lang, d in (("de", src_dict), ("en", tgt_dict))
    ]
    pairs = [(valid[0][n], valid[1][n]) for n in range(len(valid[0]))]
    assert lexical.coverage(table, pairs) > 0.8
    with pytest.raises(FileNotFoundError, match="binarised train split"):
        lexical.split_prefix(data_dir, "train", "de", "fr", "de")


# -- in the models --------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_models_read_the_source_tokens(arch):
    """The step carries the source words in the annotations' layout, and the
    model's output is the mixture of the gold likelihoods it enumerates."""
    model, d = shortlist_model(arch, "shortlist")
    batch = random_batch(d)
    net = batch["net_input"]
    out, extra = model(**net)
    assert torch.equal(extra["source_tokens"], net["src_tokens"])
    logp = model.alignment_head.output.alignment_logprobs(
        extra["hidden"], extra["encoder_states"], batch["target"], source_tokens=extra["source_tokens"]
    )
    prior = CategoricalAlignment(extra["scores"])
    gold = out.gather(-1, batch["target"].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gold, torch.logsumexp(logp + prior.log_probs, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_carries_the_table(arch):
    model, _ = shortlist_model(arch, "shortlist")
    state = model.state_dict()
    fresh, _ = build_model("categorical", arch=arch, seed=1, output_layer="shortlist", shortlist_size=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.alignment_head.output.shortlist, model.alignment_head.output.shortlist)
    assert bool(fresh.alignment_head.output.shortlist_built)
    assert fresh.alignment_head.output_layer_kind == "shortlist"


def test_fairseq_train_builds_the_table_and_generate_needs_no_training_data(data_dir, tmp_path):
    """The user's path: fairseq-train --output-layer shortlist builds the
    table from the train split (and says so); fairseq-generate then runs
    from a data directory that holds only the dictionaries and the split it
    translates, the table coming from the checkpoint."""
    import glob
    import shutil

    from test_cli import generate, train

    log = train(
        data_dir,
        tmp_path / "ckpt",
        [
            "--attention",
            "categorical",
            "--criterion",
            "varattn_marginal",
            "--output-layer",
            "shortlist",
            "--shortlist-size",
            "8",
        ],
        max_update=8,
    )
    assert "building the lexical shortlist" in log
    state = torch.load(tmp_path / "ckpt" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    table = state["decoder.head.output.shortlist"]
    assert table.shape[1] == 8 and bool(state["decoder.head.output.shortlist_built"])
    assert table.ne(1).any(-1).float().mean() > 0.5  # most source types have candidates (1 = pad)
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in glob.glob(f"{data_dir}/dict.*") + glob.glob(f"{data_dir}/valid.*"):
        shutil.copy(path, bare)
    bleu, out = generate(str(bare), tmp_path / "ckpt" / "checkpoint_last.pt", beam=2)
    assert "building the lexical shortlist" not in out
    assert bleu >= 0.0

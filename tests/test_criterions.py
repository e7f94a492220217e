"""Criterions on weights where the alignment matters.

Fresh weights give alignment distributions within about 1e-4 of uniform,
where a right and a wrong criterion give the same numbers.  Every model here
is *sharpened* (scores and output logits scaled up) and checked to be far
from uniform before anything is compared; every reference is computed by
explicit enumeration through a different code path than the criterion's.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import ARCHS, FakeTask, build_model, make_dictionary, random_batch

from fairseq_varattn.criterions.dirichlet import DirichletCriterion
from fairseq_varattn.criterions.elbo import ElboCriterion
from fairseq_varattn.criterions.estimators import ESTIMATORS
from fairseq_varattn.criterions.hard import HardAttentionCriterion
from fairseq_varattn.criterions.marginal import MarginalCriterion
from fairseq_varattn.criterions.rws import RwsCriterion
from fairseq_varattn.modules.alignment import CategoricalAlignment

OUTPUT_LAYERS = ["joint", "factored", "shortlist", "sentence-shortlist"]


def _sharp_scores(phase, amplitude=6.0):
    """Adds a sin(3 sum(query) + 1.7 i + phase) to the scores of position i:
    a sharp, input-dependent, non-uniform pattern (-inf padding stays -inf)."""

    def hook(module, inputs, output):
        query = inputs[0]
        positions = torch.arange(output.size(-1), dtype=output.dtype)
        pattern = amplitude * torch.sin(3.0 * query.sum(-1, keepdim=True) + 1.7 * positions + phase)
        return output + pattern

    return hook


def _amplify_context(module, inputs, output):
    """W_c x~ made to vary quickly with x~: small differences between
    annotations become large differences between log p(y | z = i)."""
    return 10.0 * output + 3.0 * torch.sin(
        40.0 * inputs[0].sum(-1, keepdim=True) + torch.arange(output.size(-1), dtype=output.dtype)
    )


def sharpened(
    attention="categorical", inference_network="birnn", output_layer="joint", seed=0, q_amplitude=6.0, arch="lstm"
):
    """A model whose prior, q and output distributions are far from uniform:
    forward hooks give the prior and q sharp, different score patterns and
    scale the context's share of the output logits, so every code path (the
    criterion's and the explicit references) sees the same sharpened model."""
    model, d = build_model(
        attention, inference_network=inference_network, seed=seed, output_layer=output_layer, arch=arch
    )
    model.alignment_head.scorer.register_forward_hook(_sharp_scores(0.0))
    if model.inference_network is not None:
        model.inference_network.scorer.register_forward_hook(_sharp_scores(2.0, q_amplitude))
    model.alignment_head.output.context_proj.register_forward_hook(_amplify_context)
    with torch.no_grad():
        model.encoder.embed_tokens.weight.mul_(10.0)  # annotations that differ by position
        model.alignment_head.output.fc_out.weight.mul_(10.0)
    return model, d


def at_position(head, extra, i, target=None):
    """log p(y | the context path at source position i): one-hot weights,
    i.e. the context x~_i (the shortlist layer's pool at e_i), a dense softmax
    per position rather than the enumeration path."""
    hidden, enc = extra["hidden"], extra["encoder_states"]
    weights = torch.zeros(*hidden.shape[:2], enc.size(1))
    weights[..., i] = 1.0
    return head.output.weighted_logprobs(hidden, weights, enc, target, source_tokens=extra.get("source_tokens"))


def explicit(model, batch):
    """Per-token prior, q, log p(y_j | z_j = i) for every i by T separate
    context softmaxes (not the enumeration path), and the token mask."""
    net = batch["net_input"]
    target = batch["target"]
    _, extra = model(**net, target=target if model.inference_network is not None else None, features_only=True)
    head = model.alignment_head
    enc = extra["encoder_states"]
    columns = [at_position(head, extra, i, target) for i in range(enc.size(1))]
    logp = torch.stack(columns, dim=-1).double()  # B, N, T
    prior = head.alignment_distribution(extra["scores"], extra["encoder_padding_mask"])
    q = head.alignment_distribution(extra["q_scores"], extra["encoder_padding_mask"]) if "q_scores" in extra else None
    mask = target.ne(model.decoder.dictionary.pad())
    return prior, q, logp, mask


def assert_alignment_matters(prior, logp, mask):
    valid = torch.isfinite(prior.log_probs)
    maxp = prior.probs.max(-1).values[mask]
    assert maxp.mean() > 0.5, "the prior is still near uniform"
    spread = logp.masked_fill(~valid, float("nan")).nanmean(-1, keepdim=True)
    assert (logp - spread).abs().masked_fill(~valid, 0).amax(-1)[mask].mean() > 0.5, (
        "log p(y | z = i) barely depends on i"
    )


def per_token(crit, model, batch):
    """The criterion's per-token terms (the sums it logs, before summing)."""
    from fairseq_varattn.criterions.batch import LatentBatch

    target = batch["target"]
    features, extra = model(
        **batch["net_input"], target=target if crit.needs_inference_network else None, features_only=True
    )
    return crit.token_terms(model, LatentBatch(model, features, extra, target, crit.padding_idx))


def task(d):
    return FakeTask(d, d)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", OUTPUT_LAYERS)
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
@pytest.mark.parametrize("q_network", ["birnn", "transformer"])
def test_elbo_enum_is_reconstruction_plus_weighted_kl(output_layer, kl_weight, arch, q_network):
    """loss = E_q[-log p(y | z)] + w KL(q || p); with w = 1 the gap to the
    exact nll is KL(q || exact posterior).  A flipped KL sign, an ignored
    --kl-weight or a loss that returns the marginal all fail here; with
    either q network (--inference-network), on both architectures."""
    model, d = sharpened(inference_network=q_network, output_layer=output_layer, arch=arch)
    want_q = {"birnn": "InferenceNetwork", "transformer": "TransformerInferenceNetwork"}[q_network]
    assert type(model.inference_network).__name__ == want_q
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    prior, q, logp, mask = explicit(model, batch)
    assert_alignment_matters(prior, logp, mask)
    crit = ElboCriterion.build(task(d), estimator="enum", kl_weight=kl_weight)
    loss, _, log = crit(model, batch)
    qp = q.probs.double()
    recon = -(qp * logp.masked_fill(qp == 0, 0)).sum(-1)
    kl = q.kl(prior).double()
    want = (recon + kl_weight * kl)[mask].sum()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-4)
    log_marginal = torch.logsumexp(prior.log_probs.double() + logp, -1)
    torch.testing.assert_close(log["nll_loss"].double(), -log_marginal[mask].sum(), rtol=1e-5, atol=1e-4)
    if kl_weight == 1.0:
        posterior = CategoricalAlignment.from_log_probs((prior.log_probs.double() + logp - log_marginal.unsqueeze(-1)))
        gap = q.kl(posterior)[mask].sum()
        assert gap > 1.0, "q must be far from the posterior for this check to mean anything"
        torch.testing.assert_close((loss - log["nll_loss"]).double(), gap.double(), rtol=1e-4, atol=1e-4)
    # q's own network reads the target: every one of its parameters learns from the KL
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.inference_network.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", OUTPUT_LAYERS)
def test_marginal_and_hard_enum_equal_explicit_sums(output_layer, arch):
    model, d = sharpened(inference_network="none", output_layer=output_layer, arch=arch)
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    prior, _, logp, mask = explicit(model, batch)
    assert_alignment_matters(prior, logp, mask)
    lp = prior.log_probs.double()
    loss, _, _ = MarginalCriterion.build(task(d))(model, batch)
    torch.testing.assert_close(loss.double(), -torch.logsumexp(lp + logp, -1)[mask].sum(), rtol=1e-5, atol=1e-4)
    loss, _, _ = HardAttentionCriterion.build(task(d), estimator="enum")(model, batch)
    p = lp.exp()
    torch.testing.assert_close(
        loss.double(), -(p * logp.masked_fill(p == 0, 0)).sum(-1)[mask].sum(), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", OUTPUT_LAYERS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_training_objectives(output_layer, k, arch):
    """Marginal: the renormalised top-k sum.  ELBO and hard attention: a
    lower bound on log p(y) for every token, with the truncated q (or p) in
    both terms."""
    model, d = sharpened(output_layer=output_layer, arch=arch)
    model.alignment_head.alignment_topk = k
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    prior, q, logp, mask = explicit(model, batch)
    log_marginal = torch.logsumexp(prior.log_probs.double() + logp, -1)
    idx, log_w = prior.topk(k)
    top = torch.logsumexp(log_w.double() + logp.gather(-1, idx), -1)
    loss, _, _ = MarginalCriterion.build(task(d))(model, batch)
    torch.testing.assert_close(loss.double(), -top[mask].sum(), rtol=1e-5, atol=1e-4)
    for crit in (ElboCriterion.build(task(d), estimator="enum"), HardAttentionCriterion.build(task(d))):
        terms = per_token(crit, model, batch)
        bound = -terms["loss"].double()
        assert (bound[mask] <= log_marginal[mask] + 1e-5).all(), (crit, bound[mask] - log_marginal[mask])


def test_topk_elbo_hand_example_is_a_bound():
    """p = (.98, .01, .01), log p(y | z) = (-10, 0, 0), q = (.02, .49, .49),
    k = 1: with the full q in the KL the "ELBO" was -3.74, above
    log p(y) = -3.91; with the truncated q' in both terms it is -4.61."""

    class OneToken:
        class head:
            alignment_topk = 1

        @staticmethod
        def logp_y_on(dist):
            return torch.tensor([-10.0, 0.0, 0.0]).gather(-1, dist.index)

    p = CategoricalAlignment.from_log_probs(torch.tensor([0.98, 0.01, 0.01]).log())
    q = CategoricalAlignment.from_log_probs(torch.tensor([0.02, 0.49, 0.49]).log())
    reconstruction, used, _ = ESTIMATORS["enum"](None).reconstruction(OneToken, q)
    elbo = -(reconstruction + used.kl(p))
    log_py = math.log(0.98 * math.exp(-10) + 0.02)
    assert float(elbo) <= log_py
    assert float(elbo) == pytest.approx(-math.log(1 / 0.01), abs=1e-5)


def _gradient(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in model.parameters()])


def _without_dropout(model):
    model.train()
    for module in model.modules():  # exact comparisons: no dropout noise
        if isinstance(module, torch.nn.Dropout) or module.__class__.__name__ == "FairseqDropout":
            module.p = 0.0
    return model


class GradientProbe:
    """The gradient of a loss w.r.t. q's scores (B, N, T) and the output layer's parameters."""

    def __init__(self, model):
        self.model = model
        self.q_scores = None
        model.inference_network.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        output.retain_grad()
        self.q_scores = output

    def __call__(self, loss):
        self.model.zero_grad()
        loss.backward()
        q = torch.nan_to_num(self.q_scores.grad.double(), nan=0.0, posinf=0.0, neginf=0.0).flatten()
        out = torch.cat([p.grad.reshape(-1).double() for p in self.model.alignment_head.output.parameters()])
        return torch.cat([q, out]), q.numel()


def _soft_baseline_loss(model, batch):
    """-sum_j log p(y_j | E_q[x~]): the loss whose gradient --train-baseline adds."""
    target = batch["target"]
    _, extra = model(**batch["net_input"], target=target, features_only=True)
    q = model.alignment_head.alignment_distribution(extra["q_scores"], extra["encoder_padding_mask"])
    logp = model.alignment_head.output.context_logprobs(extra["hidden"], q.expectation(extra["encoder_states"]), target)
    return -logp[target.ne(model.decoder.dictionary.pad())].sum()


@pytest.mark.parametrize(
    "estimator,options",
    [
        ("reinforce", {"train_baseline": True}),
        ("gumbel", {"gumbel_temperature": 0.001}),
    ],
)
def test_sampled_elbo_gradient_averages_to_the_enumeration_gradient(estimator, options):
    """Through the criterion class, K = 100 samples per draw, 40 draws: the
    mean gradient (minus, for REINFORCE, the learned baseline's own
    gradient) equals the enumeration gradient within 4 standard errors.
    Compared w.r.t. q's scores (REINFORCE: the score function's target;
    standard error about 0.5% of the gradient there) and the output layer's
    parameters (the pathwise part), projected on the enumeration gradient and
    on random directions.  A 10% scale error in the score function, a
    baseline that is not detached, or Gumbel at a temperature far from 0
    fall well outside."""
    model, d = sharpened(seed=1, q_amplitude=2.0)
    _without_dropout(model)
    probe = GradientProbe(model)
    batch = random_batch(d, bsz=12, src_len=6, tgt_len=8)
    # without the KL term, q's whole gradient is the reconstruction's
    enum, n_q = probe(ElboCriterion.build(task(d), estimator="enum", kl_weight=0.0)(model, batch)[0])
    baseline = probe(_soft_baseline_loss(model, batch))[0] if options.get("train_baseline") else 0.0
    crit = ElboCriterion.build(task(d), estimator=estimator, num_samples=100, kl_weight=0.0, **options)
    torch.manual_seed(0)
    draws = torch.stack([probe(crit(model, batch)[0])[0] - baseline for _ in range(40)])
    parts = (
        {"q": slice(0, n_q), "output": slice(n_q, None)} if estimator == "reinforce" else {"output": slice(n_q, None)}
    )  # relaxed samples do not give q the score-function gradient
    g = torch.Generator().manual_seed(0)
    for name, part in parts.items():
        ref_full = enum[part]
        directions = torch.cat(
            [ref_full.unsqueeze(0), torch.randn(4, ref_full.numel(), generator=g, dtype=torch.double)]
        )
        projected = draws[:, part] @ directions.T
        mean, stderr = projected.mean(0), projected.std(0) / math.sqrt(len(draws))
        ref = directions @ ref_full
        assert ((mean - ref).abs() <= 4 * stderr + 1e-6 * ref.abs().max()).all(), (name, mean, ref, stderr)
        assert 0.1 * ref[0].abs() > 4 * stderr[0], (name, "too few draws to tell a 10% scale error", ref, stderr)


def test_gumbel_objective_follows_the_temperature():
    """At a low temperature the relaxed samples are near one-hot and the
    objective is close to the exact E_q[-log p(y | z)]; at a high one they
    are near uniform over the source and it is close to the loss at the mean
    annotation.  A criterion that ignored --gumbel-temperature would give
    the same number for both."""
    model, d = sharpened()
    _without_dropout(model)
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    enum = float(ElboCriterion.build(task(d), estimator="enum", kl_weight=0.0)(model, batch)[0].detach())
    torch.manual_seed(0)
    values = {
        t: float(
            ElboCriterion.build(task(d), estimator="gumbel", num_samples=200, gumbel_temperature=t, kl_weight=0.0)(
                model, batch
            )[0].detach()
        )
        for t in (0.01, 1000.0)
    }
    _, extra = model(**batch["net_input"], target=batch["target"], features_only=True)
    valid = (~extra["encoder_padding_mask"]).float()
    mean_annotation = (extra["encoder_states"] * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True)
    mask = batch["target"].ne(d.pad())
    uniform = model.alignment_head.output.context_logprobs(
        extra["hidden"], mean_annotation.unsqueeze(1).expand(-1, mask.size(1), -1), batch["target"]
    )
    uniform = float(-uniform[mask].sum().detach())
    assert abs(enum - uniform) > 2.0, "the two limits must differ for this check to mean anything"
    assert abs(values[0.01] - enum) < 0.1 * abs(enum - uniform), (values, enum, uniform)
    assert abs(values[1000.0] - uniform) < 0.1 * abs(enum - uniform), (values, enum, uniform)


def test_train_baseline_changes_the_gradient_not_the_logged_loss():
    model, d = sharpened()
    model.train()
    batch = random_batch(d)
    logs = {}
    for flag in (False, True):
        torch.manual_seed(0)
        loss, _, log = ElboCriterion.build(task(d), estimator="reinforce", train_baseline=flag)(model, batch)
        logs[flag] = (float(loss.detach()), _gradient(model, loss))
    assert logs[False][0] == pytest.approx(logs[True][0], rel=1e-6)
    assert (logs[False][1] - logs[True][1]).abs().max() > 1e-4


def test_untrained_baseline_builds_no_graph(monkeypatch):
    """The baseline is a constant unless --train-baseline: building its graph
    would keep a (B, N, V) softmax alive until backward for nothing."""
    from fairseq_varattn.criterions.batch import LatentBatch

    model, d = sharpened()
    model.train()
    batch = random_batch(d)
    real, seen = LatentBatch.soft_logp_y, []
    monkeypatch.setattr(LatentBatch, "soft_logp_y", lambda self, dist: seen.append(real(self, dist)) or seen[-1])
    for flag in (False, True):
        ElboCriterion.build(task(d), estimator="reinforce", train_baseline=flag)(model, batch)
    assert [b.requires_grad for b in seen] == [False, True]


@pytest.mark.parametrize("arch", ARCHS)
def test_alignment_tool_exact_posterior_is_prior_times_likelihood(arch):
    """varattn_tools.align's exact posterior against the prior times T
    explicit context softmaxes, normalised."""
    from varattn_tools.align import exact_posterior

    model, d = sharpened(inference_network="none", arch=arch)
    batch = random_batch(d)
    prior, _, logp, mask = explicit(model, batch)
    assert_alignment_matters(prior, logp, mask)
    _, extra = model(**batch["net_input"], features_only=True)
    with torch.no_grad():
        got = exact_posterior(model, extra, batch["target"]).double()[mask]
    valid = torch.isfinite(prior.log_probs)
    ref = torch.softmax(prior.log_probs.double() + logp.masked_fill(~valid, 0.0), -1)[mask]
    assert (ref - prior.probs.double()[mask]).abs().amax() > 0.01, "the likelihood must move the posterior"
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_rws_weights_are_unequal_where_the_alignment_matters():
    model, d = sharpened(q_amplitude=1.0)  # a broad q: samples land on positions of unequal weight
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    prior, q, logp, mask = explicit(model, batch)
    assert_alignment_matters(prior, logp, mask)
    torch.manual_seed(0)
    k = 8
    loss, _, log = RwsCriterion.build(task(d), num_samples=k)(model, batch)
    ntokens = int(mask.sum())
    mean_ess = float(log["ess"]) / ntokens
    assert 1.0 <= mean_ess < 0.6 * k, mean_ess  # far from K equal weights
    torch.manual_seed(0)
    loss, _, log = RwsCriterion.build(task(d), num_samples=4000)(model, batch)
    assert abs(loss.item() - float(log["nll_loss"])) < 0.01 * float(log["nll_loss"])


def test_centred_rws_changes_the_alignment_updates_alone():
    """--centred-weights reaches the criterion: with the same samples, the
    output layer's gradient (weighted by w_k in both) is unchanged, while
    the prior's and q's networks get other gradients."""
    model, d = sharpened(q_amplitude=1.0)
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    grads = {}
    for centred in (False, True):
        model.zero_grad()
        torch.manual_seed(0)
        loss, _, _ = RwsCriterion.build(task(d), num_samples=5, centred_weights=centred)(model, batch)
        loss.backward()
        grads[centred] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(
        grads[True]["decoder.head.output.fc_out.weight"], grads[False]["decoder.head.output.fc_out.weight"]
    )
    for name in ("decoder.head.scorer.v.weight", "inference_network.scorer.v.weight"):
        assert (grads[True][name] - grads[False][name]).abs().amax() > 1e-4 * grads[False][name].abs().amax(), name


def test_dirichlet_importance_nll_where_the_alignment_matters():
    """The importance-sampled nll of a Dirichlet model whose prior and q
    differ and whose output depends on the context matches a brute-force
    Monte Carlo estimate under the prior alone."""
    model, d = sharpened("dirichlet")
    with torch.no_grad():
        model.alignment_head.scorer.v.weight.div_(40.0 / 3.0)  # moderate concentrations
    batch = random_batch(d, bsz=3, src_len=6, tgt_len=5)
    _, extra = model(**batch["net_input"], target=batch["target"], features_only=True)
    prior = model.alignment_head.alignment_distribution(extra["scores"], extra["encoder_padding_mask"])
    q = model.alignment_head.alignment_distribution(extra["q_scores"], extra["encoder_padding_mask"])
    mask = batch["target"].ne(d.pad())
    assert q.kl(prior)[mask].mean() > 1.0, "q must differ from the prior"
    with torch.no_grad():
        contexts = torch.bmm(prior.rsample(20000).flatten(1, 2), extra["encoder_states"]).view(
            *prior.concentration.shape[:2], 20000, -1
        )
        logp = model.alignment_head.output.context_logprobs(extra["hidden"], contexts, batch["target"])
        assert logp.std(-1)[mask].mean() > 0.3, "the output must depend on z"
        reference = -(torch.logsumexp(logp, -1) - math.log(20000))[mask].sum()
    torch.manual_seed(0)
    _, _, log = DirichletCriterion.build(task(d), nll_samples=4000)(model, batch)
    assert abs(float(log["nll_loss"]) - float(reference)) < 0.01 * float(reference)


def test_dirichlet_logs_the_total_concentrations_of_the_prior_and_q():
    """prior_concentration / q_concentration: sum_i softplus(score_i) + 0.001
    over the unpadded source, per target token, recomputed from the raw scores
    (not through DirichletAlignment), on a model whose prior and q differ."""
    model, d = sharpened("dirichlet")
    with torch.no_grad():
        model.alignment_head.scorer.v.weight.div_(40.0 / 3.0)
    batch = random_batch(d, bsz=3, src_len=6, tgt_len=5)
    _, extra = model(**batch["net_input"], target=batch["target"], features_only=True)
    pad = extra["encoder_padding_mask"].unsqueeze(1)
    assert pad.any(), "the batch must have source padding for the mask to matter"
    mask = batch["target"].ne(d.pad())
    want = {}
    for key, scores in (("prior_concentration", extra["scores"]), ("q_concentration", extra["q_scores"])):
        alpha = F.softplus(scores.double().masked_fill(torch.isinf(scores), 0.0)) + 1e-3
        want[key] = alpha.masked_fill(pad, 0.0).sum(-1)[mask].sum().item()
    assert abs(want["prior_concentration"] - want["q_concentration"]) > 0.03 * want["q_concentration"]
    _, _, log = DirichletCriterion.build(task(d))(model, batch)
    for key, value in want.items():
        assert float(log[key]) == pytest.approx(value, rel=1e-4), key


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", OUTPUT_LAYERS)
@pytest.mark.parametrize("topk", [0, 2])
def test_generation_output_is_the_explicit_mixture(output_layer, topk, arch):
    """get_normalized_probs of a categorical model = sum_i p(z = i) softmax
    over the vocabulary, against T explicit softmaxes, with a sharp prior (a
    uniform prior would fail) and with top-k renormalised weights."""
    model, d = sharpened(inference_network="none", output_layer=output_layer, arch=arch)
    model.alignment_head.alignment_topk = topk
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    _, extra = model(**batch["net_input"], features_only=True)
    enc = extra["encoder_states"]
    columns = [at_position(model.alignment_head, extra, i) for i in range(enc.size(1))]
    joint = torch.stack(columns, dim=2).double()  # B, N, T, V
    prior = CategoricalAlignment(extra["scores"])
    log_w = prior.log_probs.double()
    if topk:
        idx, top = prior.topk(topk)
        log_w = torch.full_like(log_w, float("-inf")).scatter(-1, idx, top.double())
    want = torch.logsumexp(joint + log_w.unsqueeze(-1), dim=2)
    got = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True).double()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    uniform = torch.logsumexp(joint, dim=2) - math.log(enc.size(1))
    assert (want - uniform).abs().max() > 0.5, "a uniform prior would pass this check"


@pytest.mark.parametrize("attention", ["sampled", "prior"])
def test_baseline_attention_picks_the_baselines_context(attention):
    """--baseline-attention: the baseline is the soft likelihood under q's
    expected context by default and under the prior's with 'prior', on
    weights where the two differ; with --train-baseline the gradient it adds
    is that soft loss's gradient (same samples with and without the flag)."""
    model, d = sharpened(seed=2)
    _without_dropout(model)
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    target = batch["target"]
    tokens = target.ne(d.pad())

    def soft_loss(name):
        _, extra = model(**batch["net_input"], target=target, features_only=True)
        scores = extra["q_scores"] if name == "sampled" else extra["scores"]
        dist = model.alignment_head.alignment_distribution(scores, extra["encoder_padding_mask"])
        logp = model.alignment_head.output.context_logprobs(
            extra["hidden"], dist.expectation(extra["encoder_states"]), target
        )
        return -logp[tokens].sum()

    soft = {name: _gradient(model, soft_loss(name)) for name in ("sampled", "prior")}
    values = {name: float(soft_loss(name).detach()) for name in soft}
    assert abs(values["sampled"] - values["prior"]) > 0.5, values
    grads = {}
    for flag in (False, True):
        torch.manual_seed(0)
        crit = ElboCriterion.build(task(d), estimator="reinforce", train_baseline=flag, baseline_attention=attention)
        loss, _, log = crit(model, batch)
        assert log["baseline_nll"] == pytest.approx(values[attention], rel=1e-4)
        grads[flag] = _gradient(model, loss)
    added = grads[True] - grads[False]
    other = "prior" if attention == "sampled" else "sampled"
    scale = soft[attention].abs().max()
    assert (added - soft[attention]).abs().max() <= 1e-4 * scale  # float32 sums in another order
    assert (added - soft[other]).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("warmup", ["soft", "marginal"])
def test_warmups_train_their_objective_then_the_elbo(warmup):
    """--soft-warmup-updates / --marginal-warmup-updates N: while the model
    has made fewer than N updates, the loss is the warm-up's NLL (soft
    attention at the prior's expected context, or the exact marginal) plus
    KL(q || the distribution q copies: the prior, or the exact posterior),
    both computed explicitly here; the prior and the output layer get the
    NLL's gradient alone.  From update N, and in validation, it is the ELBO."""
    model, d = sharpened(seed=3)
    _without_dropout(model)
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    target = batch["target"]
    prior, q, logp, mask = explicit(model, batch)
    assert_alignment_matters(prior, logp, mask)
    log_marginal = torch.logsumexp(prior.log_probs.double() + logp, -1)
    posterior = CategoricalAlignment.from_log_probs(prior.log_probs.double() + logp - log_marginal.unsqueeze(-1))
    assert q.kl(posterior)[mask].sum() > 1.0 and q.kl(prior)[mask].sum() > 1.0

    def warmup_nll():
        if warmup == "marginal":
            p, _, lp, _ = explicit(model, batch)
            return torch.logsumexp(p.log_probs + lp.float(), -1).neg()
        _, extra = model(**batch["net_input"], features_only=True)
        p = model.alignment_head.alignment_distribution(extra["scores"], extra["encoder_padding_mask"])
        return -model.alignment_head.output.context_logprobs(
            extra["hidden"], p.expectation(extra["encoder_states"]), target
        )

    nll = warmup_nll().double()
    copied = posterior if warmup == "marginal" else prior
    want = (nll + q.kl(copied).double())[mask].sum()
    crit = ElboCriterion.build(task(d), estimator="enum", **{f"{warmup}_warmup_updates": 5})
    elbo = ElboCriterion.build(task(d), estimator="enum")

    model.set_num_updates(4)
    loss, _, log = crit(model, batch)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["nll_loss"].double(), nll[mask].sum(), rtol=1e-5, atol=1e-4)
    assert log[f"{warmup}_warmup"] == mask.sum()
    # the prior's scorer and the output layer learn from the NLL alone (q's
    # KL reaches only q and the annotations it reads)
    shared = [*model.alignment_head.scorer.parameters(), *model.alignment_head.output.parameters()]

    def grad_of(value):
        model.zero_grad()
        value.backward()
        return torch.cat([p.grad.reshape(-1) for p in shared])

    g_loss, g_nll = grad_of(loss), grad_of(warmup_nll()[mask].sum())
    assert g_nll.abs().max() > 1e-3
    torch.testing.assert_close(g_loss, g_nll, rtol=1e-4, atol=1e-4 * float(g_nll.abs().max()))

    # the ELBO's gradient is another: the prior also moves towards q, and
    # the output layer follows q instead of the posterior (the marginal
    # warm-up's value is the negative ELBO, -log p(y) + KL(q || posterior))
    g_elbo = grad_of(elbo(model, batch)[0])
    assert (g_elbo - g_nll).abs().max() > 0.05 * float(g_nll.abs().max())

    model.set_num_updates(5)  # values alone cannot tell the marginal warm-up from the ELBO
    torch.testing.assert_close(crit(model, batch)[0], elbo(model, batch)[0])
    torch.testing.assert_close(grad_of(crit(model, batch)[0]), g_elbo)
    model.eval()
    model.set_num_updates(0)
    torch.testing.assert_close(crit(model, batch)[0], elbo(model, batch)[0])


def test_warmup_options_are_checked():
    d = make_dictionary()  # the checks run when the criterion is built: no model needed
    with pytest.raises(ValueError, match="choose one"):
        ElboCriterion.build(task(d), soft_warmup_updates=3, marginal_warmup_updates=3)
    with pytest.raises(ValueError, match="marginal-warmup-updates must be >= 0"):
        ElboCriterion.build(task(d), marginal_warmup_updates=-1)
    with pytest.raises(ValueError, match="use --soft-warmup-updates"):
        DirichletCriterion.build(task(d), marginal_warmup_updates=3)


def test_a_model_without_an_alignment_head_is_refused_with_the_options_that_fit():
    d = make_dictionary()
    with pytest.raises(
        ValueError,
        match=r"--criterion varattn_elbo trains the plugin's models "
        r"\(--arch varattn_lstm, .*varattn_transformer, .*varattn_vqa\)",
    ):
        ElboCriterion.build(task(d)).check_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "criterion,options",
    [
        (ElboCriterion, {"estimator": "enum"}),
        (ElboCriterion, {"estimator": "reinforce"}),
        (ElboCriterion, {"estimator": "gumbel"}),
        (HardAttentionCriterion, {"estimator": "reinforce"}),
        (RwsCriterion, {}),
        (DirichletCriterion, {}),
    ],
)
def test_every_logged_key_reaches_the_metrics(criterion, options):
    """Each key a criterion (or its estimator) puts in the logging output is
    reported by reduce_metrics, in bits or as is, or feeds a derived metric
    (REINFORCE's sf_var_ratio): none is dropped silently."""
    from fairseq.logging import metrics

    from fairseq_varattn.criterions.logged import DERIVED

    attention = "dirichlet" if criterion is DirichletCriterion else "categorical"
    model, d = sharpened(attention=attention)
    model.train()
    crit = criterion.build(task(d), **options)
    _, _, log = crit(model, random_batch(d))
    with metrics.aggregate() as agg:
        criterion.reduce_metrics([log, log])
    reported = set(agg.get_smoothed_values())
    fairseq_keys = {"ntokens", "nsentences", "sample_size"}
    derived = {k for k, unit in crit.logged.items() if unit == DERIVED}
    assert set(log) - fairseq_keys - derived - {"nll_loss"} <= reported, set(log) - reported
    assert ("sf_var_ratio" in reported) == bool(derived & set(log))
    # a value in bits is the per-token sum in nats over log 2
    assert agg.get_smoothed_values()["entropy_p"] == pytest.approx(
        float(log["entropy_p"]) / log["ntokens"] / math.log(2), abs=1e-3
    )


def test_an_undeclared_logged_key_is_refused():
    """A term nobody declared would vanish in reduce_metrics: forward raises."""
    model, d = sharpened()

    class Leaky(ElboCriterion):
        def token_terms(self, model, batch):
            terms = super().token_terms(model, batch)
            terms["new_diagnostic"] = terms["kl"].detach()
            return terms

    with pytest.raises(KeyError, match="new_diagnostic"):
        Leaky.build(task(d))(model, random_batch(d))


def test_estimators_are_registered_objects_with_their_own_options():
    """--estimator's choices come from the registry; each criterion's config
    holds its estimators' options and each estimator checks its own."""
    from fairseq_varattn.criterions.elbo import ElboConfig
    from fairseq_varattn.criterions.hard import HardAttentionConfig

    assert [e.name for e in ElboCriterion.estimators] == ["enum", "reinforce", "gumbel"]
    assert [e.name for e in HardAttentionCriterion.estimators] == ["enum", "reinforce"]
    assert hasattr(ElboConfig, "gumbel_temperature") and not hasattr(HardAttentionConfig, "gumbel_temperature")
    assert hasattr(HardAttentionConfig, "baseline_attention")
    _, d = sharpened()
    with pytest.raises(ValueError, match="--gumbel-temperature must be > 0"):
        ElboCriterion.build(task(d), estimator="enum", gumbel_temperature=0.0)
    with pytest.raises(ValueError, match="--estimator must be one of \\['enum', 'reinforce'\\]"):
        HardAttentionCriterion.build(task(d), estimator="gumbel")
    assert type(ElboCriterion.build(task(d), estimator="gumbel").estimator).__name__ == "Gumbel"

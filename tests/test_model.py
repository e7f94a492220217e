"""Model-level behaviour: incremental decoding, criterion values, clear errors."""

import os

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from helpers import ARCHS, FakeTask, build_model, random_batch

from fairseq_varattn.criterions.dirichlet import DirichletCriterion
from fairseq_varattn.criterions.elbo import ElboCriterion
from fairseq_varattn.criterions.hard import HardAttentionCriterion
from fairseq_varattn.criterions.marginal import MarginalCriterion
from fairseq_varattn.criterions.rws import RwsCriterion
from fairseq_varattn.modules.alignment import weighted_context


def incremental_scores(model, batch):
    """Feed prev_output_tokens one step at a time through the incremental path."""
    net = batch["net_input"]
    encoder_out = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
    state = {}
    steps = []
    prev = net["prev_output_tokens"]
    for j in range(prev.size(1)):
        out = model.decoder(prev[:, : j + 1], encoder_out=encoder_out, incremental_state=state)
        steps.append(model.get_normalized_probs(out, log_probs=True))
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["soft", "categorical", "dirichlet"])
def test_incremental_decoding_equals_full_forward(attention, arch):
    model, d = build_model(attention, arch=arch)
    batch = random_batch(d)
    full = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    real = batch["net_input"]["prev_output_tokens"].ne(d.pad())  # beam search never feeds <pad>
    torch.testing.assert_close(incremental_scores(model, batch)[real], full[real], rtol=1e-5, atol=1e-6)


def test_reorder_incremental_state_follows_beams():
    model, d = build_model("categorical")
    batch = random_batch(d)
    net = batch["net_input"]
    encoder_out = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
    state = {}
    prev = net["prev_output_tokens"]
    model.decoder(prev[:, :1], encoder_out=encoder_out, incremental_state=state)
    order = torch.tensor([2, 0, 1])
    model.decoder.reorder_incremental_state_scripting(state, order)
    encoder_out = model.encoder.reorder_encoder_out(encoder_out, order)
    step = model.decoder(prev[order, :2], encoder_out=encoder_out, incremental_state=state)
    full = model.get_normalized_probs(model(**net), True)
    torch.testing.assert_close(model.get_normalized_probs(step, True)[:, -1], full[order, 1], rtol=1e-5, atol=1e-6)


def _task(d):
    return FakeTask(d, d)


def test_soft_model_loss_equals_fairseq_cross_entropy():
    model, d = build_model("soft")
    batch = random_batch(d)
    ce = CrossEntropyCriterion(_task(d), sentence_avg=False)
    loss, sample_size, log = ce(model, batch)
    logits, _ = model(**batch["net_input"])
    ref = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), batch["target"].reshape(-1), ignore_index=d.pad(), reduction="sum"
    )
    torch.testing.assert_close(loss, ref)
    assert sample_size == batch["ntokens"]


@pytest.mark.parametrize("arch", ARCHS)
def test_marginal_criterion_equals_cross_entropy_of_the_mixture(arch):
    """nll of varattn_marginal == fairseq cross_entropy over the mixture's log-probs."""
    model, d = build_model("categorical", arch=arch)
    batch = random_batch(d)
    ce_loss, _, _ = CrossEntropyCriterion(_task(d), sentence_avg=False)(model, batch)
    crit = MarginalCriterion.build(_task(d))
    loss, _, log = crit(model, batch)
    torch.testing.assert_close(loss, ce_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log["nll_loss"], ce_loss.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["enum", "reinforce", "gumbel"])
def test_elbo_criterion_logs_exact_nll_and_bounds_it(estimator):
    model, d = build_model("categorical", inference_network="birnn")
    batch = random_batch(d)
    crit = ElboCriterion.build(_task(d), estimator=estimator, num_samples=2)
    torch.manual_seed(0)
    loss, _, log = crit(model, batch)
    ce_loss, _, _ = CrossEntropyCriterion(_task(d), sentence_avg=False)(model, batch)
    torch.testing.assert_close(log["nll_loss"], ce_loss.detach(), rtol=1e-5, atol=1e-5)
    assert log["kl"] >= 0 and log["entropy_q"] > 0 and log["entropy_p"] > 0
    if estimator == "enum":
        assert loss >= log["nll_loss"] - 1e-5  # -ELBO >= -log marginal
    loss.backward()
    grads = [p.grad for p in model.inference_network.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), "q received no gradient"


@pytest.mark.parametrize("estimator", ["enum", "reinforce"])
def test_hard_criterion_is_a_lower_bound(estimator):
    model, d = build_model("categorical")
    batch = random_batch(d)
    crit = HardAttentionCriterion.build(_task(d), estimator=estimator, num_samples=3)
    loss, _, log = crit(model, batch)
    if estimator == "enum":
        assert loss >= log["nll_loss"] - 1e-5
    else:
        assert "sf_reward_sq" in log and "sf_advantage_sq" in log
    loss.backward()
    assert torch.isfinite(model.alignment_head.scorer.query_proj.weight.grad).all()


def test_elbo_without_inference_network_is_a_clear_error():
    model, d = build_model("categorical", inference_network="none")
    crit = ElboCriterion.build(_task(d))
    with pytest.raises(ValueError, match="--inference-network birnn"):
        crit(model, random_batch(d))


def test_latent_criterion_on_soft_model_is_a_clear_error():
    model, d = build_model("soft")
    with pytest.raises(ValueError, match="--attention categorical"):
        MarginalCriterion.build(_task(d))(model, random_batch(d))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_samples": 0}, "--num-samples"),
        ({"kl_weight": -1.0}, "--kl-weight"),
        ({"gumbel_temperature": 0.0}, "--gumbel-temperature"),
    ],
)
def test_invalid_criterion_options_are_rejected(kwargs, match):
    _, d = build_model("categorical")
    with pytest.raises(ValueError, match=match):
        ElboCriterion.build(_task(d), **kwargs)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"alignment_topk": -1}, "--alignment-topk"),
        ({"alignment_topk": 5000}, "larger than the longest allowed source"),
        ({"attention": "soft", "alignment_topk": 2}, "--alignment-topk"),
        ({"attention": "soft", "inference_network": "birnn"}, "--inference-network"),
        ({"attention": "categorical", "dirichlet_concentration": "exp"}, "--dirichlet-concentration"),
        ({"inference_network": "transformer", "inference_heads": 3}, "--inference-heads 3 must divide"),
        ({"inference_network": "transformer", "inference_layers": 2}, "drop --inference-layers"),
    ],
)
def test_invalid_model_options_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model(**overrides)


def test_kl_warmup_follows_model_updates():
    model, d = build_model("categorical", inference_network="birnn")
    crit = ElboCriterion.build(_task(d), kl_weight=0.5, kl_warmup_updates=10)
    model.set_num_updates(0)
    assert crit.current_kl_weight(model) == 0.0
    model.set_num_updates(5)
    assert crit.current_kl_weight(model) == pytest.approx(0.25)
    model.set_num_updates(50)
    assert crit.current_kl_weight(model) == pytest.approx(0.5)


@pytest.mark.parametrize("attention", ["categorical", "dirichlet"])
def test_generation_never_runs_the_inference_network(attention):
    model, d = build_model(attention, inference_network="birnn")
    model.inference_network.forward = None  # any call would raise TypeError
    batch = random_batch(d)
    incremental_scores(model, batch)
    model(**batch["net_input"])


def _q_gradients(model):
    return [p.grad for p in model.inference_network.parameters() if p.grad is not None]


def _prior_monte_carlo_nll(model, batch, num_samples):
    """-sum_j log (1/S) sum_s p(y_j | z_s), z_s ~ the Dirichlet prior: no q involved."""
    _, extra = model(**batch["net_input"], features_only=True)
    prior = model.alignment_head.alignment_distribution(extra["scores"], extra["encoder_padding_mask"])
    contexts = weighted_context(prior.rsample(num_samples), extra["encoder_states"])
    logp = model.alignment_head.output.context_logprobs(extra["hidden"], contexts, batch["target"])
    nll = -(torch.logsumexp(logp, -1) - torch.log(torch.tensor(float(num_samples))))
    return nll[batch["target"].ne(model.decoder.dictionary.pad())].sum()


def test_dirichlet_criterion_estimates_the_marginal_and_trains_q():
    model, d = build_model("dirichlet", inference_network="birnn")
    batch = random_batch(d)
    torch.manual_seed(0)
    crit = DirichletCriterion.build(_task(d), num_samples=2, nll_samples=4000)
    loss, _, log = crit(model, batch)
    with torch.no_grad():
        reference = _prior_monte_carlo_nll(model, batch, 20000)
    assert abs(float(log["nll_loss"]) - float(reference)) < 0.01 * float(reference), (log, reference)
    assert log["nll_samples"] == 4000 * batch["ntokens"]
    assert log["kl"] >= 0 and torch.isfinite(loss)
    loss.backward()
    grads = _q_gradients(model)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), "q received no gradient"


def test_dirichlet_negative_elbo_bounds_the_marginal_nll():
    model, d = build_model("dirichlet", inference_network="birnn")
    torch.manual_seed(0)
    crit = DirichletCriterion.build(_task(d), num_samples=3000, nll_samples=3000)
    loss, _, log = crit(model, random_batch(d))
    assert loss.item() >= float(log["nll_loss"]) - 0.01 * float(log["nll_loss"])


def test_rws_loss_approaches_the_exact_marginal_with_many_samples():
    model, d = build_model("categorical", inference_network="birnn")
    batch = random_batch(d)
    torch.manual_seed(0)
    crit = RwsCriterion.build(_task(d), num_samples=5000)
    loss, _, log = crit(model, batch)
    # loss: the importance-weighted NLL estimate; nll_loss: the exact marginal
    assert abs(float(loss.detach()) - float(log["nll_loss"])) < 0.01 * float(log["nll_loss"])
    ntokens = batch["ntokens"]
    assert ntokens <= float(log["ess"]) <= 5000 * ntokens * (1 + 1e-5)
    loss.backward()
    grads = _q_gradients(model)
    assert grads and any(g.abs().sum() > 0 for g in grads), "wake-q gave q no gradient"


@pytest.mark.parametrize(
    "criterion,attention,match",
    [
        (DirichletCriterion, "categorical", "--attention dirichlet"),
        (RwsCriterion, "dirichlet", "--attention categorical"),
        (ElboCriterion, "dirichlet", "--attention categorical"),
    ],
)
def test_criterion_and_attention_kind_mismatch_is_a_clear_error(criterion, attention, match):
    model, d = build_model(attention, inference_network="birnn")
    with pytest.raises(ValueError, match=match):
        criterion.build(_task(d))(model, random_batch(d))


def test_dirichlet_criterion_rejects_bad_sample_counts():
    _, d = build_model("dirichlet")
    with pytest.raises(ValueError, match="--nll-samples"):
        DirichletCriterion.build(_task(d), nll_samples=0)


@pytest.mark.parametrize("attention", ["soft", "categorical", "dirichlet"])
def test_attention_positions_index_the_left_padded_source_tokens(attention):
    """A sentence's attention is the same alone and in a padded batch, at its
    own tokens' positions: what --print-alignment and the alignment tool read."""
    model, d = build_model(attention)
    batch = random_batch(d, bsz=3, src_len=6)
    net = batch["net_input"]
    _, extra = model(**net, features_only=True)
    padded = net["src_tokens"].eq(d.pad())
    b = int(padded.sum(1).argmax())  # the most padded sentence
    num_pads = int(padded[b].sum())
    assert num_pads > 0
    assert torch.all(extra["attn"][b][:, :num_pads] == 0)
    alone = {
        "src_tokens": net["src_tokens"][b : b + 1, num_pads:],
        "src_lengths": net["src_lengths"][b : b + 1],
        "prev_output_tokens": net["prev_output_tokens"][b : b + 1],
    }
    _, extra_alone = model(**alone, features_only=True)
    torch.testing.assert_close(extra["attn"][b][:, num_pads:], extra_alone["attn"][0])


def test_state_dict_of_another_attention_kind_is_a_clear_error():
    soft, _ = build_model("soft")
    latent, _ = build_model("categorical")
    with pytest.raises(ValueError, match="--attention soft model.*--attention categorical"):
        latent.load_state_dict(soft.state_dict())
    latent.load_state_dict(build_model("categorical", seed=5)[0].state_dict())  # same kind: fine


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_of_another_output_layer_is_a_clear_error(arch):
    """Joint and factored layers have the same parameter names: loading one
    into the other would silently compute another function."""
    joint, _ = build_model("categorical", arch=arch)
    factored, _ = build_model("categorical", arch=arch, output_layer="factored")
    _assert_marker_guards(
        factored,
        joint,
        "decoder.head.output_layer_id",
        "--output-layer joint model.*--output-layer factored.*model-overrides",
        "--output-layer joint",
    )


def _assert_marker_guards(model, other, key, mismatch, before_marker):
    """``model`` refuses the state dict of ``other`` (the same parameters,
    another function) with a message matching ``mismatch``, and refuses it
    without ``key`` too (a checkpoint from before the marker means
    ``other``'s default), which ``other`` loads."""
    with pytest.raises(ValueError, match=mismatch):
        model.load_state_dict(other.state_dict())
    old = {k: v for k, v in other.state_dict().items() if k != key}
    with pytest.raises(ValueError, match=before_marker):
        model.load_state_dict(dict(old))
    other.load_state_dict(old)


def test_state_dict_from_another_dictionary_is_a_clear_error():
    from fairseq.data import Dictionary

    model, d = build_model("soft")
    state = model.state_dict()
    other = Dictionary()
    for i in range(len(d) - other.nspecial):
        other.add_symbol(f"v{i}")  # same size, other symbols
    from fairseq_varattn.models.latent_model import dictionary_checksum

    state["target_dictionary_crc"] = dictionary_checksum(other)
    with pytest.raises(ValueError, match="different target dictionary"):
        model.load_state_dict(state)


def test_checkpoints_without_the_markers_still_load():
    model, _ = build_model("categorical")
    state = {
        k: v
        for k, v in model.state_dict().items()
        if k
        not in (
            "decoder.head.attention_kind_id",
            "decoder.head.output_layer_id",
            "source_dictionary_crc",
            "target_dictionary_crc",
            "decoder.head.dirichlet_link_id",
            "decoder.head.output_activation_id",
        )
    }
    model.load_state_dict(state)


PRE_HEAD = os.path.join(os.path.dirname(__file__), "data", "pre-head-state-dicts.pt")


@pytest.mark.parametrize(
    "case", ["lstm-categorical", "lstm-soft", "lstm-dirichlet-exp", "transformer-categorical", "transformer-soft"]
)
def test_state_dicts_from_before_the_head_module_load_and_compute_what_they_did(case):
    """tests/data/pre-head-state-dicts.pt holds tiny models saved before the
    alignment head was one module (decoder.scorer.*, decoder.output.*, the
    markers at the model's top level) with their outputs on a fixed batch:
    they load by name into today's models and give the same outputs, and the
    parameters keep their order (fairseq resumes Adam's state by position)."""
    saved = torch.load(PRE_HEAD, weights_only=True)[case]
    model, _ = build_model(seed=9, **saved["options"])  # other weights: the load must replace them
    state = dict(saved["state"])
    assert "decoder.scorer.v.weight" in state or "decoder.scorer.query_proj.weight" in state, "an old layout"
    model.load_state_dict(state)
    with torch.no_grad():
        out = model(**saved["batch"]["net_input"])[0]
    torch.testing.assert_close(out, saved["output"], rtol=0, atol=1e-6)
    moved = [
        n.replace("decoder.scorer.", "decoder.head.scorer.").replace("decoder.output.", "decoder.head.output.")
        for n in saved["parameters"]
    ]
    assert [n for n, _ in model.named_parameters()] == moved


def test_vqa_state_dict_from_before_the_markers_loads_and_computes_what_it_did():
    import argparse

    from helpers import make_dictionary

    from fairseq_varattn.models.varattn_vqa import VarAttnVQAModel
    from fairseq_varattn.models.varattn_vqa import base_architecture as vqa_base

    saved = torch.load(PRE_HEAD, weights_only=True)["vqa-categorical"]
    assert not any(k.endswith("_id") for k in saved["state"]), "from before the markers"
    torch.manual_seed(9)
    args = argparse.Namespace(**saved["options"])
    vqa_base(args)
    args.region_feature_dim = 6
    model = VarAttnVQAModel(args, make_dictionary(), make_dictionary(5)).eval()
    model.load_state_dict(dict(saved["state"]))
    with torch.no_grad():
        out = model(**saved["batch"]["net_input"])[0]
    torch.testing.assert_close(out, saved["output"], rtol=0, atol=1e-6)
    assert [n for n, _ in model.named_parameters()] == saved["parameters"]
    soft_args = argparse.Namespace(attention="soft", inference_network="none")
    vqa_base(soft_args)
    soft_args.region_feature_dim = 6
    soft = VarAttnVQAModel(soft_args, make_dictionary(), make_dictionary(5))
    with pytest.raises(ValueError, match="--attention soft model.*--attention categorical"):
        model.load_state_dict(soft.state_dict())  # the markers now guard VQA checkpoints too


def _spread_scores(module, args, out):
    """Scores standardised over the source, times 2, plus 3: apart, and where softplus is not exp."""
    finite = torch.isfinite(out)
    count = finite.sum(-1, keepdim=True)
    centred = (out - out.masked_fill(~finite, 0.0).sum(-1, keepdim=True) / count).masked_fill(~finite, 0.0)
    std = (centred.pow(2).sum(-1, keepdim=True) / count).sqrt().clamp_min(1e-12)
    return torch.where(finite, 3.0 + 2.0 * centred / std, out)


def _attention(extra):
    attn = extra["attn"]
    return (attn[0] if isinstance(attn, list) else attn).double()


@pytest.mark.parametrize("arch", ARCHS)
def test_dirichlet_models_use_their_link_and_refuse_a_checkpoint_of_the_other(arch):
    """--dirichlet-concentration exp: the prior's mean (the model's attention)
    is softmax(scores); the links share every parameter, so only the marker
    tells their checkpoints apart, and one from before it is softplus."""
    softplus, d = build_model("dirichlet", arch=arch)
    exp, _ = build_model("dirichlet", arch=arch, dirichlet_concentration="exp")
    for model in (softplus, exp):  # fresh scores are near-constant: every link's mean would be near-uniform
        model.alignment_head.scorer.register_forward_hook(_spread_scores)
    batch = random_batch(d)
    _, extra = exp(**batch["net_input"], features_only=True)
    alpha = extra["scores"].double().exp() + 1e-3
    want = alpha.masked_fill(torch.isinf(extra["scores"]), 0.0)
    torch.testing.assert_close(_attention(extra), want / want.sum(-1, keepdim=True), rtol=0, atol=1e-5)
    prior = exp.alignment_head.alignment_distribution(extra["scores"], extra["encoder_padding_mask"])
    torch.testing.assert_close(prior.total.double(), want.sum(-1), rtol=1e-5, atol=0)
    _, extra = softplus(**batch["net_input"], features_only=True)
    assert (_attention(extra) - torch.softmax(extra["scores"].double(), -1)).abs().max() > 0.05
    _assert_marker_guards(
        exp,
        softplus,
        "decoder.head.dirichlet_link_id",
        "--dirichlet-concentration softplus model.*exp",
        "--dirichlet-concentration softplus",
    )
    exp.load_state_dict(build_model("dirichlet", arch=arch, seed=3, dirichlet_concentration="exp")[0].state_dict())


@pytest.mark.parametrize("arch,network", [("lstm", "birnn"), ("transformer", "birnn"), ("transformer", "transformer")])
def test_inference_network_reads_the_decoder_embeddings_unless_told_otherwise(arch, network):
    """--inference-embeddings decoder (fairseq-train's default, the paper's code):
    q reads the decoder's table and trains it; args without the option (a
    checkpoint from before it) give q a table of its own, and such a checkpoint
    loaded into a sharing model is a clear error, not a silently replaced
    decoder embedding."""
    shared, d = build_model("categorical", network, arch=arch, inference_embeddings="decoder")
    q = shared.inference_network
    assert q.embed_tokens is shared.decoder.embed_tokens
    n_shared = sum(p.numel() for p in shared.parameters())
    own, _ = build_model("categorical", network, arch=arch)  # legacy args: no inference_embeddings
    assert own.inference_network.embed_tokens is not own.decoder.embed_tokens
    assert sum(p.numel() for p in own.parameters()) - n_shared == own.decoder.embed_tokens.weight.numel()
    # q's gradient reaches the shared table: the KL term trains the decoder's embeddings too
    batch = random_batch(d)
    scores = shared(**batch["net_input"], target=batch["target"])[1]["q_scores"]
    grad = torch.autograd.grad(
        scores.masked_fill(~torch.isfinite(scores), 0).sum(), shared.decoder.embed_tokens.weight
    )[0]
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="--inference-embeddings own"):
        shared.load_state_dict(own.state_dict())
    shared.load_state_dict(shared.state_dict())
    with pytest.raises(ValueError, match="--inference-embed-dim"):
        build_model("categorical", network, arch=arch, inference_embeddings="decoder", inference_embed_dim=6)


@pytest.mark.parametrize("no_cross_attention", [False, True])
def test_transformer_no_cross_attention_leaves_z_the_only_path_to_the_source(no_cross_attention):
    """fairseq's --no-cross-attention reaches varattn_transformer's decoder
    layers: without cross-attention the decoder states h_j are the same for
    any source, so the source reaches the output only through the alignment;
    with it (the default) they change with the source."""
    model, d = build_model("categorical", arch="transformer", no_cross_attention=no_cross_attention)
    assert all((layer.encoder_attn is None) == no_cross_attention for layer in model.decoder.layers)
    batch = random_batch(d)
    other = random_batch(d, seed=7)
    net = batch["net_input"]
    outs = [model(**b["net_input"] | {"prev_output_tokens": net["prev_output_tokens"]}) for b in (batch, other)]
    assert not torch.equal(batch["net_input"]["src_tokens"], other["net_input"]["src_tokens"])
    assert torch.allclose(outs[0][1]["hidden"], outs[1][1]["hidden"]) == no_cross_attention
    full, other_full = [model.get_normalized_probs(out, log_probs=True) for out in outs]
    assert not torch.allclose(full, other_full)  # the alignment still reads the source
    real = net["prev_output_tokens"].ne(d.pad())
    torch.testing.assert_close(incremental_scores(model, batch)[real], full[real], rtol=1e-5, atol=1e-6)


def test_transformer_refuses_fairseqs_adaptive_softmax():
    """The alignment head's output layer replaces fairseq's projection, so an
    adaptive softmax would be built and never read: a clear error instead."""
    with pytest.raises(ValueError, match="--adaptive-softmax-cutoff does not apply"):
        build_model("categorical", arch="transformer", adaptive_softmax_cutoff="5,10")


def test_a_kind_with_an_option_is_one_class_and_one_registry_line(monkeypatch):
    """A registered kind declaring a KindOption gets its flag, default, the
    check that the option goes with its kind, its checkpoint marker and the
    option at distribution time, with no other file touched."""
    import argparse

    from fairseq_varattn.modules import attention_kinds
    from fairseq_varattn.modules.alignment import CategoricalAlignment
    from fairseq_varattn.modules.alignment_head import (
        AlignmentHead,
        add_alignment_args,
        alignment_defaults,
        check_alignment_args,
    )

    seen = {}

    class Tempered(attention_kinds.AttentionKind):
        name = "tempered"
        distribution_class = CategoricalAlignment
        latent = True
        options = (attention_kinds.KindOption("temper", ("1", "2"), "1", marker="temper_id", help="divide scores"),)

        def distribution(self, scores, mask, temper="1"):
            seen["temper"] = temper
            return CategoricalAlignment(scores / float(temper))

    monkeypatch.setattr(attention_kinds, "KINDS", dict(attention_kinds.KINDS))
    monkeypatch.setattr(attention_kinds, "KIND_IDS", list(attention_kinds.KIND_IDS))
    attention_kinds.register(Tempered())  # the registry line

    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)  # as fairseq parses model args
    add_alignment_args(parser, ("none",))
    args = parser.parse_args(["--attention", "tempered", "--temper", "2"])
    alignment_defaults(args)
    check_alignment_args(args)
    head = AlignmentHead.build(args, 4, 6, 5, 11, dropout=0.0)
    assert int(head.temper_id) == 1 and int(head.dirichlet_link_id) == 0
    scores = torch.randn(2, 3, 6)
    torch.testing.assert_close(head.alignment_distribution(scores, None).mean(), torch.softmax(scores / 2, -1))
    assert seen["temper"] == "2"
    other = parser.parse_args(["--attention", "soft", "--temper", "2"])
    alignment_defaults(other)
    with pytest.raises(ValueError, match="--temper applies to --attention tempered, not --attention soft"):
        check_alignment_args(other)
    default = parser.parse_args(["--attention", "tempered"])
    alignment_defaults(default)
    assert default.temper == "1"
    state = head.state_dict()
    fresh = AlignmentHead.build(default, 4, 6, 5, 11, dropout=0.0)
    with pytest.raises(ValueError, match="--temper 2 model.*--temper 1"):
        fresh.check_checkpoint(dict(state), "")
    del state["temper_id"]  # from before the option: its default, which ``fresh`` has
    fresh.check_checkpoint(state, "")

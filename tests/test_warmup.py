"""What makes latent attention learn with the architectures' defaults
(docs/design.md, "The automatic warm-up", "The inference network", "Output
layers"): the automatic marginal warm-up and its hand-over rule, q reading
detached annotations, and the output activation with its checkpoint marker."""

import argparse

import pytest
import torch
from helpers import ARCHS, FakeTask, build_model, make_dictionary, random_batch

from fairseq_varattn.criterions.elbo import ElboCriterion
from fairseq_varattn.criterions.hard import HardAttentionCriterion
from fairseq_varattn.models.varattn_lstm import VarAttnLSTMModel, varattn_lstm_tiny
from fairseq_varattn.models.varattn_transformer import VarAttnTransformerModel, varattn_transformer_tiny
from fairseq_varattn.modules import latent_warmup
from fairseq_varattn.modules.output_layer import build_output_layer


def _state(info=0.0, lead=0.0, done=0.0):
    return argparse.Namespace(latent_warmup_state=torch.tensor([info, lead, done]))


def test_hand_over_waits_for_a_posterior_off_uniform_and_a_q_as_sharp_as_the_prior():
    assert not latent_warmup.caught_up(latent_warmup.MIN_INFO * 0.9, 1.0)  # posterior still near uniform
    assert not latent_warmup.caught_up(2.0, -0.05)  # q flatter than the prior: it lags
    assert latent_warmup.caught_up(2.0, 0.0)
    model = _state()
    # a posterior 2 nats off uniform, q lagging the prior by 0.3 nats: no hand-over however long
    for _ in range(500):
        latent_warmup.update(model, torch.tensor(2.0), torch.tensor(-0.3))
    assert model.latent_warmup_state[latent_warmup.DONE] == 0
    assert model.latent_warmup_state[latent_warmup.INFO] == pytest.approx(2.0, rel=1e-3)
    # q catches up: the running lead crosses 0 after a few dozen updates, not at the first
    steps = 0
    while model.latent_warmup_state[latent_warmup.DONE] == 0:
        latent_warmup.update(model, torch.tensor(2.0), torch.tensor(0.1))
        steps += 1
    assert 10 < steps < 200
    latent_warmup.update(model, torch.tensor(0.0), torch.tensor(-5.0))  # once done, done
    assert model.latent_warmup_state[latent_warmup.DONE] == 1


def _elbo(d, **options):
    return ElboCriterion(ElboCriterion.config_class(estimator="enum", **options), FakeTask(d, d))


@pytest.mark.parametrize("arch", ARCHS)
def test_elbo_trains_the_marginal_until_the_hand_over_then_the_elbo(arch):
    """Through fairseq's config defaults (``latent_warmup`` auto): a fresh
    model's training batches use the marginal warm-up (its value is
    -log p(y) + KL(q || posterior)) and fold their statistics into the
    model's state; once that says q has caught up, the ELBO; validation
    is always the ELBO; ``off`` is the ELBO from the start."""
    model, d = build_model("categorical", "birnn", arch=arch, output_layer="factored")
    batch = random_batch(d, bsz=4, src_len=7, tgt_len=6)
    auto, off = _elbo(d), _elbo(d, latent_warmup="off")
    assert auto.cfg.latent_warmup == "auto"
    model.train()
    torch.manual_seed(0)
    loss, _, log = auto(model, batch)
    assert log["marginal_warmup"] == batch["ntokens"] and "kl_post" in log and "kl" not in log
    assert model.latent_warmup_state[latent_warmup.INFO] != 0  # the batch was folded in
    torch.manual_seed(0)
    _, _, elbo_log = off(model, batch)
    assert "kl" in elbo_log and "marginal_warmup" not in elbo_log
    model.latent_warmup_state[latent_warmup.DONE] = 1.0
    torch.manual_seed(0)
    loss, _, log = auto(model, batch)
    torch.manual_seed(0)
    torch.testing.assert_close(loss, off(model, batch)[0])
    assert "marginal_warmup" not in log
    model.latent_warmup_state[latent_warmup.DONE] = 0.0
    model.eval()
    assert "marginal_warmup" not in auto(model, batch)[2]
    model.train()
    model.set_num_updates(auto.cfg.latent_warmup_max_updates)  # the cap ends it too
    assert "marginal_warmup" not in auto(model, batch)[2]


def test_criterions_without_q_or_with_a_fixed_warmup_do_not_warm_up_automatically():
    model, d = build_model("categorical", "birnn", output_layer="factored")
    batch = random_batch(d)
    model.train()
    hard = HardAttentionCriterion(HardAttentionCriterion.config_class(estimator="enum"), FakeTask(d, d))
    assert "marginal_warmup" not in hard(model, batch)[2]
    fixed = _elbo(d, soft_warmup_updates=2)
    model.set_num_updates(3)
    assert "marginal_warmup" not in fixed(model, batch)[2] and "soft_warmup" not in fixed(model, batch)[2]


@pytest.mark.parametrize("arch", ARCHS)
def test_warmup_state_is_saved_and_checkpoints_without_it_have_none_to_do(arch):
    model, _ = build_model("categorical", "birnn", arch=arch)
    model.latent_warmup_state.copy_(torch.tensor([1.5, -0.2, 0.0]))
    other, _ = build_model("categorical", "birnn", arch=arch, seed=1)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.latent_warmup_state, torch.tensor([1.5, -0.2, 0.0]))
    old = {k: v for k, v in model.state_dict().items() if k != "latent_warmup_state"}
    other.load_state_dict(old)
    assert other.latent_warmup_state[latent_warmup.DONE] == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_q_reads_detached_annotations_unless_told_to_train_them(arch):
    """q's scores reach the encoder's parameters only with
    --inference-annotations trained; q's own parameters learn either way."""
    batch = random_batch(make_dictionary(), bsz=3, src_len=6, tgt_len=5)
    grads = {}
    for how in ("detached", "trained"):
        model, _ = build_model("categorical", "birnn", arch=arch, inference_annotations=how)
        _, extra = model(**batch["net_input"], target=batch["target"], features_only=True)
        scores = extra["q_scores"]
        scores.masked_fill(torch.isinf(scores), 0.0).pow(2).sum().backward()
        encoder = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        grads[how] = sum(float(g.abs().sum()) for g in encoder)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.inference_network.parameters())
    assert grads["detached"] == 0.0 and grads["trained"] > 0.0


def test_with_a_linear_activation_the_joint_and_factored_layers_are_one_function():
    """logit(j, i) = W_o (W_h h_j + W_c x~_i) + bias = a_j + b_i: the joint
    layer's T vocabulary softmaxes and the factored layer's products agree,
    for every alignment, the mixture and soft attention's output."""
    torch.manual_seed(0)
    dims = dict(hidden_dim=6, context_dim=5, embed_dim=7, vocab_size=11)
    joint = build_output_layer("joint", **dims, activation="linear")
    factored = build_output_layer("factored", **dims, activation="linear")
    with torch.no_grad():  # far from the small initialisation, where tanh(x) ~ x
        for p in joint.parameters():
            p.normal_(0.0, 1.0)
    factored.load_state_dict(joint.state_dict())
    for layer in (joint, factored):
        layer.eval()
    h, enc = torch.randn(2, 4, 6) * 3, torch.randn(2, 3, 5) * 3
    target = torch.randint(0, 11, (2, 4))
    torch.testing.assert_close(
        joint.alignment_logprobs(h, enc, target), factored.alignment_logprobs(h, enc, target), rtol=1e-4, atol=1e-4
    )
    tanh = build_output_layer("joint", **dims)
    tanh.load_state_dict(joint.state_dict())
    tanh.eval()
    assert (tanh.alignment_logprobs(h, enc, target) - joint.alignment_logprobs(h, enc, target)).abs().max() > 1.0
    ctx = torch.randn(2, 4, 5)
    torch.testing.assert_close(
        joint.context_logprobs(h, ctx, target), factored.context_logprobs(h, ctx, target), rtol=1e-4, atol=1e-4
    )


def test_architecture_defaults_give_latent_attention_the_layer_that_learns():
    d = make_dictionary()
    for attention, layer in (("categorical", "factored"), ("soft", "joint"), ("dirichlet", "joint")):
        args = argparse.Namespace(attention=attention, encoder_embed_dim=8, decoder_embed_dim=8)
        varattn_lstm_tiny(args)
        assert (args.output_layer, args.output_activation) == (layer, "tanh"), attention
    for attention in ("categorical", "soft"):
        args = argparse.Namespace(
            attention=attention,
            encoder_embed_dim=8,
            encoder_ffn_embed_dim=16,
            encoder_attention_heads=2,
            decoder_embed_dim=8,
            decoder_ffn_embed_dim=16,
            decoder_attention_heads=2,
        )
        varattn_transformer_tiny(args)
        assert (args.output_layer, args.output_activation) == ("factored", "linear"), attention
        model = VarAttnTransformerModel.build_model(args, FakeTask(d, d))
        # W_o W_h h starts as W_o h, fairseq's own output projection
        torch.testing.assert_close(model.alignment_head.output.hidden_proj.weight, torch.eye(8))
    args = argparse.Namespace(attention="categorical", inference_network="birnn")
    varattn_lstm_tiny(args)
    assert args.inference_annotations == "detached"
    assert isinstance(VarAttnLSTMModel.build_model(args, FakeTask(d, d)), VarAttnLSTMModel)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_from_before_the_activation_option_loads_as_tanh(arch):
    """The activation has no parameters: a state dict without its marker is a
    tanh model's, and loads as one into a model built with today's default."""
    tanh, d = build_model("categorical", arch=arch, output_layer="factored", output_activation="tanh", seed=2)
    linear, _ = build_model("categorical", arch=arch, output_layer="factored", output_activation="linear")
    batch = random_batch(d)
    want = tanh(**batch["net_input"])[0]
    old = {k: v for k, v in tanh.state_dict().items() if k != "decoder.head.output_activation_id"}
    linear.load_state_dict(old)
    assert linear.alignment_head.output.activation == "tanh"
    torch.testing.assert_close(linear(**batch["net_input"])[0], want)
    relinear, _ = build_model("categorical", arch=arch, output_layer="factored", output_activation="linear", seed=3)
    tanh.load_state_dict(relinear.state_dict())  # the marker says linear: the model becomes linear
    assert tanh.alignment_head.output.activation == "linear"

"""fairseq's generation machinery on latent models: beam search, scoring,
temperature and sampling, on sharpened models where the mixture matters."""

import math

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator
from fairseq.sequence_scorer import SequenceScorer
from helpers import ARCHS, FakeTask, random_batch
from test_criterions import sharpened

from fairseq_varattn.criterions.marginal import MarginalCriterion


def _sample_for(src, src_lengths, hypotheses, d):
    """A batch whose targets are the given token sequences (each ending in </s>)."""
    longest = max(len(h) for h in hypotheses)
    target = torch.full((len(hypotheses), longest), d.pad())
    prev = torch.full((len(hypotheses), longest), d.pad())
    for b, h in enumerate(hypotheses):
        target[b, : len(h)] = h
        prev[b, 0] = d.eos()
        prev[b, 1 : len(h)] = h[:-1]
    return {
        "net_input": {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev},
        "target": target,
        "ntokens": int(target.ne(d.pad()).sum()),
        "id": torch.arange(len(hypotheses)),
    }


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", ["joint", "factored", "shortlist", "sentence-shortlist"])
def test_beam_scores_equal_score_reference_and_validation_nll(output_layer, arch):
    """The score beam search gives a hypothesis (incremental decoding, beam
    reordering, the per-sentence cache of the factored layer) equals what
    --score-reference computes for it (a full forward) and the exact nll the
    criterion logs for it (what fairseq-validate reports)."""
    model, d = sharpened(inference_network="none", output_layer=output_layer, arch=arch)
    model.eval()
    batch = random_batch(d, bsz=3, src_len=7, tgt_len=5)
    net = batch["net_input"]
    generator = SequenceGenerator([model], d, beam_size=3, max_len_a=0, max_len_b=6, normalize_scores=False)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": {k: net[k] for k in ("src_tokens", "src_lengths")}})
    beams = [(b, h) for b in range(len(hypos)) for h in hypos[b]]
    sample = _sample_for(
        net["src_tokens"][[b for b, _ in beams]],
        net["src_lengths"][[b for b, _ in beams]],
        [h["tokens"] for _, h in beams],
        d,
    )
    beam_scores = torch.tensor([float(h["score"]) for _, h in beams])
    with torch.no_grad():
        scored = SequenceScorer(d).generate([model], sample)
    reference = torch.tensor([float(s[0]["positional_scores"].sum()) for s in scored])
    torch.testing.assert_close(beam_scores, reference, rtol=0, atol=1e-4)
    assert beam_scores.std() > 0.5, "hypotheses of very different scores make this check meaningful"
    with torch.no_grad():
        _, _, log = MarginalCriterion.build(FakeTask(d, d))(model, sample)
    assert float(log["nll_loss"]) == pytest.approx(-float(beam_scores.sum()), abs=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_search_projects_the_source_keys_once(arch, monkeypatch):
    """The scorer's key projection depends on the source alone: beam search
    computes it at the first step and reorders it with the beams (a third of
    beam search's time when it was recomputed every step)."""
    model, d = sharpened(inference_network="none", output_layer="factored", arch=arch)
    model.eval()
    assert model.alignment_head.scorer.kind != "general", "general scores have no key projection"
    calls = []
    prepare = model.alignment_head.scorer.prepare
    monkeypatch.setattr(model.alignment_head.scorer, "prepare", lambda keys: calls.append(keys.shape) or prepare(keys))
    batch = random_batch(d, bsz=3, src_len=7, tgt_len=5)
    net = {k: batch["net_input"][k] for k in ("src_tokens", "src_lengths")}
    generator = SequenceGenerator([model], d, beam_size=3, max_len_a=0, max_len_b=6, min_len=6)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": net})
    assert all(len(h[0]["tokens"]) == 7 for h in hypos), "every sentence decodes 7 steps"
    assert len(calls) == 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("output_layer", ["joint", "shortlist"])
def test_temperature_gives_normalised_tempered_mixtures(temperature, output_layer):
    """fairseq's generator divides the decoder output by --temperature in
    place and asks for normalised probabilities: they must sum to 1 and
    equal p(y)^(1/T) renormalised; at T = 1 they are the mixture itself,
    returned without a second normalisation."""
    model, d = sharpened(inference_network="none", output_layer=output_layer)
    model.eval()
    batch = random_batch(d)
    with torch.no_grad():
        out = model(**batch["net_input"])
        mixture = out[0].clone()
        torch.testing.assert_close(mixture.logsumexp(-1), torch.zeros(mixture.shape[:-1]), rtol=0, atol=1e-5)
        divided = out[0].div_(temperature)  # as fairseq's EnsembleModel.forward_decoder
        tempered = model.get_normalized_probs((divided, out[1]), log_probs=False)
        log_tempered = model.get_normalized_probs((divided, out[1]), log_probs=True)
    torch.testing.assert_close(tempered.sum(-1), torch.ones(tempered.shape[:-1]), rtol=0, atol=1e-5)
    want = torch.softmax(mixture / temperature, dim=-1)
    torch.testing.assert_close(tempered, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(log_tempered, torch.log_softmax(mixture / temperature, dim=-1), rtol=0, atol=1e-5)
    if temperature == 1.0:
        assert log_tempered is divided, "at T = 1 the mixture is returned as it is"
    else:
        assert (tempered - mixture.exp()).abs().max() > 1e-2, "temperature must change the distribution"


def test_sampling_with_temperature_generates_from_a_latent_model():
    model, d = sharpened(inference_network="none", output_layer="factored")
    model.eval()
    batch = random_batch(d)
    net = {k: batch["net_input"][k] for k in ("src_tokens", "src_lengths")}
    from fairseq import search

    generator = SequenceGenerator(
        [model],
        d,
        beam_size=2,
        max_len_a=0,
        max_len_b=6,
        temperature=0.7,
        search_strategy=search.Sampling(d, sampling_topk=-1),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        hypos = generator.generate([model], {"net_input": net})
    scores = [float(h["score"]) for beam in hypos for h in beam]
    assert len(scores) == 2 * len(hypos) and all(math.isfinite(s) for s in scores)

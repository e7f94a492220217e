"""VQA: the VQA v2 loader, accuracy, the model under every criterion, the shipped easy-VQA."""

import argparse
import base64
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from helpers import USER_DIR, run_cli, variant_criterion

from fairseq_varattn.criterions.marginal import MarginalCriterion
from fairseq_varattn.data.vqa import build_vocabularies, vqa_scores
from fairseq_varattn.models.varattn_vqa import VarAttnVQAModel
from fairseq_varattn.tasks.vqa import VQATask, vqa_accuracy
from varattn_tools import variants
from varattn_tools.vqa_data import grid_features


def write_fixture(root, questions, annotations, images=(1, 2), regions=(4, 2), dim=6):
    """Image k has regions[k] regions: a batch of both pads the second."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "train_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (root / "features").mkdir(exist_ok=True)
    rng = np.random.RandomState(0)
    for image, count in zip(images, regions):
        np.save(root / "features" / f"{image}.npy", rng.rand(count, dim).astype(np.float32))
    return root


def annotation(qid, answers, mc=None, kind="other"):
    return {
        "question_id": qid,
        "answers": [{"answer": a} for a in answers],
        "multiple_choice_answer": mc or answers[0],
        "answer_type": kind,
    }


QUESTIONS = [
    {"image_id": 1, "question": "What color is the cat?", "question_id": 10},
    {"image_id": 1, "question": "Is there a dog?", "question_id": 11},
    {"image_id": 2, "question": "What is on the table?", "question_id": 12},
]
ANNOTATIONS = [
    annotation(10, ["black"] * 8 + ["white"] * 2, kind="other"),
    annotation(11, ["yes"] * 10, kind="yes/no"),
    annotation(12, ["Fire hydrant."] + ["spoon"] * 9, mc="a rare thing"),
]


@pytest.fixture
def vqa_fixture(tmp_path):
    root = write_fixture(tmp_path / "vqa", QUESTIONS, ANNOTATIONS)
    build_vocabularies(str(root), "train", min_answer_count=2)  # drops "fire hydrant" (given once)
    return root


def test_vqa_scores_follow_min_n_over_3():
    scores = vqa_scores(["a"] * 7 + ["b"] * 2 + ["c"])
    assert scores == {"a": 1.0, "b": pytest.approx(2 / 3), "c": pytest.approx(1 / 3)}


def test_vqa_accuracy_against_hand_computed_cases():
    answer_scores = torch.tensor([[0.0, 1.0, 1 / 3], [0.0, 2 / 3, 0.0]])
    acc = vqa_accuracy(torch.tensor([1, 1]), answer_scores)
    torch.testing.assert_close(acc, torch.tensor([1.0, 2 / 3]))
    assert float(vqa_accuracy(torch.tensor([2, 0]), answer_scores).sum()) == pytest.approx(1 / 3)


def test_loader_reads_the_vqa_v2_layout(vqa_fixture):
    task = VQATask.setup_task(argparse.Namespace(data=str(vqa_fixture)))
    answers = task.target_dictionary
    # answers given >= 2 times: black (8), yes (10), spoon (9), white (2); not "fire hydrant" (1)
    assert {answers[i] for i in range(answers.nspecial, len(answers))} == {"black", "yes", "spoon", "white"}
    task.load_dataset("train")
    data = task.dataset("train")
    assert len(data) == 3 and task.feature_dim == 6
    first = data[0]
    assert first["target"] == answers.index("black")
    assert float(first["answer_scores"][answers.index("black")]) == 1.0
    assert float(first["answer_scores"][answers.index("white")]) == pytest.approx(2 / 3)
    # an answer outside answers.txt: no NLL target (pad), but still scored in accuracy
    unknown = data[2]
    assert unknown["target"] == answers.pad()
    assert float(unknown["answer_scores"][answers.index("spoon")]) == 1.0
    batch = data.collater([data[i] for i in range(3)])
    assert batch["net_input"]["regions"].shape == (3, 4, 6)
    # image 2 has 2 regions: padded, and masked
    assert batch["net_input"]["region_mask"].tolist() == [[False] * 4, [False] * 4, [False, False, True, True]]
    assert batch["ntokens"] == 2 and batch["target"].shape == (3, 1)
    # fairseq drops a last batch whose size is not a multiple of 8 (issue #5036); the task keeps it
    batches = task.get_batch_iterator(dataset=data, max_sentences=2, required_batch_size_multiple=8)
    assert sorted(i for b in batches.next_epoch_itr(shuffle=False) for i in b["id"].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("attention", ["soft", "categorical", "dirichlet"])
def test_padded_regions_get_no_attention_and_change_nothing(vqa_fixture, attention):
    """A question about the 2-region image gets the same answer distribution
    and attention alone as in a batch padded to 4 regions, and no mass on
    the padding."""
    task = VQATask.setup_task(argparse.Namespace(data=str(vqa_fixture)))
    task.load_dataset("train")
    data = task.dataset("train")
    model = build(task, attention, "none").eval()
    with torch.no_grad():
        padded = model(**data.collater([data[i] for i in range(3)])["net_input"])
        alone = model(**data.collater([data[2]])["net_input"])
    assert padded[1]["attn"][2, 0, 2:].abs().max() == 0
    torch.testing.assert_close(padded[1]["attn"][2, :, :2], alone[1]["attn"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model.get_normalized_probs(padded, True)[2], model.get_normalized_probs(alone, True)[0], rtol=1e-5, atol=1e-5
    )


class _FixedModel(torch.nn.Module):
    """Answers and attends as told: for task.evaluate against hand-computed accuracies."""

    def __init__(self, answer_logprobs, attention):
        super().__init__()
        self.answer_logprobs, self.attention = answer_logprobs, attention
        self.inference_network = None

    def forward(self, **kwargs):
        return self.answer_logprobs.unsqueeze(1), {"attn": self.attention.unsqueeze(1)}

    def get_normalized_probs(self, net_output, log_probs):
        return net_output[0]


def test_answer_and_attention_accuracies_per_answer_type_against_hand_computed_cases(vqa_fixture):
    import json as _json

    from varattn_tools.vqa_eval import evaluate

    (vqa_fixture / "gold_regions.json").write_text(_json.dumps({"1": 0, "2": 1}))  # per image
    task = VQATask.setup_task(argparse.Namespace(data=str(vqa_fixture)))
    answers = task.target_dictionary
    logprobs = torch.full((3, len(answers)), -5.0)
    logprobs[0, answers.index("white")] = 0.0  # q10: "white", said by 2 of 10: 2/3
    logprobs[1, answers.index("yes")] = 0.0  # q11 (yes/no): right, 1
    logprobs[2, answers.index("black")] = 0.0  # q12: nobody said black: 0
    logprobs[2, answers.pad()] = 1.0  # special symbols are never predicted
    attention = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.4, 0.1, 0.1, 0.4 + 1e-3], [0.9, 0.1, 0.0, 0.0]])
    scores, counts = evaluate(_FixedModel(logprobs, attention), task, "train")
    assert counts == {"all": 3, "other": 2, "yes/no": 1}
    assert scores["vqa_acc/all"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert scores["vqa_acc/other"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["vqa_acc/yes/no"] == pytest.approx(100.0)
    # argmax regions 0, 3, 0 against gold 0 (image 1), 0 (image 1), 1 (image 2)
    assert scores["attn_acc_prior/all"] == pytest.approx(100 / 3)
    assert scores["attn_acc_prior/other"] == pytest.approx(50.0)
    assert scores["attn_acc_prior/yes/no"] == pytest.approx(0.0)


def test_question_without_annotation_is_a_clear_error(tmp_path):
    root = write_fixture(tmp_path / "v", QUESTIONS, ANNOTATIONS[:2])
    with pytest.raises(ValueError, match="have no annotation, e.g. question_id 12"):
        build_vocabularies(str(root))


def test_image_without_features_is_a_clear_error(tmp_path):
    root = write_fixture(tmp_path / "v", QUESTIONS, ANNOTATIONS, images=(1,))
    build_vocabularies(str(root))
    task = VQATask.setup_task(argparse.Namespace(data=str(root)))
    with pytest.raises(FileNotFoundError, match="no region features for image 2"):
        task.load_dataset("train")


def test_data_dir_without_vocabularies_is_a_clear_error(tmp_path):
    root = write_fixture(tmp_path / "v", QUESTIONS, ANNOTATIONS)
    with pytest.raises(FileNotFoundError, match="vqa_data vocab"):
        VQATask.setup_task(argparse.Namespace(data=str(root)))


# every variant of varattn_tools.variants, with the answer-conditioned q
EXTRA = {"dirichlet": {"nll_samples": 8}}


def build(task, attention, inference):
    torch.manual_seed(0)
    args = argparse.Namespace(attention=attention, inference_network=inference, dropout=0.0)
    return VarAttnVQAModel.build_model(args, task)


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_model_trains_under_every_criterion(vqa_fixture, name):
    overrides = variants.model_overrides(name, inference_network="answer")
    attention, inference = overrides["attention"], overrides["inference_network"]
    task = VQATask.setup_task(argparse.Namespace(data=str(vqa_fixture)))
    task.load_dataset("train")
    data = task.dataset("train")
    sample = data.collater([data[i] for i in range(3)])
    model = build(task, attention, inference)
    model.train()
    loss, _, log = variant_criterion(name, task, **EXTRA.get(name, {}))(model, sample)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if inference != "none":
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.inference_network.parameters()), (
            "q got no gradient"
        )
    if attention == "categorical":
        # nll_loss is the exact marginal: brute force over the K regions
        model.eval()
        with torch.no_grad():
            _, extra = model(**sample["net_input"], features_only=True)
            prior = torch.softmax(extra["scores"][:, 0], -1)
            h, r = extra["hidden"][:, 0], extra["encoder_states"]
            out = model.head.output
            brute = 0.0
            for b in range(2):  # the third question has an unknown answer: no NLL
                y = int(sample["target"][b, 0])
                p_y = sum(
                    float(prior[b, k])
                    * float(
                        torch.softmax(out.fc_out(torch.tanh(out.hidden_proj(h[b]) + out.context_proj(r[b, k]))), -1)[y]
                    )
                    for k in range(r.size(1))
                )
                brute -= math.log(p_y)
            _, _, log = MarginalCriterion.build(task)(model, sample)
        assert float(log["nll_loss"]) == pytest.approx(brute, rel=1e-4)


def test_grid_features_find_the_shape_cell():
    image = np.full((64, 64, 3), 240, dtype=np.uint8)
    image[34:46, 18:30] = (200, 20, 20)  # a red square inside cell (row 2, col 1)
    features, gold = grid_features(image, grid=4)
    assert features.shape == (16, 54)
    assert gold == 2 * 4 + 1
    green_mean = 48 + 1  # features: 48 pooled pixels, then mean RGB, then std RGB
    assert features[gold, green_mean] < features[0, green_mean]
    assert features[0, 51:].max() < 1e-6  # a background cell has no spread


def test_tsv_features_become_one_array_per_image(tmp_path):
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    line = "\t".join(
        [
            "42",
            "64",
            "48",
            "3",
            base64.b64encode(np.zeros(12, np.float32).tobytes()).decode(),
            base64.b64encode(boxes.tobytes()).decode(),
        ]
    )
    (tmp_path / "f.tsv").write_text(line + "\n")
    run_cli(["varattn_tools.vqa_data", "from-tsv", tmp_path / "f.tsv", "--out", tmp_path / "features"])
    np.testing.assert_array_equal(np.load(tmp_path / "features" / "42.npy"), boxes)


@pytest.fixture(scope="session")
def easy_vqa_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("easy-vqa")
    run_cli(["varattn_tools.vqa_data", "easy-vqa", "--out", out])
    return str(out)


def test_shipped_easy_vqa_converts_to_the_vqa_v2_layout(easy_vqa_dir):
    with open(os.path.join(easy_vqa_dir, "train_questions.json")) as f:
        train = json.load(f)["questions"]
    with open(os.path.join(easy_vqa_dir, "valid_questions.json")) as f:
        valid = json.load(f)["questions"]
    # split by image: no image in both
    assert not {q["image_id"] for q in train} & {q["image_id"] for q in valid}
    assert len(train) + len(valid) == 38575
    answers = open(os.path.join(easy_vqa_dir, "answers.txt")).read().split("\n")
    assert len([a for a in answers if a]) == 13


@pytest.mark.parametrize(
    "variant",
    [
        ["--attention", "soft", "--criterion", "cross_entropy"],
        ["--attention", "categorical", "--inference-network", "answer", "--criterion", "varattn_elbo"],
    ],
)
def test_train_validate_round_trip_on_easy_vqa(easy_vqa_dir, tmp_path, variant):
    save = str(tmp_path / "ckpt")
    proc = run_cli(
        [
            "fairseq_cli.train",
            easy_vqa_dir,
            "--user-dir",
            USER_DIR,
            "--task",
            "varattn_vqa",
            "--arch",
            "varattn_vqa",
            *variant,
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--batch-size",
            "128",
            "--max-update",
            "300",
            "--num-workers",
            "0",
            "--log-format",
            "simple",
            "--log-interval",
            "20",
            "--save-dir",
            save,
            "--no-epoch-checkpoints",
            "--validate-interval-updates",
            "300",
            "--seed",
            "1",
        ]
    )
    log = proc.stdout + proc.stderr
    acc = [float(x) for x in re.findall(r"valid on 'valid' subset \|.*? vqa_acc ([0-9.]+)", log)]
    assert acc, log[-2000:]
    assert re.search(r"valid on 'valid' subset \|.*? attn_acc_prior [0-9.]+", log)
    proc = run_cli(
        [
            "fairseq_cli.validate",
            easy_vqa_dir,
            "--user-dir",
            USER_DIR,
            "--task",
            "varattn_vqa",
            "--path",
            os.path.join(save, "checkpoint_last.pt"),
            "--valid-subset",
            "valid",
            "--batch-size",
            "256",
        ]
    )
    reloaded = float(re.findall(r"vqa_acc ([0-9.]+)", proc.stdout + proc.stderr)[-1])
    assert reloaded == pytest.approx(acc[-1], abs=0.01)
    proc = run_cli(
        [
            "varattn_tools.vqa_eval",
            easy_vqa_dir,
            "--path",
            os.path.join(save, "checkpoint_last.pt"),
            "--subset",
            "valid",
        ]
    )
    per_type = {kind: float(acc) for kind, acc in re.findall(r"^\| (\S+) \| \d+ \| ([0-9.]+) \|", proc.stdout, re.M)}
    # the colour of the shape is in the image, not the question: a model that
    # ignores the regions answers 1 of 6 colours (about 17%; 300 updates give 60-90%)
    assert per_type["color"] > 40.0, per_type

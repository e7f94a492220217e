"""VQA v2-layout data: questions, annotations, per-image region features.

On disk (DATA is what ``fairseq-train DATA --task varattn_vqa`` gets):

    DATA/dict.txt                    question words (fairseq dictionary format)
    DATA/answers.txt                 the answer classes, "answer count" per line
    DATA/SPLIT_questions.json        {"questions": [{"image_id", "question", "question_id"}, ...]}
    DATA/SPLIT_annotations.json      {"annotations": [{"question_id", "answers": [{"answer": ...} x 10],
                                                       "multiple_choice_answer", "answer_type"?}, ...]}
    DATA/features/IMAGE_ID.npy       float32 array, K regions x D features (or .npz with "features")
    DATA/gold_regions.json           optional {"IMAGE_ID": region index}: for attention accuracy

``python -m varattn_tools.vqa_data`` writes the vocabularies, converts
bottom-up-attention tsv features, and builds the shipped easy-VQA set.
"""

import json
import logging
import os
import re
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

logger = logging.getLogger(__name__)

ANSWERS_PER_QUESTION = 10


def tokenize_question(text: str) -> List[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def vqa_scores(answers: List[str]) -> Dict[str, float]:
    """VQA soft score of each given answer: min(#annotators who gave it / 3, 1)."""
    return {a: min(n / 3.0, 1.0) for a, n in Counter(answers).items()}


def read_json(path: str, key: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (expected the VQA v2 '{key}' file)")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if key not in data:
        raise ValueError(f'{path} has no {key!r} list (VQA v2 layout: {{"{key}": [...]}})')
    return data[key]


def load_examples(data_dir: str, split: str) -> List[dict]:
    """Join questions and annotations by question_id; every question needs one."""
    questions = read_json(os.path.join(data_dir, f"{split}_questions.json"), "questions")
    annotations = read_json(os.path.join(data_dir, f"{split}_annotations.json"), "annotations")
    by_id = {a["question_id"]: a for a in annotations}
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        raise ValueError(
            f"{split}: {len(missing)} question(s) have no annotation, e.g. question_id "
            f"{missing[0]}; {split}_annotations.json must cover {split}_questions.json"
        )
    examples = []
    for q in questions:
        a = by_id[q["question_id"]]
        answers = [normalize_answer(x["answer"]) for x in a["answers"]]
        examples.append(
            {
                "question_id": q["question_id"],
                "image_id": q["image_id"],
                "question": q["question"],
                "answers": answers,
                "answer": normalize_answer(a.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0]),
                "answer_type": a.get("answer_type", "other"),
            }
        )
    return examples


def feature_path(data_dir: str, image_id) -> str:
    base = os.path.join(data_dir, "features", str(image_id))
    for ext in (".npy", ".npz"):
        if os.path.isfile(base + ext):
            return base + ext
    raise FileNotFoundError(f"no region features for image {image_id}: expected {base}.npy or {base}.npz")


def load_features(path: str) -> np.ndarray:
    array = np.load(path)
    if isinstance(array, np.lib.npyio.NpzFile):
        array = array["features"]
    if array.ndim != 2:
        raise ValueError(f"{path}: region features must be K x D, got shape {array.shape}")
    return array.astype(np.float32)


def build_vocabularies(data_dir: str, split: str = "train", min_answer_count: int = 1):
    """dict.txt from the split's question words, answers.txt from its
    annotators' answers given at least ``min_answer_count`` times."""
    examples = load_examples(data_dir, split)
    words = Dictionary()
    for ex in examples:
        for w in tokenize_question(ex["question"]):
            words.add_symbol(w)
    words.finalize()
    words.save(os.path.join(data_dir, "dict.txt"))
    counts = Counter(a for ex in examples for a in ex["answers"])
    kept = [(a, n) for a, n in counts.most_common() if n >= min_answer_count]
    with open(os.path.join(data_dir, "answers.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{a} {n}\n" for a, n in kept)
    logger.info(
        "vocabularies from %s: %d question words, %d of %d answers (count >= %d)",
        split,
        len(words),
        len(kept),
        len(counts),
        min_answer_count,
    )
    return words, kept


class VQADataset(FairseqDataset):
    """One item per question: tokens, region features, answer target and scores."""

    def __init__(
        self,
        data_dir: str,
        split: str,
        words: Dictionary,
        answers: Dictionary,
        gold_regions: Optional[Dict[str, int]] = None,
    ):
        self.words, self.answers = words, answers
        self.examples = load_examples(data_dir, split)
        self.features = {}
        for ex in self.examples:  # fail now, not at batch 10,000
            if ex["image_id"] not in self.features:
                self.features[ex["image_id"]] = torch.from_numpy(load_features(feature_path(data_dir, ex["image_id"])))
        dims = {f.size(1) for f in self.features.values()}
        if len(dims) != 1:
            raise ValueError(f"{split}: region features of different widths {sorted(dims)}")
        self.feature_dim = dims.pop()
        self.questions = [
            words.encode_line(
                " ".join(tokenize_question(ex["question"])), add_if_not_exist=False, append_eos=True
            ).long()
            for ex in self.examples
        ]
        unknown = sum(1 for ex in self.examples if answers.index(ex["answer"]) == answers.unk())
        if unknown:
            logger.info(
                "%s: %d of %d questions have an answer outside answers.txt: they count in "
                "accuracy (as wrong) but not in the NLL",
                split,
                unknown,
                len(self.examples),
            )
        self.gold_regions = gold_regions
        self.sizes = np.array([len(q) for q in self.questions])

    def __getitem__(self, index):
        ex = self.examples[index]
        scores = torch.zeros(len(self.answers))
        for answer, score in vqa_scores(ex["answers"]).items():
            idx = self.answers.index(answer)
            if idx != self.answers.unk():
                scores[idx] = score
        target = self.answers.index(ex["answer"])
        item = {
            "id": index,
            "question": self.questions[index],
            "regions": self.features[ex["image_id"]],
            "target": self.answers.pad() if target == self.answers.unk() else target,
            "answer_scores": scores,
        }
        if self.gold_regions is not None:
            item["gold_region"] = self.gold_regions.get(str(ex["image_id"]), -1)
        return item

    def __len__(self):
        return len(self.examples)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        return np.argsort(self.sizes, kind="mergesort")

    def collater(self, samples):
        if not samples:
            return {}
        questions = data_utils.collate_tokens([s["question"] for s in samples], self.words.pad())
        num_regions = max(s["regions"].size(0) for s in samples)
        regions = torch.zeros(len(samples), num_regions, self.feature_dim)
        region_mask = torch.ones(len(samples), num_regions, dtype=torch.bool)
        for i, s in enumerate(samples):
            regions[i, : s["regions"].size(0)] = s["regions"]
            region_mask[i, : s["regions"].size(0)] = False
        target = torch.tensor([s["target"] for s in samples]).unsqueeze(1)
        batch = {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(target.ne(self.answers.pad()).sum()),
            "net_input": {
                "question": questions,
                "question_lengths": torch.tensor([len(s["question"]) for s in samples]),
                "regions": regions,
                "region_mask": region_mask,
            },
            "target": target,
            "answer_scores": torch.stack([s["answer_scores"] for s in samples]),
        }
        if "gold_region" in samples[0]:
            batch["gold_region"] = torch.tensor([s["gold_region"] for s in samples])
        return batch

    def answer_type(self, index) -> str:
        return self.examples[index]["answer_type"]

"""``varattn_vqa``: visual question answering with attention over image
regions as the latent variable (docs/design.md, "VQA"; the paper's Sec. 5.2).

Validation logs, besides the criterion's ``loss`` / ``nll_loss`` (exact
marginal NLL under the prior), ``vqa_acc`` (the standard min(n/3, 1) VQA
accuracy of the most probable answer, in %) and, when
``DATA/gold_regions.json`` exists, ``attn_acc_prior`` / ``attn_acc_q``: how
often the prior's (q's) most probable region is the gold region.
"""

import json
import logging
import os
from dataclasses import dataclass, field

import torch
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from fairseq.tasks import FairseqTask, register_task

from ..data.vqa import VQADataset, load_features
from ..modules.alignment_head import AlignmentStep

logger = logging.getLogger(__name__)


def vqa_accuracy(predictions: torch.Tensor, answer_scores: torch.Tensor) -> torch.Tensor:
    """Per-question VQA accuracy of predicted answer indices: the predicted
    answer's min(#annotators / 3, 1) (0 for answers nobody gave)."""
    return answer_scores.gather(1, predictions.unsqueeze(1)).squeeze(1)


@dataclass
class VQAConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "VQA data dir (see fairseq_varattn/data/vqa.py)"})


def load_dictionary(path: str, what: str, how: str) -> Dictionary:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: the {what}; {how}")
    return Dictionary.load(path)


def region_feature_dim(data_dir: str) -> int:
    folder = os.path.join(data_dir, "features")
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if not files:
        raise FileNotFoundError(f"{folder} holds no region features (IMAGE_ID.npy, K x D)")
    return load_features(os.path.join(folder, files[0])).shape[1]


@register_task("varattn_vqa", dataclass=VQAConfig)
class VQATask(FairseqTask):
    def __init__(self, cfg, words, answers):
        super().__init__(cfg)
        self.words = words
        self.answers = answers
        gold = os.path.join(cfg.data, "gold_regions.json")
        self.gold_regions = None
        if os.path.isfile(gold):
            with open(gold) as f:
                self.gold_regions = json.load(f)

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        if not os.path.isdir(cfg.data):
            raise FileNotFoundError(f"VQA data dir {cfg.data!r} does not exist")
        how = f"run `python -m varattn_tools.vqa_data vocab {cfg.data}`"
        words = load_dictionary(os.path.join(cfg.data, "dict.txt"), "question-word dictionary", how)
        answers = load_dictionary(os.path.join(cfg.data, "answers.txt"), "answer vocabulary", how)
        logger.info("question words: %d, answers: %d", len(words), len(answers) - answers.nspecial)
        task = cls(cfg, words, answers)
        task.feature_dim = region_feature_dim(cfg.data)
        return task

    @property
    def source_dictionary(self):
        return self.words

    @property
    def target_dictionary(self):
        return self.answers

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.datasets[split] = VQADataset(self.cfg.data, split, self.words, self.answers, self.gold_regions)
        logger.info("%s: %d questions", split, len(self.datasets[split]))

    def get_batch_iterator(self, dataset, **kwargs):
        # fairseq drops a last batch whose size is not a multiple of
        # --required-batch-size-multiple (fairseq issue #5036): every question counts
        kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, **kwargs)

    def max_positions(self):
        return None

    @torch.no_grad()
    def evaluate(self, model, sample):
        """Predictions and per-question accuracies (answer, prior / q attention)."""
        net_input = sample["net_input"]
        has_q = getattr(model, "inference_network", None) is not None
        net_output = model(**net_input, target=sample["target"] if has_q else None)
        lprobs = model.get_normalized_probs(net_output, log_probs=True)[:, 0]
        lprobs[:, : self.answers.nspecial] = float("-inf")  # never predict <pad>, <unk>, ...
        prediction = lprobs.argmax(-1)
        out = {"prediction": prediction, "vqa_acc": vqa_accuracy(prediction, sample["answer_scores"])}
        gold = sample.get("gold_region")
        if gold is not None:
            extra = net_output[1]
            out["attn_acc_prior"] = (extra["attn"][:, 0].argmax(-1) == gold).float()  # fairseq's attention key
            if has_q:
                step = AlignmentStep.of(extra)
                q = model.alignment_head.alignment_distribution(step.q_scores, step.encoder_padding_mask)
                q_mean = q.mean()
                out["attn_acc_q"] = (q_mean[:, 0].argmax(-1) == gold).float()
        return out

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        for key, value in self.evaluate(model, sample).items():
            if key != "prediction":
                logging_output[f"{key}_sum"] = float(value.sum())
        logging_output["vqa_questions"] = sample["nsentences"]
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        questions = sum(log.get("vqa_questions", 0) for log in logging_outputs)
        if questions == 0:
            return
        for key in ("vqa_acc", "attn_acc_prior", "attn_acc_q"):
            if any(f"{key}_sum" in log for log in logging_outputs):
                total = sum(log.get(f"{key}_sum", 0) for log in logging_outputs)
                metrics.log_scalar(key, 100.0 * total / questions, questions, round=2)

"""Translate and align from Python, in the style of fairseq's hub interface.

    from fairseq_varattn import hub

    model = hub.from_pretrained("runs/demo/model")  # checkpoint_best.pt, dict.*.txt, sentencepiece.bpe.model
    model.translate("Zwei Hunde spielen im Schnee.")  # beam search, as fairseq's GeneratorHubInterface
    result = model.align("Zwei Hunde spielen im Schnee.", "Two dogs play in the snow.")
    result.pharaoh()                                   # "0-0 1-1 2-2 3-3 3-4 4-5"

A model directory holds the checkpoint, the two dictionaries and, for raw
text, the sentencepiece model as ``sentencepiece.bpe.model`` (fairseq's
layout for released models; ``scripts/demo.sh`` writes one).  Loading goes
through ``fairseq.hub_utils.from_pretrained``, so every keyword fairseq's
hub takes (``bpe``, ``sentencepiece_model``, ``beam``, ...) works here too.
"""

import os
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from fairseq import hub_utils

from . import alignments
from .data_check import problem


@dataclass
class Alignment:
    """A sentence pair's word-level alignment: ``weights[j, i]`` is the
    probability that target word j aligns to source word i (renormalised
    without the end-of-sentence position)."""

    source: List[str]
    target: List[str]
    weights: torch.Tensor  # (len(target), len(source))
    kind: str

    def links(self):
        """Each target word with its most probable source word: sorted (i, j) pairs."""
        return sorted(alignments.hard_links(self.weights), key=lambda link: (link[1], link[0]))

    def pharaoh(self) -> str:
        return alignments.pharaoh(set(self.links()))


class VarAttnHubInterface(hub_utils.GeneratorHubInterface):
    """fairseq's generator interface (``translate``, ``sample``, ``score``,
    ``generate``) plus ``align``."""

    @property
    def model(self):
        return self.models[0]

    def alignment_kinds(self) -> List[str]:
        return alignments.kinds_of(self.model)

    def _target_tokens(self, sentence: str) -> torch.LongTensor:
        pieces = self.apply_bpe(self.tokenize(sentence))
        return self.tgt_dict.encode_line(pieces, add_if_not_exist=False).long()

    @torch.no_grad()
    def align(self, source: Union[str, List[str]], target: Union[str, List[str]],
              kind: Optional[str] = None) -> Union[Alignment, List[Alignment]]:
        """Word alignments of sentence pairs (a string each, or lists of them),
        teacher-forced on ``target``.  ``kind``: "posterior" (the exact
        posterior, the default for categorical attention), "q", or "attention"
        (the default otherwise): ``alignment_kinds()`` lists what the model has."""
        single = isinstance(source, str)
        sources, targets = ([source], [target]) if single else (list(source), list(target))
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source sentences but {len(targets)} targets")
        if kind is None:
            kind = "posterior" if "posterior" in self.alignment_kinds() else "attention"
        self.model.eval()
        out = [self._align_one(s, t, kind) for s, t in zip(sources, targets)]
        return out[0] if single else out

    def _align_one(self, source: str, target: str, kind: str) -> Alignment:
        src = self.encode(source).to(self.device)
        tgt = self._target_tokens(target).to(self.device)
        eos = self.tgt_dict.eos()
        net_input = {"src_tokens": src.unsqueeze(0), "src_lengths": torch.tensor([src.numel()], device=self.device),
                     "prev_output_tokens": torch.cat([tgt.new_tensor([eos]), tgt[:-1]]).unsqueeze(0)}
        matrix = alignments.alignment_matrices(self.model, net_input, tgt.unsqueeze(0), [kind])[kind][0]
        # drop </s>'s row and column; each target piece's row renormalised over the words
        matrix = matrix[:-1, :-1].cpu()
        matrix = matrix / matrix.sum(1, keepdim=True).clamp_min(1e-30)
        src_pieces = [self.src_dict[t] for t in src[:-1].tolist()]
        tgt_pieces = [self.tgt_dict[t] for t in tgt[:-1].tolist()]
        words = alignments.word_matrix(matrix, alignments.word_ids(tgt_pieces), alignments.word_ids(src_pieces))
        return Alignment(alignments.words_of(src_pieces), alignments.words_of(tgt_pieces), words, kind)


def language_pair(checkpoint: str, data: str):
    """(source, target) languages: from the checkpoint's task config or, where
    training inferred them from the data directory's file names (fairseq then
    saves none), by matching the dictionaries in ``data`` against the
    checksums the plugin's models save with their weights."""
    from fairseq.data import Dictionary

    from .models.latent_model import dictionary_checksum

    state = torch.load(checkpoint, map_location="cpu")
    task = state["cfg"]["task"]
    if task.get("source_lang") and task.get("target_lang"):
        return task["source_lang"], task["target_lang"]
    crcs = {}
    for name in sorted(os.listdir(data)):
        if name.startswith("dict.") and name.endswith(".txt"):
            crcs[name[len("dict."):-len(".txt")]] = int(dictionary_checksum(Dictionary.load(os.path.join(data, name))))
    saved = state["model"]
    if "source_dictionary_crc" in saved:
        sources = [lang for lang, crc in crcs.items() if crc == int(saved["source_dictionary_crc"])]
        targets = [lang for lang, crc in crcs.items() if crc == int(saved["target_dictionary_crc"])]
        pairs = [(s, t) for s in sources for t in targets if s != t]
        if pairs:  # several only for a joined dictionary: each direction loads the same symbols
            return sorted(pairs)[0]
        raise ValueError(f"no dictionaries in {data!r} match the checkpoint's ({', '.join(crcs) or 'none there'}): "
                         "pass data_name_or_path= the data directory it was trained on")
    raise ValueError(f"{checkpoint!r} does not say its languages: pass source_lang= and target_lang=")


def from_pretrained(model_dir: str, checkpoint_file: str = "checkpoint_best.pt", data_name_or_path: str = ".",
                    **kwargs) -> VarAttnHubInterface:
    """Load ``model_dir/checkpoint_file`` with the dictionaries in
    ``data_name_or_path`` (relative to ``model_dir`` when it starts with ".").
    With a sentencepiece model (``model_dir/sentencepiece.bpe.model`` or
    ``sentencepiece_model=``), ``bpe="sentencepiece"`` is the default, so
    ``translate`` and ``align`` take and return raw text."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    checkpoint = os.path.join(model_dir, checkpoint_file)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"no checkpoint {checkpoint!r}")
    data = os.path.join(model_dir, data_name_or_path) if data_name_or_path.startswith(".") else data_name_or_path
    message = problem(data)
    if message is not None:
        raise FileNotFoundError(f"{message} (or copy the training data's dict.*.txt into the model directory)")
    if "source_lang" not in kwargs or "target_lang" not in kwargs:
        kwargs["source_lang"], kwargs["target_lang"] = language_pair(checkpoint, data)
    if "sentencepiece_model" in kwargs or os.path.isfile(os.path.join(model_dir, "sentencepiece.bpe.model")):
        kwargs.setdefault("bpe", "sentencepiece")
    loaded = hub_utils.from_pretrained(model_dir, checkpoint_file, data_name_or_path, **kwargs)
    return VarAttnHubInterface(loaded["args"], loaded["task"], loaded["models"])

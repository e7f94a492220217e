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

    def agreement(self, reverse: "Alignment") -> "Alignment":
        """This alignment combined with ``reverse``, the same pair aligned by a
        target-to-source model (``alignments.agreement``): kind "KIND agreement"."""
        if reverse.source != self.target or reverse.target != self.source:
            raise ValueError("the reverse alignment is of another sentence pair (its source must be this target)")
        return Alignment(
            self.source, self.target, alignments.agreement(self.weights, reverse.weights), f"{self.kind} agreement"
        )


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
    def align(
        self,
        source: Union[str, List[str]],
        target: Union[str, List[str]],
        kind: Optional[str] = None,
        batch_size: int = 32,
    ) -> Union[Alignment, List[Alignment]]:
        """Word alignments of sentence pairs (a string each, or lists of them, in
        order), teacher-forced on ``target``.  ``kind``: "posterior" (the exact
        posterior, the default for categorical attention), "q", or "attention"
        (the default otherwise): ``alignment_kinds()`` lists what the model has."""
        single = isinstance(source, str)
        sources, targets = ([source], [target]) if single else (list(source), list(target))
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source sentences but {len(targets)} targets")
        if kind is None:
            kind = "posterior" if "posterior" in self.alignment_kinds() else "attention"
        self.model.eval()
        pairs = [(self.encode(s), self._target_tokens(t)) for s, t in zip(sources, targets)]
        out = [None] * len(pairs)
        # batches of similar lengths, longest source first (the LSTM encoder packs sequences
        # in decreasing length, as fairseq's collater orders them); answers in the input's order
        order = sorted(range(len(pairs)), key=lambda k: (-pairs[k][0].numel(), -pairs[k][1].numel()))
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size]
            for k, result in zip(ids, self._align_batch([pairs[k] for k in ids], kind)):
                out[k] = result
        return out[0] if single else out

    def _align_batch(self, pairs, kind: str) -> List[Alignment]:
        from fairseq.data import data_utils

        pad, eos = self.src_dict.pad(), self.tgt_dict.eos()
        srcs, tgts = [p[0] for p in pairs], [p[1] for p in pairs]
        # the translation task's layout: left-padded source, target shifted right by </s>
        net_input = {
            "src_tokens": data_utils.collate_tokens(srcs, pad, eos, left_pad=True).to(self.device),
            "src_lengths": torch.tensor([s.numel() for s in srcs], device=self.device),
            "prev_output_tokens": data_utils.collate_tokens(
                tgts, pad, eos, left_pad=False, move_eos_to_beginning=True
            ).to(self.device),
        }
        target = data_utils.collate_tokens(tgts, pad, eos, left_pad=False).to(self.device)
        matrices = alignments.alignment_matrices(self.model, net_input, target, [kind])[kind].cpu()
        width = net_input["src_tokens"].size(1)
        results = []
        for b, (src, tgt) in enumerate(zip(srcs, tgts)):
            n, t = src.numel() - 1, tgt.numel() - 1  # without </s>
            # rows: the target pieces; columns: the source pieces after the left padding
            matrix = matrices[b, :t, width - n - 1 : width - 1]
            src_pieces = [self.src_dict[x] for x in src[:-1].tolist()]
            tgt_pieces = [self.tgt_dict[x] for x in tgt[:-1].tolist()]
            words = alignments.word_alignment(matrix, src_pieces, tgt_pieces)
            results.append(Alignment(alignments.words_of(src_pieces), alignments.words_of(tgt_pieces), words, kind))
        return results


def language_pair(checkpoint: str, data: str):
    """(source, target) languages: from the checkpoint's task config or, where
    training inferred them from the data directory's file names (fairseq then
    saves none), by matching the dictionaries in ``data`` against the
    checksums the plugin's models save with their weights (other models: the
    sizes of their embedding tables)."""
    from fairseq.data import Dictionary

    from .models.latent_model import dictionary_checksum

    # memory-mapped: only the config and the few tensors read below leave the disk
    # (hub_utils loads the checkpoint in full afterwards)
    state = torch.load(checkpoint, map_location="cpu", mmap=True)
    task = state["cfg"]["task"]
    if task.get("source_lang") and task.get("target_lang"):
        return task["source_lang"], task["target_lang"]
    dictionaries = {}
    for name in sorted(os.listdir(data)):
        if name.startswith("dict.") and name.endswith(".txt"):
            dictionaries[name[len("dict.") : -len(".txt")]] = Dictionary.load(os.path.join(data, name))
    saved = state["model"]
    if "source_dictionary_crc" in saved:

        def fits(lang, key):
            return int(dictionary_checksum(dictionaries[lang])) == int(saved[key])
    else:  # another model (fairseq's transformer): the embedding tables' sizes

        def fits(lang, key):
            table = saved.get(("encoder" if key.startswith("source") else "decoder") + ".embed_tokens.weight")
            return table is not None and table.size(0) == len(dictionaries[lang])

    pairs = [
        (s, t)
        for s in dictionaries
        for t in dictionaries
        if s != t and fits(s, "source_dictionary_crc") and fits(t, "target_dictionary_crc")
    ]
    if pairs:  # several only for a joined dictionary: each direction loads the same symbols
        return sorted(pairs)[0]
    raise ValueError(
        f"no dictionaries in {data!r} match the checkpoint's ({', '.join(dictionaries) or 'none there'}): "
        "pass data_name_or_path= the data directory it was trained on, or source_lang= and target_lang="
    )


def from_pretrained(
    model_dir: str, checkpoint_file: str = "checkpoint_best.pt", data_name_or_path: str = ".", **kwargs
) -> VarAttnHubInterface:
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
    # translate() batches through fairseq, which would drop a last batch of another size
    kwargs.setdefault("required_batch_size_multiple", 1)
    if "sentencepiece_model" in kwargs or os.path.isfile(os.path.join(model_dir, "sentencepiece.bpe.model")):
        kwargs.setdefault("bpe", "sentencepiece")
    loaded = hub_utils.from_pretrained(model_dir, checkpoint_file, data_name_or_path, **kwargs)
    return VarAttnHubInterface(loaded["args"], loaded["task"], loaded["models"])

"""A lexical shortlist: for every source word type, the K target types it
most often translates to, by IBM model 1 (docs/design.md, "Output layers",
the shortlist layer).

``ibm1`` runs model 1's EM on sentence pairs of token ids, with every
co-occurring (source type, target type) pair as a parameter, and
``shortlist_table`` keeps each source type's K most probable translations
t(y | x).  ``train_shortlist`` does both on a fairseq binarised train split.
"""

import logging
import os
from typing import Iterable, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)


def cooccurrences(pairs: Iterable[Tuple[torch.Tensor, torch.Tensor]]):
    """Every (source position, target position) pair of every sentence pair,
    as (source ids, target ids, target-token index): three flat tensors with
    one entry per pair, the last numbering the target tokens of the corpus."""
    src_ids, tgt_ids, tokens = [], [], []
    count = 0
    for src, tgt in pairs:
        src, tgt = src.long().view(-1), tgt.long().view(-1)
        if src.numel() == 0 or tgt.numel() == 0:
            continue
        src_ids.append(src.repeat(tgt.numel()))
        tgt_ids.append(tgt.repeat_interleave(src.numel()))
        tokens.append(torch.arange(count, count + tgt.numel()).repeat_interleave(src.numel()))
        count += tgt.numel()
    if not src_ids:
        raise ValueError("no sentence pairs to build a lexical table from")
    return torch.cat(src_ids), torch.cat(tgt_ids), torch.cat(tokens)


def ibm1(pairs, target_vocab: int, iterations: int = 5):
    """IBM model 1 without a NULL word: t(y | x) for every co-occurring pair.

    Returns (source ids, target ids, t) over the distinct pairs.  EM: each
    target token's posterior over its sentence's source positions is
    proportional to t(y_j | x_i); t(y | x) is then the expected count of
    (x, y) over x's total."""
    src, tgt, token = cooccurrences(pairs)
    keys, pair = torch.unique(src * target_vocab + tgt, return_inverse=True)
    pair_src, pair_tgt = keys // target_vocab, keys % target_vocab
    num_tokens = int(token.max()) + 1
    t = torch.ones(keys.numel(), dtype=torch.float64)  # uniform: any constant
    for _ in range(iterations):
        w = t[pair]
        norm = torch.zeros(num_tokens, dtype=torch.float64).index_add_(0, token, w)
        counts = torch.zeros_like(t).index_add_(0, pair, w / norm[token])
        totals = torch.zeros(int(pair_src.max()) + 1, dtype=torch.float64).index_add_(0, pair_src, counts)
        t = counts / totals[pair_src]
    return pair_src, pair_tgt, t


def shortlist_table(pair_src, pair_tgt, t, source_vocab: int, k: int, fill: int) -> torch.Tensor:
    """(source_vocab, k): each source type's k most probable target types by
    t, most probable first, distinct; rows with fewer candidates (and types
    never seen) are completed with ``fill``."""
    order = torch.sort(t, descending=True, stable=True).indices
    order = order[torch.sort(pair_src[order], stable=True).indices]  # by source type, then by t
    src_sorted = pair_src[order]
    starts = torch.searchsorted(src_sorted, src_sorted, right=False)  # first entry of each type
    rank = torch.arange(src_sorted.numel()) - starts
    keep = rank < k
    table = torch.full((source_vocab, k), fill, dtype=torch.long)
    table[src_sorted[keep], rank[keep]] = pair_tgt[order][keep]
    return table


def split_prefix(data: str, split: str, src: str, tgt: str, lang: str) -> str:
    """The binarised file prefix of ``split`` for ``lang`` in the first data
    directory of ``data``, in either language-pair order (as fairseq's
    translation task looks for it)."""
    root = data.split(os.pathsep)[0]
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(root, f"{split}.{pair}.{lang}")
        if os.path.isfile(prefix + ".idx"):
            return prefix
    raise FileNotFoundError(
        f"no binarised {split} split for {src}-{tgt} in {root} (looked for {split}.{src}-{tgt}.{lang}.idx "
        f"and {split}.{tgt}-{src}.{lang}.idx): the shortlist output layer builds its lexical table from "
        "the training data"
    )


def train_shortlist(
    data: str, src: str, tgt: str, src_dict, tgt_dict, k: int, iterations: int = 5, split: str = "train"
) -> torch.Tensor:
    """The shortlist table of the binarised ``split`` (the training split) in ``data``."""
    from fairseq.data import data_utils

    datasets = []
    for lang, dictionary in ((src, src_dict), (tgt, tgt_dict)):
        prefix = split_prefix(data, split, src, tgt, lang)
        dataset = data_utils.load_indexed_dataset(prefix, dictionary)
        if dataset is None:
            raise FileNotFoundError(f"cannot read the binarised dataset {prefix}")
        datasets.append(dataset)
    if len(datasets[0]) != len(datasets[1]):
        raise ValueError(f"{split}.{src} and {split}.{tgt} in {data} have different numbers of sentences")
    logger.info(
        "building the lexical shortlist (IBM model 1, %d iterations, %d candidates per source type) "
        "from %d sentence pairs of %s",
        iterations,
        k,
        len(datasets[0]),
        data,
    )
    pairs = ((datasets[0][n], datasets[1][n]) for n in range(len(datasets[0])))
    return shortlist_table(*ibm1(pairs, len(tgt_dict), iterations), len(src_dict), k, tgt_dict.pad())


def spread_table(source_vocab: int, k: int, target_dict) -> torch.Tensor:
    """A stand-in table (benchmarks, unit tests of models without a corpus):
    k distinct words per source type, spread over the target vocabulary, and
    fillers for the source pad.  What a layer costs does not depend on which
    words they are."""
    span = len(target_dict) - target_dict.nspecial
    if k > span:
        raise ValueError(f"{k} distinct candidates from {span} words")
    step = max(1, span // k)
    table = (torch.arange(source_vocab).unsqueeze(1) * 7 + torch.arange(k) * step) % span + target_dict.nspecial
    table[target_dict.pad()] = target_dict.pad()
    return table


def coverage(table: torch.Tensor, pairs: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The share of target tokens that are in the shortlist of some source
    token of their sentence: the words the source side can raise at all."""
    hit = total = 0
    for src, tgt in pairs:
        candidates = table[src.long()].view(-1)
        hit += int(torch.isin(tgt.long(), candidates).sum())
        total += tgt.numel()
    return hit / max(total, 1)

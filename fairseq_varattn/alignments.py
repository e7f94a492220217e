"""The alignments a trained model computes for sentence pairs, and their word-level form.

Three kinds (docs/design.md, "Alignments"):

- ``attention``: what the model attends with when it translates: soft
  attention, the prior p(z_j | x, y_<j) of a latent model (its mean for
  Dirichlet attention), or fairseq Transformer's last-layer cross-attention;
- ``q``: the inference network's q(z_j | x, y), for models trained with one;
- ``posterior``: the exact posterior p(z_j | x, y_<=j) of categorical models,
  proportional to the prior times p(y_j | x, y_<j, z_j = i).

Matrices are (B, T, N): one row per target position, a distribution over
source positions.  Word-level alignments use whitespace words: a target
word's row is the mean of its pieces' rows, a source word's column the sum
of its pieces' columns, and each target word links to its most probable
source word (Pharaoh ``i-j``: source word i, target word j).
"""

from typing import Dict, List, Set, Tuple

import torch

from .modules.alignment_head import AlignmentStep

WORD_START = "\u2581"  # sentencepiece's word-boundary marker
KINDS = ("attention", "q", "posterior")

Links = Set[Tuple[int, int]]


def kinds_of(model) -> List[str]:
    """The kinds a model can compute, in KINDS order."""
    head = getattr(model, "alignment_head", None)
    out = ["attention"]
    if getattr(model, "inference_network", None) is not None:
        out.append("q")
    if head is not None and head.kind.name == "categorical":
        out.append("posterior")
    return out


def attention_label(model) -> str:
    """What a model's ``attention`` kind is, in words."""
    head = getattr(model, "alignment_head", None)
    if head is not None:
        return head.kind.label
    return "cross-attention (last layer, mean of heads)" if hasattr(model.decoder, "layers") else "soft attention"


def attention_of(model, net_input, target):
    """The (B, T, N) attention and the forward's extra dict.  fairseq's own
    Transformer: its top layer's cross-attention averaged over heads, what
    ``--print-alignment`` reads with ``--alignment-layer`` at the top."""
    if getattr(model, "alignment_head", None) is not None:
        _, extra = model(**net_input, target=target, features_only=True)
    else:
        _, extra = model(**net_input, features_only=True, alignment_layer=model.decoder.num_layers - 1)
    attn = extra["attn"]
    attn = attn[0] if isinstance(attn, list) else attn
    return attn.float(), extra


def exact_posterior(model, extra, target):
    """p(z_j = i | x, y_<=j) of a categorical model, (B, T, N)."""
    head, step = model.alignment_head, AlignmentStep.of(extra)
    prior = head.alignment_distribution(step.scores, step.encoder_padding_mask)
    logp = head.output.alignment_logprobs(
        step.hidden, step.encoder_states, target, source_tokens=step.source_tokens
    ).float()
    return prior.posterior(logp).mean()


@torch.no_grad()
def alignment_matrices(model, net_input, target, kinds=None) -> Dict[str, torch.Tensor]:
    """kind -> (B, T, N) for a teacher-forced batch; ``kinds`` defaults to all the model has."""
    available = kinds_of(model)
    kinds = available if kinds is None else list(kinds)
    missing = [k for k in kinds if k not in available]
    if missing:
        raise ValueError(
            f"this model ({attention_label(model)}) has no {' or '.join(missing)} alignment: "
            f"it has {', '.join(available)} (q needs --inference-network; the exact posterior "
            "needs --attention categorical)"
        )
    has_q = "q" in available
    attn, extra = attention_of(model, net_input, target if has_q else None)
    out = {"attention": attn}
    if "q" in kinds:
        step = AlignmentStep.of(extra)
        out["q"] = model.alignment_head.alignment_distribution(step.q_scores, step.encoder_padding_mask).mean().float()
    if "posterior" in kinds:
        out["posterior"] = exact_posterior(model, extra, target).float()
    return {k: out[k] for k in kinds}


# -- pieces to words -------------------------------------------------------------------
def word_ids(pieces: List[str]) -> List[int]:
    """The whitespace-word index of each sentencepiece piece."""
    ids, word = [], -1
    for k, piece in enumerate(pieces):
        if piece.startswith(WORD_START) or k == 0:
            word += 1
        ids.append(word)
    return ids


def words_of(pieces: List[str]) -> List[str]:
    """The whitespace words the pieces spell."""
    return "".join(pieces).replace(WORD_START, " ").split()


def word_matrix(matrix: torch.Tensor, tgt_words: List[int], src_words: List[int]) -> torch.Tensor:
    """(T pieces, N pieces) -> (T words, N words): mean over a target word's
    pieces (each row is a distribution), sum over a source word's pieces."""
    n_t, n_s = max(tgt_words) + 1, max(src_words) + 1
    rows = torch.zeros(n_t, matrix.size(1), dtype=matrix.dtype).index_add_(0, torch.tensor(tgt_words), matrix)
    rows /= torch.bincount(torch.tensor(tgt_words), minlength=n_t).unsqueeze(1)
    return torch.zeros(n_t, n_s, dtype=matrix.dtype).index_add_(1, torch.tensor(src_words), rows)


def word_alignment(matrix: torch.Tensor, src_pieces: List[str], tgt_pieces: List[str]) -> torch.Tensor:
    """A pair's (T words, N words) alignment from its (T pieces, N pieces) matrix
    without </s>: each piece's row renormalised over the source pieces, then
    ``word_matrix``."""
    matrix = matrix / matrix.sum(1, keepdim=True).clamp_min(1e-30)
    return word_matrix(matrix, word_ids(tgt_pieces), word_ids(src_pieces))


def agreement(forward: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """Where both directions agree: ``forward`` (T words, S words) holds
    p(source word i | target word j) of a source-to-target model, ``reverse``
    (S, T) p(target word j | source word i) of a target-to-source model on the
    same pair; their product, each target word's row renormalised, (T, S).
    Its argmax links each target word to the source word that both
    posteriors support most, instead of combining two hard alignments
    (docs/design.md, "Alignments")."""
    if reverse.t().shape != forward.shape:
        raise ValueError(
            f"the reverse alignment is {tuple(reverse.shape)} (source x target words expected: "
            f"{tuple(forward.t().shape)}): align the same pair with the target-to-source model"
        )
    product = forward * reverse.t().to(forward.dtype)
    return product / product.sum(1, keepdim=True).clamp_min(1e-30)


def hard_links(word_level: torch.Tensor) -> Links:
    """Each target word j links to its most probable source word i: {(i, j)}."""
    return {(int(i), j) for j, i in enumerate(word_level.argmax(1).tolist())}


def pharaoh(links: Links) -> str:
    """``"0-0 1-2 ..."``: source-target pairs sorted by target, then source word."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links, key=lambda link: (link[1], link[0])))

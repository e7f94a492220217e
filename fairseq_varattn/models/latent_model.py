"""What every encoder-decoder model with an alignment head (``decoder.head``)
shares (``varattn_lstm``, ``varattn_transformer``): dictionary checksums and
the checkpoint checks, the inference network in the same forward, and the
update count for KL annealing."""

import functools
import zlib

import torch

from ..compat import score_every_sentence
from ..modules import latent_warmup
from ..modules.alignment_head import move_head_keys
from ..modules.lexical import train_shortlist
from ..modules.shortlist_output import ShortlistOutputLayer
from .inference_network import check_shared_embeddings


def dictionary_checksum(dictionary) -> torch.Tensor:
    """CRC32 of the symbol list: equal sizes do not make equal dictionaries."""
    return torch.tensor(zlib.crc32("\n".join(dictionary.symbols).encode("utf-8")), dtype=torch.long)


def set_table_builder(output, args, task) -> None:
    """A new shortlist layer builds its lexical table from the task's train
    split when it is first used; a checkpoint brings its own, so generation
    never reads training data."""
    cfg = getattr(task, "cfg", None)
    if isinstance(output, ShortlistOutputLayer) and getattr(cfg, "data", None):
        output.table_builder = functools.partial(
            train_shortlist,
            cfg.data,
            cfg.source_lang,
            cfg.target_lang,
            task.source_dictionary,
            task.target_dictionary,
            args.shortlist_size,
            split=getattr(cfg, "train_subset", None) or "train",
        )


class LatentModelMixin:
    """Mixed into a ``FairseqEncoderDecoderModel`` whose decoder holds an
    ``AlignmentHead`` as ``head``; call ``init_latent(inference_network)`` in ``__init__``."""

    def init_latent(self, inference_network, inference_annotations="detached"):
        self.inference_network = inference_network
        self.inference_annotations = inference_annotations
        self.num_updates = 0
        # Saved with the weights, so a checkpoint used with another data
        # dir's dictionaries fails loudly instead of translating garbage.
        self.register_buffer("source_dictionary_crc", dictionary_checksum(self.encoder.dictionary))
        self.register_buffer("target_dictionary_crc", dictionary_checksum(self.decoder.dictionary))
        # where the automatic warm-up of latent criterions stands: saved, so a
        # resumed run continues (or stays out of) it (modules/latent_warmup.py)
        self.register_buffer("latent_warmup_state", latent_warmup.initial_state())

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="checkpoint_best.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub convention: an interface with ``translate`` and ``align`` (fairseq_varattn/hub.py)."""
        from ..hub import from_pretrained

        return from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)

    @property
    def alignment_head(self):
        """What latent criterions read (modules/alignment_head.py)."""
        return self.decoder.head

    @property
    def attention_kind(self):
        return self.decoder.head.attention_kind

    def check_checkpoint(self, state_dict):
        """Clear errors for a checkpoint of another attention kind, output
        layer or dictionary; checkpoints from before the head was one module
        have their keys moved under it."""
        move_head_keys(state_dict, "decoder.", "decoder.head.")
        self.decoder.head.check_checkpoint(state_dict, "decoder.head.")
        for side in ("source", "target"):
            key = f"{side}_dictionary_crc"
            if key not in state_dict:  # a checkpoint from before the checksums: trust it
                state_dict[key] = getattr(self, key).clone()
            elif int(state_dict[key]) != int(getattr(self, key)):
                dictionary = self.encoder.dictionary if side == "source" else self.decoder.dictionary
                raise ValueError(
                    f"this checkpoint was trained with a different {side} dictionary than the "
                    f"one loaded now ({len(dictionary)} symbols): use the data directory (and "
                    "dict.*.txt) the checkpoint was trained on"
                )
        if "latent_warmup_state" not in state_dict:  # trained before the automatic warm-up
            state_dict["latent_warmup_state"] = latent_warmup.finished_state()
        check_shared_embeddings(self, state_dict)

    def prepare_for_inference_(self, cfg):
        score_every_sentence(cfg)  # before fairseq-generate builds its batches (docs/design.md, Generation)
        super().prepare_for_inference_(cfg)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.check_checkpoint(state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def add_q_scores(self, extra, target):
        """q's scores into ``extra``: criterions pass the target through the
        model's ``forward`` (not a separate call) so every parameter is used
        inside one forward, as DDP requires."""
        if target is not None and self.inference_network is not None:
            annotations = extra["encoder_states"]
            if self.inference_annotations == "detached":
                annotations = annotations.detach()
            extra["q_scores"] = self.inference_network(target, annotations, extra["encoder_padding_mask"])
        return extra

    def set_num_updates(self, num_updates):
        # KL annealing reads this; fairseq restores it on resume.
        self.num_updates = num_updates
        super().set_num_updates(num_updates)

"""What every encoder-decoder model with a latent alignment head shares
(``varattn_lstm``, ``varattn_transformer``): checkpoint markers, the
inference network in the same forward, the update count for KL annealing,
and the source-logit cache of the factored output layer in beam search."""

import zlib

import torch

from ..compat import score_every_sentence
from ..modules import latent_warmup
from ..modules.alignment_head import OUTPUT_LAYERS
from ..modules.attention_kinds import DIRICHLET_LINK_IDS, KIND_IDS
from ..modules.factored_output import FactoredOutputLayer, SourceLogitsCache
from ..modules.output_base import OUTPUT_ACTIVATIONS
from .inference_network import check_shared_embeddings


def dictionary_checksum(dictionary) -> torch.Tensor:
    """CRC32 of the symbol list: equal sizes do not make equal dictionaries."""
    return torch.tensor(zlib.crc32("\n".join(dictionary.symbols).encode("utf-8")), dtype=torch.long)


class LatentModelMixin:
    """Mixed into a ``FairseqEncoderDecoderModel`` whose decoder is the
    alignment head; call ``init_latent(inference_network)`` in ``__init__``."""

    def init_latent(self, inference_network, inference_annotations="detached"):
        self.inference_network = inference_network
        self.inference_annotations = inference_annotations
        self.num_updates = 0
        # Saved with the weights, so a checkpoint used with another data
        # dir's dictionaries fails loudly instead of translating garbage.
        self.register_buffer("source_dictionary_crc", dictionary_checksum(self.encoder.dictionary))
        self.register_buffer("target_dictionary_crc", dictionary_checksum(self.decoder.dictionary))
        # soft, categorical and dirichlet models have the same parameters, so
        # only this tells a --restore-file of another attention kind apart
        self.register_buffer("attention_kind_id", torch.tensor(KIND_IDS.index(self.decoder.attention_kind)))
        # joint and factored layers have the same parameter names: only this
        # tells them apart (checkpoints from before the option are joint)
        self.register_buffer("output_layer_id", torch.tensor(OUTPUT_LAYERS.index(self.output_layer_kind)))
        # Dirichlet links share every parameter too (from before the option: softplus)
        self.register_buffer(
            "dirichlet_link_id", torch.tensor(DIRICHLET_LINK_IDS.index(self.decoder.dirichlet_concentration))
        )
        # the output activation has no parameters either (from before the option: tanh)
        self.register_buffer(
            "output_activation_id", torch.tensor(OUTPUT_ACTIVATIONS.index(self.decoder.output.activation))
        )
        # where the automatic warm-up of latent criterions stands: saved, so a
        # resumed run continues (or stays out of) it (modules/latent_warmup.py)
        self.register_buffer("latent_warmup_state", latent_warmup.initial_state())

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="checkpoint_best.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub convention: an interface with ``translate`` and ``align`` (fairseq_varattn/hub.py)."""
        from ..hub import from_pretrained

        return from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)

    @property
    def output_layer_kind(self):
        return "factored" if isinstance(self.decoder.output, FactoredOutputLayer) else "joint"

    @property
    def attention_kind(self):
        return self.decoder.attention_kind

    @property
    def alignment_head(self):
        """What latent criterions read: alignment_distribution, output, alignment_topk."""
        return self.decoder

    def check_checkpoint(self, state_dict):
        """Clear errors for a checkpoint of another attention kind or dictionary."""
        if "attention_kind_id" not in state_dict:  # a checkpoint from before the marker
            state_dict["attention_kind_id"] = self.attention_kind_id.clone()
        saved_kind = KIND_IDS[int(state_dict["attention_kind_id"])]
        if saved_kind != self.attention_kind:
            raise ValueError(
                f"this checkpoint holds a --attention {saved_kind} model, but the model being "
                f"loaded has --attention {self.attention_kind}: train with the checkpoint's "
                "attention kind, or start a new run without --restore-file"
            )
        if "output_layer_id" not in state_dict:  # from before --output-layer: joint
            state_dict["output_layer_id"] = torch.tensor(OUTPUT_LAYERS.index("joint"))
        saved_layer = OUTPUT_LAYERS[int(state_dict["output_layer_id"])]
        if saved_layer != self.output_layer_kind:
            raise ValueError(
                f"this checkpoint holds a --output-layer {saved_layer} model, but the model being loaded "
                f"has --output-layer {self.output_layer_kind}: load it with --model-overrides "
                f"\"{{'output_layer': '{saved_layer}'}}\" or train with the checkpoint's output layer"
            )
        if "dirichlet_link_id" not in state_dict:
            state_dict["dirichlet_link_id"] = torch.tensor(DIRICHLET_LINK_IDS.index("softplus"))
        saved_link = DIRICHLET_LINK_IDS[int(state_dict["dirichlet_link_id"])]
        if self.attention_kind == "dirichlet" and saved_link != self.decoder.dirichlet_concentration:
            raise ValueError(
                f"this checkpoint holds a --dirichlet-concentration {saved_link} model, but the model "
                f"being loaded has --dirichlet-concentration {self.decoder.dirichlet_concentration}: load "
                f"it with --model-overrides \"{{'dirichlet_concentration': '{saved_link}'}}\""
            )
        state_dict["dirichlet_link_id"] = self.dirichlet_link_id.clone()  # no link outside Dirichlet
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
        # parameter-free, so the checkpoint's activation is the one the model runs with:
        # a checkpoint from before the option (tanh) loads as trained whatever today's default
        saved = OUTPUT_ACTIVATIONS[int(state_dict.get("output_activation_id", OUTPUT_ACTIVATIONS.index("tanh")))]
        self.decoder.output.activation = saved
        state_dict["output_activation_id"] = torch.tensor(OUTPUT_ACTIVATIONS.index(saved))
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


class SourceCacheMixin:
    """For incremental decoders with an alignment head: what is computed from
    the source alone is the same at every step of a sentence, so beam search
    keeps it instead of recomputing it per step: the scorer's key projection
    (``prepared_keys``; recomputed, it was a third of varattn_lstm's beam
    search with MLP scores) and the factored layer's b = g(x~)
    (``SourceLogitsCache``)."""

    def prepared_keys(self, enc, incremental_state):
        """``self.scorer.prepare(enc)``, once per sentence in incremental decoding."""
        if incremental_state is None:
            return self.scorer.prepare(enc)
        cached = self.get_incremental_state(incremental_state, "prepared_keys")
        if cached is None:
            cached = {"keys": self.scorer.prepare(enc)}
            self.set_incremental_state(incremental_state, "prepared_keys", cached)
        return cached["keys"]

    def cached_output_layer(self, x, extra, incremental_state):
        if incremental_state is not None and self.kind.supports_topk and isinstance(self.output, FactoredOutputLayer):
            cache = self.get_incremental_state(incremental_state, "source_cache")
            if cache is None:
                cache = SourceLogitsCache.build(self.output, extra["encoder_states"])
                self.set_incremental_state(incremental_state, "source_cache", cache)
            extra["source_cache"] = cache
        return self.output_layer(x, extra)

    def reorder_source_cache(self, incremental_state, new_order):
        keys = self.get_incremental_state(incremental_state, "prepared_keys")
        if keys is not None:
            self.set_incremental_state(
                incremental_state, "prepared_keys", {"keys": keys["keys"].index_select(0, new_order)}
            )
        source = self.get_incremental_state(incremental_state, "source_cache")
        if source is not None:
            self.set_incremental_state(incremental_state, "source_cache", SourceLogitsCache.reorder(source, new_order))

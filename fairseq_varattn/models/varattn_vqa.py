"""``varattn_vqa``: answer a question about an image through one latent region.

x = (question, regions r_1..r_K), y = the answer, z = the region the answer
is read from (docs/design.md, "VQA"):

* question encoder: a bidirectional LSTM over word embeddings, h = [h_fwd; h_bwd];
* prior p(z = k | x) = softmax_k(score(h, r_k)) (question-region attention);
* p(y | x, z = k) = softmax(W_o tanh(W_h h + W_r r_k)), an MLP on [h; r_k];
* soft attention: the same layers on the expected region sum_k p(z = k) r_k;
* q(z | x, y) = softmax_k(score_q(tanh(W [h; E(y)]), r_k)): the answer
  tells which region to look at; training only.

The answer head is an ``AlignmentHead`` with the joint output layer, the
same module the translation decoders hold, so every latent criterion trains
this model unchanged: an answer is a one-token target over K "source
positions".  With 13 to 3k answers the vocabulary is not the bottleneck, so
no factored layer here.
"""

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.models.lstm import LSTM, Embedding, Linear

from ..modules.alignment_head import (
    AlignmentHead,
    AlignmentStep,
    add_alignment_args,
    alignment_defaults,
    check_alignment_args,
)
from ..modules.scorer import AttentionScorer

INFERENCE_NETWORKS = ("none", "answer")


class VQAInferenceNetwork(nn.Module):
    def __init__(self, answers, embed_dim, question_dim, region_dim, attention_score, attention_dim):
        super().__init__()
        self.embed_answers = Embedding(len(answers), embed_dim, answers.pad())
        self.combine = Linear(question_dim + embed_dim, question_dim)
        self.scorer = AttentionScorer(question_dim, region_dim, attention_dim, kind=attention_score)

    def forward(self, question_state, answer, regions, region_mask):
        """question_state (B, H), answer (B, 1), regions (B, K, C) -> scores (B, 1, K)."""
        g = torch.tanh(self.combine(torch.cat([question_state, self.embed_answers(answer[:, 0])], -1)))
        return self.scorer(g.unsqueeze(1), self.scorer.prepare(regions), region_mask)


@register_model("varattn_vqa")
class VarAttnVQAModel(BaseFairseqModel):
    def __init__(self, args, words, answers):
        super().__init__()
        self.embed_words = Embedding(len(words), args.embed_dim, words.pad())
        self.padding_idx = words.pad()
        self.question_lstm = LSTM(args.embed_dim, args.question_hidden_size, bidirectional=True, batch_first=True)
        question_dim = 2 * args.question_hidden_size
        self.region_proj = Linear(args.region_feature_dim, args.region_dim)
        self.dropout = nn.Dropout(args.dropout)
        self.head = AlignmentHead.build(args, question_dim, args.region_dim, args.mlp_dim, len(answers), args.dropout)
        self.inference_network = None
        self.inference_annotations = args.inference_annotations
        if args.inference_network == "answer":
            self.inference_network = VQAInferenceNetwork(
                answers, args.embed_dim, question_dim, args.region_dim, args.inference_score, args.attention_dim
            )

    @staticmethod
    def add_args(parser):
        # fmt: off
        parser.add_argument('--embed-dim', type=int, metavar='N', help='question word embedding size')
        parser.add_argument('--question-hidden-size', type=int, metavar='N',
                            help='question BiLSTM units per direction')
        parser.add_argument('--region-feature-dim', type=int, metavar='N',
                            help='D of the K x D region features (default: read from the data)')
        parser.add_argument('--region-dim', type=int, metavar='N',
                            help='size the region features are projected to')
        parser.add_argument('--mlp-dim', type=int, metavar='N', help='hidden size of the answer MLP')
        add_alignment_args(parser, INFERENCE_NETWORKS, output_layers=("joint",))
        parser.add_argument('--dropout', type=float, metavar='D', help='dropout probability')
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        if args.region_feature_dim is None:
            args.region_feature_dim = task.feature_dim
        check_alignment_args(args)
        return cls(args, task.source_dictionary, task.target_dictionary)

    @property
    def attention_kind(self):
        return self.head.attention_kind

    @property
    def alignment_head(self):
        return self.head

    def encode_question(self, question, question_lengths):
        emb = self.dropout(self.embed_words(question))
        packed = nn.utils.rnn.pack_padded_sequence(emb, question_lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.question_lstm(packed)
        return self.dropout(torch.cat([h[-2], h[-1]], dim=-1))  # B x 2H

    def forward(
        self, question, question_lengths, regions, region_mask, target=None, features_only: bool = False, **kwargs
    ):
        h = self.encode_question(question, question_lengths)
        r = self.dropout(torch.tanh(self.region_proj(regions)))
        scores, weights, context = self.head.attend(h.unsqueeze(1), self.head.prepared_keys(r), r, region_mask)
        features = self.dropout(self.head.output.attentional(h.unsqueeze(1), context))
        step = AlignmentStep(scores, weights, h.unsqueeze(1), context, r, region_mask)
        if target is not None and self.inference_network is not None:
            regions = r.detach() if self.inference_annotations == "detached" else r
            step.q_scores = self.inference_network(h, target, regions, region_mask)
        if features_only:
            return features, step.extra()
        return self.head.decoder_output(features, step, step.extra())

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.head.normalized_output(net_output, log_probs)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        # checkpoints from before the head had markers: the head of their options
        self.head.check_checkpoint(state_dict, "head.")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def max_positions(self):
        return None


@register_model_architecture("varattn_vqa", "varattn_vqa")
def base_architecture(args):
    alignment_defaults(args)
    args.embed_dim = getattr(args, "embed_dim", 64)
    args.question_hidden_size = getattr(args, "question_hidden_size", 64)
    args.region_feature_dim = getattr(args, "region_feature_dim", None)
    args.region_dim = getattr(args, "region_dim", 128)
    args.mlp_dim = getattr(args, "mlp_dim", 128)
    args.dropout = getattr(args, "dropout", 0.1)

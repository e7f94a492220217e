"""Layer constructors with fairseq's LSTM initialisation (uniform +-0.1)."""

import torch.nn as nn


def _uniform_(module, scale=0.1):
    for name, param in module.named_parameters():
        if "weight" in name or "bias" in name:
            param.data.uniform_(-scale, scale)
    return module


def Linear(in_features, out_features, bias=True):
    return _uniform_(nn.Linear(in_features, out_features, bias=bias))


def Embedding(num_embeddings, embedding_dim, padding_idx):
    m = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
    nn.init.uniform_(m.weight, -0.1, 0.1)
    nn.init.constant_(m.weight[padding_idx], 0)
    return m


def LSTM(input_size, hidden_size, **kwargs):
    return _uniform_(nn.LSTM(input_size, hidden_size, **kwargs))


def LSTMCell(input_size, hidden_size, **kwargs):
    return _uniform_(nn.LSTMCell(input_size, hidden_size, **kwargs))

"""Small builders shared by the tests (no trainer, no data files)."""

import argparse
import os
import re
import subprocess
import sys

import forkrun
import torch
from fairseq.data import Dictionary

import fairseq_varattn  # noqa: F401  (registers everything)
from fairseq_varattn.models.varattn_lstm import VarAttnLSTMModel, varattn_lstm_tiny
from fairseq_varattn.models.varattn_transformer import VarAttnTransformerModel, varattn_transformer_tiny
from fairseq_varattn.modules.lexical import spread_table
from fairseq_varattn.modules.output_layer import SHORTLIST_LAYERS
from varattn_tools.experiments import validate_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_varattn")  # --user-dir


def example_module(name):
    """examples/translation/NAME.py, a script rather than a package module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", "translation", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PYTHON = sys.executable

# a few updates of the tiny LSTM preset on the shipped data: the command-line tests' training options
TINY_TRAIN = [
    "--arch",
    "varattn_lstm_tiny",
    "--optimizer",
    "adam",
    "--lr",
    "0.005",
    "--clip-norm",
    "5",
    "--max-tokens",
    "1500",
    "--seed",
    "3",
    "--num-workers",
    "0",
    "--required-batch-size-multiple",
    "1",
]


class FakeTask:
    def __init__(self, src_dict, tgt_dict):
        self.source_dictionary = src_dict
        self.target_dictionary = tgt_dict


def make_dictionary(n_words=13):
    d = Dictionary()
    for i in range(n_words):
        d.add_symbol(f"w{i}")
    return d


ARCHS = ["lstm", "transformer"]


def build_model(attention="categorical", inference_network="none", seed=0, dropout=0.0, arch="lstm", **overrides):
    """A tiny varattn_lstm (or varattn_transformer) in eval mode, and its dictionary."""
    torch.manual_seed(seed)
    d = make_dictionary()
    # the paper's layer unless a test asks for another (the architectures' own
    # defaults have tests of their own in test_model.py)
    overrides.setdefault("output_layer", "joint")
    overrides.setdefault("output_activation", "tanh")
    if overrides["output_layer"] in SHORTLIST_LAYERS:
        overrides.setdefault("shortlist_size", 4)  # of 13 words
    if arch == "lstm":
        args = argparse.Namespace(
            attention=attention,
            inference_network=inference_network,
            dropout=dropout,
            encoder_embed_dim=8,
            encoder_hidden_size=6,
            decoder_embed_dim=8,
            decoder_hidden_size=10,
            decoder_out_embed_dim=7,
            **overrides,
        )
        varattn_lstm_tiny(args)
        model = VarAttnLSTMModel.build_model(args, FakeTask(d, d))
    else:
        args = argparse.Namespace(
            attention=attention,
            inference_network=inference_network,
            dropout=dropout,
            encoder_embed_dim=8,
            encoder_ffn_embed_dim=16,
            encoder_attention_heads=2,
            decoder_embed_dim=8,
            decoder_ffn_embed_dim=16,
            decoder_attention_heads=2,
            inference_hidden_size=6,
            **overrides,
        )
        varattn_transformer_tiny(args)
        model = VarAttnTransformerModel.build_model(args, FakeTask(d, d))
    head = model.alignment_head
    if head.output_layer_kind in SHORTLIST_LAYERS:  # no corpus here: a stand-in table
        head.output.set_table(spread_table(len(d), head.output.shortlist.size(1), d))
    model.eval()
    return model, d


def random_batch(d, bsz=3, src_len=5, tgt_len=4, seed=1):
    """Left-padded sources of varied length, right-padded targets, as fairseq batches them."""
    g = torch.Generator().manual_seed(seed)
    nspecial = d.nspecial
    src_lengths = torch.tensor([src_len - (i % 2) * 2 for i in range(bsz)])
    src = torch.full((bsz, src_len), d.pad())
    for b, n in enumerate(src_lengths.tolist()):
        src[b, src_len - n :] = torch.randint(nspecial, len(d), (n,), generator=g)
        src[b, -1] = d.eos()
    order = src_lengths.argsort(descending=True)
    src, src_lengths = src[order], src_lengths[order]
    tgt = torch.randint(nspecial, len(d), (bsz, tgt_len), generator=g)
    tgt[:, -1] = d.eos()
    tgt[-1, -1] = d.pad()  # one padded target position
    tgt[-1, -2] = d.eos()
    prev = torch.cat([torch.full((bsz, 1), d.eos()), tgt[:, :-1]], dim=1)
    prev[-1, -1] = d.pad()
    return {
        "net_input": {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev},
        "target": tgt,
        "ntokens": int(tgt.ne(d.pad()).sum()),
        "id": torch.arange(bsz),
    }


def cli_env(**extra):
    """The environment the suite runs command lines in: one thread each."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def run_fresh(module, argv, env, cwd, timeout):
    """``python -m MODULE ARGV`` in a fresh interpreter."""
    return subprocess.run(
        [PYTHON, "-m", module, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_cli(args, timeout=900, check=True, env_extra=None):
    """Run a console module (e.g. fairseq_cli.train) in a process of its own; returns
    CompletedProcess. fairseq's own command lines are forked from a process that has
    imported fairseq already (forkrun.py), the others start a fresh interpreter."""
    env = cli_env(**(env_extra or {}))
    module, argv = str(args[0]), [str(a) for a in args[1:]]
    if forkrun.enabled(module):
        proc = forkrun.run(module, argv, env, REPO, timeout)
    else:
        proc = run_fresh(module, argv, env, REPO, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def validate(data_dir, ckpt, *options, max_tokens=1500):
    """fairseq-validate of ``ckpt`` on every sentence of the valid split, as
    the experiments run it, in fairseq's simple log format (valid_metric reads
    that); its log."""
    command = validate_command(data_dir, USER_DIR, ckpt, "valid", max_tokens, 1)[2:]
    proc = run_cli([*command, "--log-format", "simple", *options])
    return proc.stdout + proc.stderr


def valid_metric(log, key):
    """``key`` of the last validation in a fairseq log."""
    values = re.findall(rf"valid on 'valid' subset \|.*? {key} ([0-9.]+)", log)
    assert values, log[-2000:]
    return float(values[-1])


def variant_criterion(name, task, **extra):
    """The criterion of a named variant (varattn_tools.variants), plus test-specific options."""
    from fairseq.criterions import CRITERION_REGISTRY

    from varattn_tools import variants

    variant = variants.get(name)
    if variant.criterion == "cross_entropy":
        from fairseq.criterions.cross_entropy import CrossEntropyCriterion

        return CrossEntropyCriterion(task, sentence_avg=False)
    return CRITERION_REGISTRY[variant.criterion].build(task, **{**variants.criterion_options(name), **extra})


def make_criterion(criterion_cls, task, **options):
    """A criterion without fairseq's option parsing: ours by name, fairseq's cross_entropy as is."""
    if hasattr(criterion_cls, "build"):
        return criterion_cls.build(task, **options)
    return criterion_cls(task, sentence_avg=False, **options)


def shortlist_model(arch, output_layer, seed=0):
    """A tiny categorical model with a shortlist layer (``output_layer``) whose
    table holds 4 random distinct candidates per source word, and W_o
    sharpened so that the candidates' boosts matter."""
    model, d = build_model("categorical", arch=arch, seed=seed, output_layer=output_layer, shortlist_size=4)
    layer = model.alignment_head.output
    g = torch.Generator().manual_seed(seed)
    table = torch.stack([torch.randperm(len(d) - 4, generator=g)[:4] + 4 for _ in range(len(d))])
    table[d.pad()] = d.pad()
    layer.set_table(table)
    with torch.no_grad():
        layer.fc_out.weight.mul_(5)
    return model, d

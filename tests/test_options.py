"""varattn-options and docs/options.md list every option the plugin registers,
with the defaults fairseq-train actually applies."""

import argparse
import os

import pytest
from helpers import REPO

import fairseq_varattn  # noqa: F401  (registration)
from varattn_tools import options as varattn_options

DOC = os.path.join(REPO, "docs", "options.md")


def registered_flags():
    """Every option string of the plugin's models, criterions and tasks, read from fairseq's registries."""
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.models import MODEL_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    flags = {}
    for name, cls in MODEL_REGISTRY.items():
        if name.startswith("varattn_"):
            parser = argparse.ArgumentParser(add_help=False)
            cls.add_args(parser)
            flags[name] = parser
    for registry in (CRITERION_DATACLASS_REGISTRY, TASK_DATACLASS_REGISTRY):
        for name, dc in registry.items():
            if name.startswith("varattn_"):
                parser = argparse.ArgumentParser(add_help=False)
                gen_parser_from_dataclass(parser, dc())
                flags[name] = parser
    out = {name: {a.option_strings[-1] for a in p._actions if a.option_strings} for name, p in flags.items()}
    assert {"varattn_lstm", "varattn_transformer", "varattn_vqa", "varattn_elbo", "varattn_vqa"} <= set(out)
    return out


def test_every_registered_option_is_in_the_command_and_the_reference(capsys):
    varattn_options.main([])
    shown = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    --")}
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    missing = {
        name: sorted(f for f in flags if f not in shown or f"`{f}`" not in doc)
        for name, flags in registered_flags().items()
    }
    assert not any(missing.values()), missing
    # the options the issue found documented nowhere
    for flag in (
        "--inference-embed-dim",
        "--inference-hidden-size",
        "--inference-layers",
        "--region-feature-dim",
        "--kl-weight",
        "--output-layer",
        "--attention",
    ):
        assert f"`{flag}`" in doc


def test_the_reference_is_current():
    with open(DOC, encoding="utf-8") as f:
        assert f.read() == varattn_options.markdown_reference(), (
            "docs/options.md is out of date: varattn-options --markdown > docs/options.md"
        )


@pytest.mark.parametrize(
    "arch", ["varattn_lstm", "varattn_lstm_iwslt_de_en", "varattn_transformer", "varattn_transformer_tiny"]
)
@pytest.mark.parametrize("attention", ["soft", "categorical"])
def test_shown_defaults_are_what_fairseq_train_parses(tmp_path, arch, attention):
    """Parse a fairseq-train command line the way fairseq-train does and compare every
    plugin option's value with the default the reference shows for that arch."""
    from fairseq import options

    for lang in ("de", "en"):
        (tmp_path / f"dict.{lang}.txt").write_text("")
    argv = [
        str(tmp_path),
        "--user-dir",
        os.path.join(REPO, "fairseq_varattn"),
        "--arch",
        arch,
        "--attention",
        attention,
        "--criterion",
        "varattn_marginal",
        "--max-tokens",
        "100",
    ]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    model = varattn_options.sections(arch=arch)[0]
    checked = 0
    for option in model.options:
        shown = option.defaults[arch]
        if option.dest == "attention" or (option.origin != "plugin" and not hasattr(args, option.dest)):
            continue  # fairseq keeps a few nested Transformer options under other names
        if isinstance(shown, str) and f"{attention}: " in shown:  # depends on --attention
            shown = dict(part.split(": ") for part in shown.split("; "))[attention]
            assert str(getattr(args, option.dest)) == shown, option.flag
        else:
            assert getattr(args, option.dest) == shown, option.flag
        checked += 1
    assert checked > 20
    expected_layer = "factored" if attention == "categorical" or "transformer" in arch else "joint"
    assert args.output_layer == expected_layer


def test_one_section_and_unknown_names(capsys):
    varattn_options.main(["--arch", "varattn_transformer"])
    text = capsys.readouterr().out
    assert text.startswith("--arch varattn_transformer")
    assert "options of fairseq's TransformerModel:" in text
    assert "--attention-score {general,mlp,dot}" in text and "(default: dot)" in text
    with pytest.raises(SystemExit):
        varattn_options.main(["--arch", "lstm"])
    err = capsys.readouterr().err
    assert "varattn_lstm" in err and "varattn_transformer_tiny" in err


def test_variant_and_row_print_options_fairseq_parses(capsys, tmp_path):
    """--variant prints a variant's options; --row a results table's row with its
    preset, shell-quoted (the Transformer's "--adam-betas (0.9,0.98)" needs it),
    and refuses a suffix that selects nothing instead of training the plain variant."""
    import shlex

    from fairseq import options as fairseq_options

    from varattn_tools import rows, variants

    for lang in ("de", "en"):  # parsing reads nothing but that the dictionaries are there
        (tmp_path / f"dict.{lang}.txt").write_text("")
    varattn_options.main(["--variant", "elbo-enum"])
    assert capsys.readouterr().out.split() == variants.train_options("elbo-enum")
    for name in ("transformer-elbo-enum", "rws-warmup", "soft-factored", "transformer"):
        varattn_options.main(["--row", name])
        printed = shlex.split(capsys.readouterr().out)
        assert printed == rows.train_options(name)
        parser = fairseq_options.get_training_parser()
        args = fairseq_options.parse_args_and_arch(parser, [str(tmp_path), *printed])
        assert args.max_epoch == rows.MAX_EPOCH and args.patience == rows.PATIENCE, name
    assert "--marginal-warmup-updates" in rows.train_options("rws-warmup")
    assert rows.output_layer("soft-factored") == "factored" and rows.output_layer("soft") == "joint"
    for bad in ("elbo-enum-warmup", "marginal-factored", "transformer-soft-factored", "nonsense"):
        with pytest.raises(SystemExit):
            varattn_options.main(["--row", bad])
        assert "unknown row" in capsys.readouterr().err, bad


def test_row_names_say_what_the_row_trains(tmp_path):
    """One grammar for every results table and benchmark (varattn_tools/rows.py):
    the suffixes become the options fairseq parses, a suffix that selects the
    family's default or nothing is refused."""
    from fairseq import options as fairseq_options

    from varattn_tools import rows

    for lang in ("de", "en"):
        (tmp_path / f"dict.{lang}.txt").write_text("")
    expect = {
        # name: (output layer, --factored-source-rank, --alignment-topk, latent)
        "soft": ("joint", 0, 0, False),
        "soft-factored": ("factored", 0, 0, False),
        "marginal": ("factored", 0, 0, True),
        "marginal-joint": ("joint", 0, 0, True),
        "elbo-enum-r64": ("factored", 64, 0, True),
        "marginal-joint-top5": ("joint", 0, 5, True),
        "transformer-soft": ("factored", 0, 0, False),
        "transformer-soft-joint": ("joint", 0, 0, False),
        "transformer-marginal-r32": ("factored", 32, 0, True),
        "elbo-enum-shortlist-qbilinear": ("shortlist", 0, 0, True),
        "marginal-shortlist128": ("shortlist", 0, 0, True),
        "transformer-elbo-enum-sentence": ("sentence-shortlist", 0, 0, True),
        "marginal-sentence64": ("sentence-shortlist", 0, 0, True),
        "elbo-enum-shortlist-qattn-qbilinear": ("shortlist", 0, 0, True),
        "transformer-elbo-enum-qattn": ("factored", 0, 0, True),
    }
    for name, (layer, rank, topk, latent) in expect.items():
        parser = fairseq_options.get_training_parser()
        args = fairseq_options.parse_args_and_arch(parser, [str(tmp_path), *rows.train_options(name)])
        assert (args.output_layer, args.factored_source_rank, args.alignment_topk) == (layer, rank, topk), name
        size = 128 if name.endswith(("shortlist128", "-sentence")) else 64 if name.endswith("sentence64") else 32
        assert args.shortlist_size == size, name
        assert rows.is_latent(name) == latent and rows.output_layer(name).startswith(layer), name
        assert args.inference_score == ("general" if name.endswith("-qbilinear") else args.attention_score), name
        needs_q = rows.get_variant(rows.parse(name).variant).needs_q
        q = "none" if not needs_q else "transformer" if "-qattn" in name else "birnn"
        assert args.inference_network == q, name
    for bad in (
        "soft-joint",
        "marginal-factored",
        "transformer-marginal-factored",
        "soft-r64",
        "dirichlet-top5",
        "marginal-qbilinear",
        "hard-enum-qattn",
        "elbo-enum-qattn-qattn",
        "marginal-shortlist64-shortlist",
        "marginal-sentence-shortlist",
    ):
        with pytest.raises(KeyError):
            rows.parse(bad)
    assert rows.parse("lstm").variant is None and rows.parse("transformer").transformer

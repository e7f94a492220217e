"""Every option of the plugin's architectures, criterions and tasks, with defaults and help.

    varattn-options                            # everything
    varattn-options --arch varattn_transformer # one architecture (its defaults)
    varattn-options --criterion varattn_elbo   # one criterion
    varattn-options --variant elbo-enum        # fairseq-train options of a named variant
    varattn-options --row transformer-elbo-enum # ... of a results table's row, preset included
    varattn-options --markdown > docs/options.md

``fairseq-train --arch A --criterion C --help`` cannot show these: fairseq
prints its help before it adds an architecture's or criterion's options.
This command builds the same parsers fairseq builds (the models' ``add_args``,
the criterions' and tasks' dataclasses) and applies each architecture's
defaults, so what it prints is what ``fairseq-train`` accepts.
``docs/options.md`` is its ``--markdown`` output (a test keeps it current).
"""

import argparse
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

PREFIX = "varattn_"


@dataclass
class Option:
    flag: str  # --attention
    dest: str  # attention
    help: str
    choices: Optional[List[str]]
    defaults: Dict[str, object]  # arch (or "") -> default
    origin: str  # "plugin" or the fairseq class that declares it


@dataclass
class Section:
    kind: str  # "arch", "criterion" or "task"
    name: str  # the model, criterion or task name
    columns: List[str]  # architectures (models) or [name]
    options: List[Option]


def _registries():
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, CRITERION_REGISTRY
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_INV_REGISTRY, MODEL_REGISTRY
    from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

    import fairseq_varattn  # noqa: F401  (registers the plugin)

    return (
        MODEL_REGISTRY,
        ARCH_MODEL_INV_REGISTRY,
        ARCH_CONFIG_REGISTRY,
        CRITERION_REGISTRY,
        CRITERION_DATACLASS_REGISTRY,
        TASK_REGISTRY,
        TASK_DATACLASS_REGISTRY,
    )


def _actions(parser) -> List[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _parser_of(add_args) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_args(parser)
    return parser


def _dataclass_parser(dc) -> argparse.ArgumentParser:
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    gen_parser_from_dataclass(parser, dc())
    return parser


def _inherited_dests(model_class) -> Dict[str, str]:
    """Options a model takes from the fairseq model it extends: dest -> that class's name."""
    from fairseq.models import BaseFairseqModel

    for base in model_class.__mro__[1:]:
        if base.__module__.startswith("fairseq.") and "add_args" in vars(base) and base is not BaseFairseqModel:
            return {a.dest: base.__name__ for a in _actions(_parser_of(base.add_args))}
    return {}


def _arch_defaults(parser, arch_fn, **given) -> Dict[str, object]:
    # fairseq parses the command line, then the architecture function fills
    # what was left unset (getattr(args, name, default)): unset means absent here
    parsed = vars(parser.parse_args([]))
    args = argparse.Namespace(**{k: v for k, v in parsed.items() if v is not None}, **given)
    arch_fn(args)
    return vars(args)


def _defaults_of(parser, arch_fn):
    """dest -> an architecture's default; where it depends on --attention (the
    output layer's does), "KIND: VALUE; ..." over the --attention kinds."""
    plain = _arch_defaults(parser, arch_fn)
    attention = next((a for a in _actions(parser) if a.dest == "attention"), None)
    if attention is None:
        return plain
    by_kind = {kind: _arch_defaults(parser, arch_fn, attention=kind) for kind in attention.choices}
    out = {}
    for dest in plain:
        values = {kind: defaults.get(dest) for kind, defaults in by_kind.items()}
        if dest == "attention" or len({repr(v) for v in values.values()}) == 1:
            out[dest] = plain[dest] if dest == "attention" else next(iter(values.values()))
        else:
            out[dest] = "; ".join(f"{k}: {_value(v)}" for k, v in values.items())
    return out


def _help(action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    return " ".join(text.split())


def model_section(name: str) -> Section:
    models, arch_inv, arch_cfg = _registries()[:3]
    cls = models[name]
    parser = _parser_of(cls.add_args)
    archs = sorted(arch_inv[name], key=lambda a: (a != name, a))
    inherited = _inherited_dests(cls)
    defaults = {arch: _defaults_of(parser, arch_cfg[arch]) for arch in archs}
    options = [
        Option(
            a.option_strings[-1],
            a.dest,
            _help(a),
            [str(c) for c in a.choices] if a.choices else None,
            {arch: defaults[arch].get(a.dest) for arch in archs},
            inherited.get(a.dest, "plugin"),
        )
        for a in _actions(parser)
    ]
    return Section("arch", name, archs, options)


def dataclass_section(kind: str, name: str, dc) -> Section:
    parser = _dataclass_parser(dc)
    options = [
        Option(
            a.option_strings[-1],
            a.dest,
            _help(a),
            [str(c) for c in a.choices] if a.choices else None,
            {name: a.default},
            "plugin",
        )
        for a in _actions(parser)
    ]
    return Section(kind, name, [name], options)


def sections(arch: Optional[str] = None, criterion: Optional[str] = None, task: Optional[str] = None) -> List[Section]:
    models, arch_inv, _, criterions, criterion_dcs, tasks, task_dcs = _registries()
    everything = arch is None and criterion is None and task is None
    out = []
    model_names = sorted(m for m in models if m.startswith(PREFIX))
    if arch is not None:
        owner = next((m for m in model_names if arch in arch_inv[m]), None)
        if owner is None:
            raise KeyError(f"no architecture {arch!r}; the plugin's: {', '.join(all_archs())}")
        section = model_section(owner)
        section.columns = [arch]
        out.append(section)
    elif everything:
        out.extend(model_section(m) for m in model_names)
    for wanted, registry, dcs, kind in (
        (criterion, criterions, criterion_dcs, "criterion"),
        (task, tasks, task_dcs, "task"),
    ):
        names = sorted(n for n in registry if n.startswith(PREFIX))
        if wanted is not None and wanted not in names:
            raise KeyError(f"no {kind} {wanted!r}; the plugin's: {', '.join(names)}")
        for n in names if everything else [wanted] if wanted else []:
            out.append(dataclass_section(kind, n, dcs[n]))
    return out


def all_archs() -> List[str]:
    models, arch_inv = _registries()[:2]
    return sorted(a for m in models if m.startswith(PREFIX) for a in arch_inv[m])


def _value(v) -> str:
    return "(none)" if v is None or v == "" else str(v)


def as_text(section: Section) -> str:
    flag = {"arch": "--arch", "criterion": "--criterion", "task": "--task"}[section.kind]
    lines = [f"{flag} {', '.join(section.columns)}" + (f" (model {section.name})" if section.kind == "arch" else "")]
    for origin in ["plugin"] + sorted({o.origin for o in section.options} - {"plugin"}):
        group = [o for o in section.options if o.origin == origin]
        if not group:
            continue
        lines.append("  options of the plugin:" if origin == "plugin" else f"  options of fairseq's {origin}:")
        for o in group:
            values = "{" + ",".join(o.choices) + "}" if o.choices else ""
            defaults = {_value(o.defaults[c]) for c in section.columns}
            default = (
                _value(o.defaults[section.columns[0]])
                if len(defaults) == 1
                else "; ".join(f"{c}: {_value(o.defaults[c])}" for c in section.columns)
            )
            lines.append(f"    {o.flag} {values}".rstrip())
            lines.append(f"        {o.help} (default: {default})" if o.help else f"        (default: {default})")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def as_markdown(section: Section) -> str:
    title = {"arch": "Model", "criterion": "Criterion", "task": "Task"}[section.kind]
    lines = [f"### {title} `{section.name}`", ""]
    if section.kind == "arch":
        lines += [f"Architectures: {', '.join(f'`{c}`' for c in section.columns)}.", ""]
    header = ["option"] + ([f"`{c}`" for c in section.columns] if section.kind == "arch" else ["default"])
    for origin in ["plugin"] + sorted({o.origin for o in section.options} - {"plugin"}):
        group = [o for o in section.options if o.origin == origin]
        if not group:
            continue
        if origin != "plugin":
            lines += [f"Options of fairseq's `{origin}` (the architecture's defaults):", ""]
        lines += ["| " + " | ".join(header + ["help"]) + " |", "|" + "---|" * (len(header) + 1)]
        for o in group:
            choices = f" ({', '.join(o.choices)})" if o.choices else ""
            cells = [f"`{o.flag}`"] + [f"`{_value(o.defaults[c])}`" for c in section.columns] + [o.help + choices]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_reference() -> str:
    parts = [
        "# Options",
        "",
        "Every option the plugin's architectures, criterions and tasks take, with each",
        "architecture's defaults.  Generated by `varattn-options --markdown` (do not edit:",
        "`tests/test_options.py` checks that this file is current).  `fairseq-train --help`",
        "does not list them: fairseq prints its help before it adds an architecture's options.",
        "",
    ]
    for kind, heading in (("arch", "Architectures"), ("criterion", "Criterions"), ("task", "Tasks")):
        parts += [f"## {heading}", ""]
        parts += [as_markdown(s) for s in sections() if s.kind == kind]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="one architecture (e.g. varattn_lstm)")
    parser.add_argument("--criterion", help="one criterion (e.g. varattn_elbo)")
    parser.add_argument("--task", help="one task (varattn_vqa)")
    parser.add_argument(
        "--variant",
        help="print the fairseq-train options of a named variant of the paper's "
        "comparison (varattn_tools/variants.py), e.g. elbo-enum",
    )
    parser.add_argument(
        "--row",
        help="print the fairseq-train options of a results table's row (varattn_tools/rows.py: "
        "[transformer-]VARIANT[-factored|-warmup|-centred]), preset included, e.g. transformer-elbo-enum",
    )
    parser.add_argument("--markdown", action="store_true", help="the reference in docs/options.md")
    opts = parser.parse_args(argv)
    if opts.row:
        import shlex

        from .rows import train_options as row_options

        try:
            print(shlex.join(row_options(opts.row)))
        except KeyError as e:
            parser.error(f"unknown row: {e.args[0]}")
        return
    if opts.variant:
        from .variants import VARIANTS, train_options

        if opts.variant not in VARIANTS:
            parser.error(f"unknown variant {opts.variant!r}; choose from {', '.join(VARIANTS)}")
        print(" ".join(train_options(opts.variant)))
        return
    if opts.markdown:
        if opts.arch or opts.criterion or opts.task:
            parser.error("--markdown writes the whole reference: leave out --arch/--criterion/--task")
        sys.stdout.write(markdown_reference())
        return
    try:
        chosen = sections(opts.arch, opts.criterion, opts.task)
    except KeyError as e:
        parser.error(e.args[0])
    print("\n\n".join(as_text(s) for s in chosen))


if __name__ == "__main__":
    main()

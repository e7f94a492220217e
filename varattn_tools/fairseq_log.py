"""fairseq's logs as records: every statistics line (``train_inner``, an
epoch's ``train``, a subset's validation) with its time, tag, epoch and
values, and the plain messages the experiment scripts act on.

The scripts run fairseq with ``--log-format json``, whose statistics lines
are JSON objects.  Logs of runs started before that are in fairseq's
``simple`` format, and a run resumed since holds both; each line is read in
the format it was written in, so one reader serves old, new and mixed logs.
"""

import dataclasses
import datetime
import json
from typing import Dict, Iterator, Optional

STAMP = "%Y-%m-%d %H:%M:%S"


@dataclasses.dataclass
class Line:
    time: datetime.datetime
    level: str
    logger: str
    message: str


@dataclasses.dataclass
class Stats:
    """One statistics line.  ``tag`` is fairseq's progress tag: ``train_inner``
    (every --log-interval updates), ``train`` (an epoch's average) or the
    validated subset's name; ``values`` drop the tag's prefix that the json
    format gives them (``valid_ppl`` is ``ppl``), numbers as floats."""

    time: datetime.datetime
    tag: str
    epoch: Optional[int]
    values: Dict[str, object]


def lines(text: str) -> Iterator[Line]:
    """The log's lines from fairseq's loggers ("TIME | LEVEL | LOGGER | message");
    other output (warnings, tracebacks, our own prints) is skipped."""
    for raw in text.splitlines():
        parts = raw.split(" | ", 3)
        if len(parts) < 4:
            continue
        try:
            time = datetime.datetime.strptime(parts[0], STAMP)
        except ValueError:
            continue
        yield Line(time, parts[1], parts[2], parts[3])


def _value(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _from_json(line: Line) -> Optional[Stats]:
    if not line.message.startswith("{"):
        return None
    try:
        found = json.loads(line.message)
    except json.JSONDecodeError:  # fairseq_cli.train's config is a Python repr, not JSON
        return None
    if not isinstance(found, dict):
        return None
    epoch = found.pop("epoch", None)
    found.pop("update", None)
    prefix = line.logger + "_"
    values = {(k[len(prefix) :] if k.startswith(prefix) else k): _value(v) for k, v in found.items()}
    return Stats(line.time, line.logger, None if epoch is None else int(epoch), values)


def _from_simple(line: Line) -> Optional[Stats]:
    """``epoch 003 | valid on 'valid' subset | loss 2.3 | ppl 4.9`` (an epoch's
    or a subset's statistics) or ``epoch 002:  18 / 182 loss=7.1, ppl=138.4``
    (every --log-interval updates)."""
    epoch, values = None, {}
    head, sep, pairs = line.message.partition("=")
    if sep and " | " not in line.message:
        words = head.split()
        if words[:1] == ["epoch"] and len(words) > 1:
            epoch = int(words[1].rstrip(":"))
        items = (words[-1] + sep + pairs).split(", ")
        for item in items:
            key, _, value = item.partition("=")
            values[key] = _value(value)
    else:
        for part in line.message.split(" | "):
            key, _, value = part.partition(" ")
            if key == "epoch" and value.isdigit():
                epoch = int(value)
            elif value and " " not in value:
                values[key] = _value(value)
    return Stats(line.time, line.logger, epoch, values) if values else None


def stats(text: str, tag: Optional[str] = None) -> Iterator[Stats]:
    """Every statistics line (of ``tag`` only, if given), in order.  fairseq
    names a statistics line's logger after its tag; its own modules' loggers
    are dotted (``fairseq.trainer``), and their messages are not statistics."""
    for line in lines(text):
        if "." in line.logger or (tag is not None and line.logger != tag):
            continue
        found = _from_json(line) or _from_simple(line)
        if found is not None:
            yield found


def validations(text: str, subset: str = "valid") -> Dict[int, Stats]:
    """{epoch: its validation} of a training log, in epoch order; an epoch
    validated twice (a resume that repeated it) keeps its last line."""
    found = {s.epoch: s for s in stats(text, subset) if s.epoch is not None}
    return dict(sorted(found.items()))


def last(text: str, tag: str) -> Optional[Stats]:
    """The last statistics line of ``tag`` (e.g. fairseq-validate's subset), or None."""
    found = None
    for found in stats(text, tag):
        pass
    return found


def messages(text: str, logger: str) -> Iterator[Line]:
    """The lines one of fairseq's module loggers wrote (``fairseq_cli.train``)."""
    return (line for line in lines(text) if line.logger == logger)


def best_checkpoint_epochs(text: str):
    """The epochs whose checkpoint was saved as checkpoint_best.pt, in order
    ("Saved checkpoint .../checkpoint_best.pt (epoch 21 @ 3822 updates, ...")."""
    marker = "checkpoint_best.pt (epoch "
    return [
        int(line.message.partition(marker)[2].split(" ", 1)[0])
        for line in messages(text, "fairseq.checkpoint_utils")
        if line.message.startswith("Saved checkpoint") and marker in line.message
    ]


def best_epoch(text: str, key: str = "ppl") -> int:
    """The epoch checkpoint_best.pt holds.  fairseq rounds the logged metric
    to 2 decimals and saves checkpoint_best.pt on ties too, so it is the last
    epoch saved under that name, not the first with the lowest logged value;
    a log without save messages falls back to that lowest value."""
    saved = best_checkpoint_epochs(text)
    if saved:
        return saved[-1]
    valid = validations(text)
    return min(valid, key=lambda e: valid[e].values[key])


def training_status(text: str) -> str:
    """How a (possibly resumed, appended-to) fairseq-train log ends:
    "training" (not finished, or resumed after finishing), "patience" (early
    stopping) or "cap" (stopped by --max-epoch or --max-update)."""
    parts = text.split("done training in")
    if len(parts) == 1 or "begin training epoch" in parts[-1]:
        return "training"
    return "patience" if "early stop since" in parts[-2] else "cap"

"""Choices and early checks shared by the ``i2p`` commands.

Why enums: typer turns an ``enum.Enum`` annotation into a choice that it checks while parsing
(``--mask sal`` fails before anything is imported or written) and lists in ``--help``
(``[saliency|random]``). ``str`` subclasses keep each member equal to its text, so code below
the CLI that compares with ``"saliency"`` keeps working; :func:`value` unwraps a member for the
layers that store or print it. Enums rather than ``typing.Literal`` because every typer release
the package supports handles them.

Why callbacks for paths: an option that names a file or directory is checked as the command
line is parsed, so a typo costs one line and exit code 2 instead of minutes of start-up and a
half-written output directory. URLs (``scheme://``) are left to the code that opens them.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer


class Choice(str, Enum):
    """A choice whose text is its value everywhere (``str()``, f-strings), not ``Mask.random``."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Mask(Choice):
    saliency = "saliency"
    random = "random"


class Targets(Choice):
    both = "2d3d"
    only3d = "3d"


class Split(Choice):
    train = "train"
    test = "test"
    all = "all"


class Projection(Choice):
    sum = "sum"
    zbuffer = "zbuffer"


class TeacherInput(Choice):
    teacher = "teacher"
    official = "official"


class Pool(Choice):
    max = "max"
    meanmax = "meanmax"
    mean_plus_max = "mean_plus_max"
    mean = "mean"
    levels = "levels"


class Preset(Choice):
    tiny = "tiny"
    paper = "paper"


class PartsegPreset(Choice):
    """``i2p eval partseg --preset``: i2p's CPU-sized recipe or Point-M2AE's (stage3_eval/partseg_train.py)."""
    default = "default"
    paper = "paper"


class FinetuneRecipe(Choice):
    """``i2p eval finetune --recipe``: the official fine-tuning recipes (stage3_eval/finetune_presets.py)."""
    paper_modelnet40 = "paper-modelnet40"
    paper_scan_objbg = "paper-scan-objbg"
    paper_scan_objonly = "paper-scan-objonly"
    paper_scan_hardest = "paper-scan-hardest"


class Solver(Choice):
    svc = "svc"
    liblinear = "liblinear"


class Sampling(Choice):
    """Points given to the encoder by ``i2p eval svm`` (docs/FIDELITY.md V3)."""
    i2p = "i2p"
    official = "official"


class Vote(Choice):
    majority = "majority"
    weighted = "weighted"


class FewshotMode(Choice):
    linear = "linear"
    finetune = "finetune"


class EpisodesFrom(Choice):
    split = "split"
    all = "all"


class SelectOn(Choice):
    val = "val"
    test = "test"
    last = "last"


class Scheduler(Choice):
    slurm = "slurm"


class OnSignal(Choice):
    requeue = "requeue"
    exit = "exit"


class Protocol(Choice):
    svm = "svm"
    knn = "knn"
    fewshot = "fewshot"
    finetune = "finetune"


def value(choice: Any) -> Any:
    """The plain text of an enum member (``None`` and plain values pass through), for configs,
    result files and messages, where ``Mask.saliency`` would be noise."""
    return choice.value if isinstance(choice, Enum) else choice


def _is_url(text: str) -> bool:
    return "://" in text


def _check_exists(text: str, kind: str) -> None:
    if not text or _is_url(text):
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise typer.BadParameter(f"{kind} {text!r} does not exist")


def existing_path(raw: Any) -> Any:
    """Option callback: every local path given (one value or a repeated option) must exist."""
    for text in raw if isinstance(raw, (list, tuple)) else [raw]:
        if text is not None:
            _check_exists(str(text), "path")
    return raw


def existing_checkpoint(raw: Any) -> Any:
    """Option callback for ``--ckpt``: a file that exists, or one of the non-file forms
    (``random``, ``teacher:NAME``) that the evaluation code resolves itself."""
    if raw is None:
        return raw
    text = str(raw)
    if text == "random" or text.startswith("teacher:"):
        return raw
    _check_exists(text, "checkpoint")
    return raw


def existing_weights(raw: Any) -> Any:
    """Option callback for ``--teacher-weights``: ``random`` or a FILE that exists."""
    if raw is not None and str(raw) != "random":
        _check_exists(str(raw), "weights file")
    return raw

"""A study's settings (``i2p study ablation`` and ``i2p study transfer``): one YAML file drives
the whole study.

Layout (every key but ``pretrain.caches``, ``eval.data`` and ``variants`` has a default)::

    name: ablation-shrec
    seeds: [0, 1, 2]
    jobs: 2                      # runs at a time (each single-threaded)
    pretrain:
      caches: [/work/caches/shrec16-train, /work/caches/prims-train]
      preset: tiny               # or a pretrain YAML file
      set: [optim.epochs=5, data.workers=0]   # --set overrides shared by every variant
      max_steps: null            # cap (tests / smoke runs)
    eval:
      data: meshes:/work/shared/data/shrec16
      materialize: true          # sample the eval clouds once per seed into DIR/eval-data/
      points: 1024
      batch_size: 32
      svm: {C: auto, cv_folds: 5}
      fewshot: {way: 5, shot: 10, query: 4, folds: 10, C: 0.0093}
    masking: {samples: 200, seed: 0, temperatures: [1.0, 0.1, 0.03]}
    variants:
      - {name: random-init, pretrain: false}
      - {name: 3d-only, set: [model.mask_mode=random, model.targets=3d]}

A variant with ``pretrain: false`` is the random-init baseline: the encoder every pretraining
run of that seed starts from (same seed, same architecture), evaluated without training.

What the transfer study adds (every key optional; the ablation works without them)::

    teacher: effnet-lite2        # the 2D teacher of the caches the study builds, and of ceilings
    teacher_weights: null        # a FILE or 'random' (tests); default: the teacher's own source
    pretrain:
      data: [meshes:/data/shrec16#classes=half:1/2]   # cached by the study itself (i2p cache build,
      split: train                                     # once, into OUT/caches/srcI), then mixed
      points: 2048                                     # with any ready-made pretrain.caches
      build_args: [--batch-size, "16"]                 # extra i2p cache build arguments
    eval:
      data: meshes:/data/shrec16#classes=half:2/2     # the held-out classes (or another source)
      protocols: [svm]           # any of svm, fewshot (default: both)
      also: {seen: "meshes:/data/shrec16#classes=half:1/2"}   # more eval sets, a table each
    variants:
      - {name: teacher-mean, teacher: effnet-lite2, pool: meanmax}   # the 2D ceiling: eval only
      - {name: quarter, set: [data.fraction=0.25]}                   # a data-efficiency point

A variant with ``teacher: NAME`` is evaluated as ``i2p eval ... --ckpt teacher:NAME`` (the
teacher's own pooled features on the same clouds; nothing is trained); ``pool`` overrides the
evaluation pooling of one variant.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2p.common import config as cfgutil
from i2p.common.cli_options import Pool

POOLS = tuple(p.value for p in Pool)  # the pooling names every eval protocol accepts


class StudyConfigError(cfgutil.ConfigError):
    pass


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclass
class Variant:
    name: str
    set: list[str] = field(default_factory=list)  # pretrain --set overrides of this variant
    pretrain: bool = True  # False: random-init baseline (no training)
    label: str | None = None  # table/chart label (default: name)
    note: str = ""
    teacher: str | None = None  # evaluate the 2D teacher's own features (--ckpt teacher:NAME): no training
    pool: str | None = None  # this variant's evaluation pooling (default: eval.pool)

    @property
    def kind(self) -> str:
        return "teacher" if self.teacher else ("pretrain" if self.pretrain else "init")

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class PretrainSpec:
    caches: list[str] = field(default_factory=list)  # ready-made caches
    data: list[str] = field(default_factory=list)  # data specs the study caches itself (stage 1)
    split: str = "train"  # split of pretrain.data that is cached
    points: int = 2048  # points per cloud of those caches
    build_args: list[str] = field(default_factory=list)  # extra `i2p cache build` arguments
    preset: str = "tiny"
    set: list[str] = field(default_factory=list)
    max_steps: int | None = None


@dataclass
class SvmSpec:
    C: str | float = "auto"  # 'auto' = CV grid on the train split only, or a fixed number
    cv_folds: int = 5


@dataclass
class FewshotSpec:
    way: int = 5
    shot: int = 10
    query: int = 4
    folds: int = 10
    C: str | float = 0.0093


@dataclass
class EvalSpec:
    data: str
    points: int | None = 1024
    batch_size: int = 32
    materialize: bool = True
    pool: str = "max"
    protocols: list[str] = field(default_factory=lambda: ["svm", "fewshot"])
    also: dict[str, str] = field(default_factory=dict)  # more eval data sets: NAME -> spec (own table each)
    svm: SvmSpec = field(default_factory=SvmSpec)
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)


@dataclass
class MaskingSpec:
    samples: int = 200
    seed: int = 0
    temperatures: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.03])
    top_fraction: float = 0.2


@dataclass
class StudyConfig:
    pretrain: PretrainSpec
    eval: EvalSpec
    variants: list[Variant]
    name: str = "ablation"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    jobs: int = 1
    masking: MaskingSpec = field(default_factory=MaskingSpec)
    teacher: str | None = None  # teacher of the caches built from pretrain.data (and default ceiling)
    teacher_weights: str | None = None
    kind: str = "ablation"  # which command runs it: ablation | transfer (set by the command)
    source: str | None = None  # the YAML file it was read from

    # ------------------------------------------------------------------ helpers
    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise StudyConfigError(f"no variant {name!r} in the study (have: {', '.join(v.name for v in self.variants)})")

    def pretrain_overrides(self, variant: Variant) -> list[str]:
        return list(self.pretrain.set) + list(variant.set)

    def to_dict(self) -> dict:
        return cfgutil.to_dict(self)

    def fingerprint(self) -> str:
        d = self.to_dict()
        d.pop("source", None)
        d.pop("jobs", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _str_list(value: Any, where: str) -> list[str]:
    """The ``set`` spellings a study accepts: a list of ``key=value`` strings, one string, or a
    mapping ``{model.targets: 3d}``."""
    if value is None:
        return []
    if isinstance(value, dict):  # {model.targets: 3d} -> ["model.targets=3d"]
        return [f"{k}={_yaml_scalar(v)}" for k, v in value.items()]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise StudyConfigError(f"{where} must be a list of 'section.key=value' strings")
    return list(value)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_scalar(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _c_value(v: Any, where: str) -> str | float:
    if v == "auto":
        return "auto"
    try:
        c = float(v)
    except (TypeError, ValueError):
        raise StudyConfigError(f"{where} must be 'auto' or a positive number (got {v!r})") from None
    if not c > 0:
        raise StudyConfigError(f"{where} must be positive (got {v!r})")
    return c


def _shorthands(data: dict) -> dict:
    """The YAML shorthands, spelled out: one cache or one seed for a list of them, ``set`` as a
    string or a mapping."""
    data = dict(data)
    for key in ("pretrain", "eval", "variants"):
        if data.get(key) is None:
            raise StudyConfigError(f"study config needs '{key}'")
    pre = dict(data["pretrain"]) if isinstance(data["pretrain"], dict) else data["pretrain"]
    if isinstance(pre, dict):
        for key in ("caches", "data"):
            if isinstance(pre.get(key), str):
                pre[key] = [pre[key]]
        pre["build_args"] = [str(a) for a in pre.get("build_args") or []]
        pre["set"] = _str_list(pre.get("set"), "pretrain.set")
        data["pretrain"] = pre
    if isinstance(data["eval"], dict) and isinstance(data["eval"].get("protocols"), str):
        data["eval"] = {**data["eval"], "protocols": [data["eval"]["protocols"]]}
    if isinstance(data.get("seeds"), int) and not isinstance(data["seeds"], bool):
        data["seeds"] = [data["seeds"]]
    if isinstance(data["variants"], list):
        data["variants"] = [{**v, "set": _str_list(v.get("set"), f"variants[{i}].set")} if isinstance(v, dict) else v
                            for i, v in enumerate(data["variants"])]
    return data


def _check(study: StudyConfig) -> StudyConfig:
    """What types alone do not say; normalises the two C values to 'auto' or a float."""
    pre, ev, m = study.pretrain, study.eval, study.masking
    if not pre.caches and not pre.data:
        raise StudyConfigError("pretrain needs caches (ready-made cache paths) or data (data specs the study "
                               "caches itself with the study's teacher)")
    if pre.data and not study.teacher:
        raise StudyConfigError("pretrain.data is cached by the study: name its 2D teacher in 'teacher' "
                               "(e.g. teacher: effnet-lite2)")
    if pre.split not in ("train", "test", "all"):
        raise StudyConfigError("pretrain.split must be train, test or all")
    if not ev.protocols or set(ev.protocols) - {"svm", "fewshot"} or len(set(ev.protocols)) != len(ev.protocols):
        raise StudyConfigError("eval.protocols must be a non-empty list of distinct protocols: svm, fewshot")
    for name, spec in ev.also.items():
        if not _NAME.match(str(name)) or not isinstance(spec, str) or not spec:
            raise StudyConfigError(f"eval.also: {name!r} -> {spec!r}: NAME (letters, digits, _ . + = -) -> data spec")
    if study.kind not in ("ablation", "transfer"):
        raise StudyConfigError("kind must be ablation or transfer")
    if pre.max_steps is not None and pre.max_steps < 1:
        raise StudyConfigError("pretrain.max_steps must be a positive integer or null")
    if not ev.data:
        raise StudyConfigError("eval.data must be a data spec, e.g. meshes:/path/to/shrec16")
    ev.svm.C = _c_value(ev.svm.C, "eval.svm.C")
    ev.fewshot.C = _c_value(ev.fewshot.C, "eval.fewshot.C")
    if ev.pool not in POOLS:
        raise StudyConfigError(f"eval.pool must be one of {', '.join(POOLS)}")
    if any(t <= 0 for t in m.temperatures):
        raise StudyConfigError("masking.temperatures must be positive")
    if not 0 < m.top_fraction < 1:
        raise StudyConfigError("masking.top_fraction must lie in (0, 1)")
    if not study.variants:
        raise StudyConfigError("variants must be a non-empty list")
    for v in study.variants:
        if not _NAME.match(v.name):
            raise StudyConfigError(f"variant name {v.name!r}: use letters, digits and _ . + = - only")
        if v.pool is not None and v.pool not in POOLS:
            raise StudyConfigError(f"variant {v.name}: pool must be one of {', '.join(POOLS)}")
        if v.teacher is not None:
            if not isinstance(v.teacher, str) or not v.teacher:
                raise StudyConfigError(f"variant {v.name}: teacher must be a teacher name (e.g. effnet-lite2)")
            if v.set:
                raise StudyConfigError(f"variant {v.name}: a teacher variant trains nothing; drop its 'set'")
            v.pretrain = False
    names = [v.name for v in study.variants]
    if len(set(names)) != len(names):
        raise StudyConfigError("variant names must be unique")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise StudyConfigError("seeds must be a list of distinct integers")
    if study.jobs < 1:
        raise StudyConfigError("jobs must be a positive integer")
    return study


def from_dict(data: dict, source: str | None = None) -> StudyConfig:
    """The study of a parsed YAML mapping: typed by :mod:`i2p.common.config` (unknown keys,
    missing required keys and ill-typed values are errors), then checked."""
    if not isinstance(data, dict):
        raise StudyConfigError("study config must be a mapping")
    try:
        study = cfgutil.from_dict(StudyConfig, {**_shorthands(data), "source": source})
    except cfgutil.ConfigError as exc:
        raise StudyConfigError(f"study config: {exc}") from None
    return _check(study)


def load(path: str | Path, kind: str | None = None) -> StudyConfig:
    """The study of a YAML file; ``kind`` (the command that runs it) wins over the file's."""
    try:
        data = cfgutil.load_yaml(path, what="study config")
    except cfgutil.ConfigError as exc:
        raise StudyConfigError(str(exc)) from None
    if kind is not None and isinstance(data, dict):
        data = {**data, "kind": kind}
    return from_dict(data, source=str(path))


def resolve_pretrain(study: StudyConfig, variant: Variant, seed: int):
    """The pretrain config a variant's run uses (the same object ``i2p pretrain`` resolves from
    ``--config PRESET --set ... --seed S``)."""
    from i2p.stage2_pretrain import config as pcfg

    return pcfg.resolve(study.pretrain.preset, study.pretrain_overrides(variant), seed=seed)

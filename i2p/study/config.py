"""The ablation study's settings: one YAML file drives the whole study.

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from i2p.common.errors import UserError


class StudyConfigError(UserError):
    pass


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclass
class Variant:
    name: str
    set: list[str] = field(default_factory=list)  # pretrain --set overrides of this variant
    pretrain: bool = True  # False: random-init baseline (no training)
    label: str | None = None  # table/chart label (default: name)
    note: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class PretrainSpec:
    caches: list[str]
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
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        d = self.to_dict()
        d.pop("source", None)
        d.pop("jobs", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _only(d: dict, cls: type, where: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise StudyConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(sorted(names))})")
    return d


def _str_list(value: Any, where: str) -> list[str]:
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


def from_dict(data: dict, source: str | None = None) -> StudyConfig:
    if not isinstance(data, dict):
        raise StudyConfigError("study config must be a mapping")
    data = dict(data)
    _only(data, StudyConfig, "study config")
    for key in ("pretrain", "eval", "variants"):
        if key not in data:
            raise StudyConfigError(f"study config needs '{key}'")
    p = dict(_only(dict(data["pretrain"] or {}), PretrainSpec, "pretrain"))
    caches = p.get("caches")
    if isinstance(caches, str):
        caches = [caches]
    if not caches or not all(isinstance(c, str) for c in caches):
        raise StudyConfigError("pretrain.caches must be a non-empty list of cache paths")
    pre = PretrainSpec(caches=list(caches), preset=str(p.get("preset", "tiny")),
                       set=_str_list(p.get("set"), "pretrain.set"), max_steps=p.get("max_steps"))
    if pre.max_steps is not None and (not isinstance(pre.max_steps, int) or pre.max_steps < 1):
        raise StudyConfigError("pretrain.max_steps must be a positive integer or null")

    e = dict(_only(dict(data["eval"] or {}), EvalSpec, "eval"))
    if not isinstance(e.get("data"), str) or not e["data"]:
        raise StudyConfigError("eval.data must be a data spec, e.g. meshes:/path/to/shrec16")
    svm = SvmSpec(**_only(dict(e.pop("svm", None) or {}), SvmSpec, "eval.svm"))
    svm.C = _c_value(svm.C, "eval.svm.C")
    fs = FewshotSpec(**_only(dict(e.pop("fewshot", None) or {}), FewshotSpec, "eval.fewshot"))
    fs.C = _c_value(fs.C, "eval.fewshot.C")
    ev = EvalSpec(**e, svm=svm, fewshot=fs)
    if ev.pool not in ("max", "meanmax"):
        raise StudyConfigError("eval.pool must be 'max' or 'meanmax'")

    m = MaskingSpec(**_only(dict(data.get("masking") or {}), MaskingSpec, "masking"))
    m.temperatures = [float(t) for t in m.temperatures]
    if any(t <= 0 for t in m.temperatures):
        raise StudyConfigError("masking.temperatures must be positive")
    if not 0 < m.top_fraction < 1:
        raise StudyConfigError("masking.top_fraction must lie in (0, 1)")

    raw_variants = data["variants"]
    if not isinstance(raw_variants, list) or not raw_variants:
        raise StudyConfigError("variants must be a non-empty list")
    variants = []
    for i, rv in enumerate(raw_variants):
        if not isinstance(rv, dict) or "name" not in rv:
            raise StudyConfigError(f"variants[{i}] needs a 'name'")
        rv = dict(_only(dict(rv), Variant, f"variants[{i}]"))
        rv["set"] = _str_list(rv.get("set"), f"variants[{i}].set")
        v = Variant(**rv)
        if not _NAME.match(v.name):
            raise StudyConfigError(f"variant name {v.name!r}: use letters, digits and _ . + = - only")
        variants.append(v)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise StudyConfigError("variant names must be unique")

    seeds = data.get("seeds", [0, 1, 2])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise StudyConfigError("seeds must be a list of distinct integers")
    jobs = data.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise StudyConfigError("jobs must be a positive integer")
    name = str(data.get("name", "ablation"))
    return StudyConfig(pretrain=pre, eval=ev, variants=variants, name=name, seeds=list(seeds),
                       jobs=jobs, masking=m, source=source)


def load(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"study config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"study config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    return from_dict(data, source=str(path))


def resolve_pretrain(study: StudyConfig, variant: Variant, seed: int):
    """The pretrain config a variant's run uses (the same object ``i2p pretrain`` resolves from
    ``--config PRESET --set ... --seed S``)."""
    from i2p.stage2_pretrain import config as pcfg

    return pcfg.resolve(study.pretrain.preset, study.pretrain_overrides(variant), seed=seed)

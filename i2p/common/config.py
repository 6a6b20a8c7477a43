"""The one config system: typed dataclasses, YAML files and ``--set key=value`` overrides.

Every setting tree of i2p (pre-training :mod:`i2p.stage2_pretrain.config`, its model
:class:`~i2p.stage2_pretrain.model.ModelConfig`, the ablation study :mod:`i2p.study.config`) is
a tree of dataclasses, so typos fail loudly and defaults live in one place. Presets are
functions returning instances (:func:`resolve`); a YAML file or ``--set a.b=v`` overrides
change fields, with values parsed by YAML and checked against the field's type
(:func:`update`); :func:`from_dict` builds a tree from a mapping (a YAML file, a checkpoint's
stored config), :func:`to_dict` goes back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from i2p.common.atomic import write_text
from i2p.common.errors import UserError


class ConfigError(UserError):
    pass


def to_dict(cfg: Any) -> dict:
    """Dataclass tree -> plain dict (tuples become lists, YAML/JSON friendly)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if isinstance(typ, str):  # postponed annotations are resolved by the caller
        raise ConfigError(f"unresolved type for {key}")
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        exact = [a for a in args if a in (str, int, float, bool) and type(value) is a]
        for a in exact + args:
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: cannot use {value!r} as {typ}")
    if origin is typing.Literal:
        if value not in typing.get_args(typ):
            raise ConfigError(f"config key {key}: {value!r} is not one of {typing.get_args(typ)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        args = typing.get_args(typ)
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{key}[{i}]") if elem is not Any and elem is not Ellipsis else v
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if typ is Any:
        return value
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is bool and isinstance(value, bool):
        return value
    if typ is str and isinstance(value, (str, int, float)):
        return str(value)
    if dataclasses.is_dataclass(typ) and isinstance(value, dict):
        return from_dict(typ, value, prefix=key + ".")
    raise ConfigError(f"config key {key}: {value!r} is not a {getattr(typ, '__name__', typ)}")


def from_dict(cls: type, data: Mapping, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys are an error, and so is a missing
    field that has no default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {prefix.rstrip('.') or cls.__name__} must be a mapping, got {data!r}")
    data = dict(data)
    hints = typing.get_type_hints(cls)
    required = {}
    for f in dataclasses.fields(cls):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if f.name not in data:
                raise ConfigError(f"config key {prefix}{f.name} is required")
            required[f.name] = _coerce(data.pop(f.name), hints[f.name], prefix + f.name)
    return update(cls(**required), data, prefix)


def update(cfg: Any, data: dict, prefix: str = "") -> Any:
    """A copy of dataclass ``cfg`` with ``data`` (nested dict) applied."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in (data or {}).items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key} (known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = update(current, value, prefix + key + ".")
        else:
            changes[key] = _coerce(value, hints[key], prefix + key)
    return dataclasses.replace(cfg, **changes)


def parse_overrides(items: Iterable[str]) -> dict:
    """``["train.lr=1e-3", "model.depths=[1,1,1]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    """The tree as YAML, written atomically (a kill mid-write keeps the previous file)."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def prune_none(d: Mapping) -> dict:
    """A nested dict without its None values (and without sections left empty): the options a
    user did not give on the command line."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            v = prune_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def resolve(presets: Mapping[str, Callable[[], Any]], source: str, overrides: Iterable[str] = (),
            direct: Mapping | None = None, default: str = "base") -> Any:
    """A preset name or a YAML file (its ``preset:`` key names the preset it starts from,
    ``default`` when it has none), then ``--set`` overrides, then ``direct`` values (a nested
    dict of command-line options; None means "not given")."""
    if source in presets:
        cfg = presets[source]()
    elif not Path(source).is_file():
        raise ConfigError(f"config {source!r} is neither a preset ({', '.join(presets)}) nor a YAML file")
    else:
        data = load_yaml(source)
        name = data.get("preset", default)
        if name in presets:
            data.pop("preset", None)
            cfg = presets[name]()
        else:  # an unknown preset name is kept as a label on the default preset's values
            cfg = presets[default]()
        cfg = update(cfg, data)
    if overrides:
        cfg = update(cfg, parse_overrides(overrides))
    return update(cfg, prune_none(direct or {}))

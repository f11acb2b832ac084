"""Reading a config: YAML, ``key=value`` overrides, types checked against the dataclasses (unknown keys are
errors naming the key path), then the value checks of ``checks.py``."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ..errors import ConfigError
from .checks import validate
from .fields import dataclass_type as _dataclass_type

if TYPE_CHECKING:
    from .run import RunConfig


def _type_name(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return "one of " + " | ".join(map(str, typing.get_args(t)))
    if typing.get_origin(t) in (list, dict):
        args = typing.get_args(t)
        return f"a list of {_type_name(args[0])}" if typing.get_origin(t) is list and args else t.__name__
    return getattr(t, "__name__", str(t))


def _check_scalar(value: Any, tp: Any, where: str) -> Any:
    allowed = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(t) for t in allowed)}, got null")
    for t in allowed:
        if typing.get_origin(t) is Literal:
            if isinstance(value, str) and value in typing.get_args(t):
                return value
            continue
        if typing.get_origin(t) is list and isinstance(value, list) and typing.get_args(t):
            for i, item in enumerate(value):  # checked, kept as written (a config hash must not change)
                _check_scalar(item, typing.get_args(t)[0], f"{where}[{i}]")
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, dict, list) and isinstance(value, t):
            return value
        if typing.get_origin(t) in (list, dict) and isinstance(value, typing.get_origin(t)):
            return value
        if t is Any:
            return value
    names = " or ".join(_type_name(t) for t in allowed)
    if any(typing.get_origin(t) is Literal for t in allowed):
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: Any, where: str = "config", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError.

    Keys absent from ``data`` keep the field's own default, including a nested section's default instance:
    ``judge_sampling: {max_tokens: 64}`` changes only max_tokens, not the section's other defaults.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        sub = _dataclass_type(tp)
        if sub is not None and value is not None:
            default = getattr(base, key, None) if base is not None else None
            if default is None and fields[key].default_factory is not dataclasses.MISSING:
                default = fields[key].default_factory()
            kwargs[key] = from_dict(sub, value, f"{where}.{key}", default if isinstance(default, sub) else None)
        else:
            kwargs[key] = _check_scalar(value, tp, f"{where}.{key}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_override(data: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override to a plain dict; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{override}': empty key")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    try:
        node[parts[-1]] = strict_load(raw) if raw != "" else ""
    except DuplicateKey as e:
        raise ConfigError(f"override '{override}': duplicated key '{e.key}'") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{override}': value is not valid YAML ({e.__class__.__name__})") from None


class DuplicateKey(yaml.YAMLError):
    """A mapping that names the same key twice (YAML would keep the last value silently)."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: duplicated key '{key}' (first at line {first})")
        self.key, self.line, self.first = key, line, first


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if first is not None:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, first)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, but a duplicated key is a ``DuplicateKey`` error."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a run config from YAML (or defaults when ``path`` is None), then apply overrides."""
    from .run import RunConfig  # built from the registry on first use

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = strict_load(p.read_text()) or {}
        except DuplicateKey as e:
            raise ConfigError(f"{p}: {e}; remove one of them") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}: not valid YAML{at}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    for ov in overrides:
        apply_override(data, ov)
    where = str(path) if path is not None else "config"
    cfg = from_dict(RunConfig, data, where)
    if cfg.expand.model is None:
        cfg.expand.model = dataclasses.replace(cfg.distill.teacher)
    validate(cfg, where)
    return cfg

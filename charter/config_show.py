"""``charter config show [CONFIG] [key=value ...]``: the resolved config as YAML, each key's help beside it.

The output is valid YAML that loads back to the same config (the help texts are comments), so it is also a
starting point for a new config file. Help texts live on the config dataclasses' fields
(``field(metadata={"help": ...})``, see ``charter.config``); a field without one is a test failure.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import yaml

from .config import _dataclass_type

if TYPE_CHECKING:
    from .config import RunConfig

COLUMN = 44  # where the help comments start, when the key and value leave room


def _scalar(value: Any) -> str:
    """One value in YAML flow style (lists and dicts on one line, strings quoted only when needed)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip().removesuffix(
        "\n...").strip()


def _line(indent: int, key: str, value: str | None, help_: str) -> str:
    text = " " * indent + f"{key}:" + (f" {value}" if value is not None else "")
    return f"{text.ljust(COLUMN - 1)} # {help_}" if help_ else text


def describe(obj: Any, indent: int = 0) -> list[str]:
    """The lines of one config dataclass instance (and its nested sections)."""
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_ = " ".join(str(f.metadata.get("help", "")).split())
        if dataclasses.is_dataclass(value):
            lines.append(_line(indent, f.name, None, help_))
            lines += describe(value, indent + 2)
        else:
            lines.append(_line(indent, f.name, _scalar(value), help_))
    return lines


def show(cfg: RunConfig) -> str:
    return "\n".join(describe(cfg)) + "\n"


def missing_help(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every field (dotted path) of ``cls`` (default: the run config) without a help text, nested sections
    included."""
    if cls is None:
        from .config import RunConfig

        cls = RunConfig
    out = []
    for f in dataclasses.fields(cls):
        if not str(f.metadata.get("help", "")).strip():
            out.append(prefix + f.name)
        sub = _dataclass_type(f.type)
        if sub is not None:
            out += missing_help(sub, f"{prefix}{f.name}.")
    return out

"""Per-field metadata for the config dataclasses: a field's help, its value check and its identity rule,
declared once, on the field itself::

    chunk_size: int = setting(64, check=POSITIVE, identity=Speed(64),
                              help="rows generated and committed to disk together")

- ``help``: what ``charter config show`` prints beside the key (stored as ``metadata["help"]``, as a plain
  ``field(metadata={"help": ...})`` does);
- ``check``: a ``Check``, a predicate and the phrase an error gives for what was expected. ``checks.validate``
  applies it wherever the field's dataclass appears in the run config (a new section gets its checks by
  declaring them here); unset optional fields (None) are not checked;
- ``identity``: how the field counts in a stage's identity, the hash that decides whether finished work is
  reused (``charter.config.identity`` applies it):

  - ``True``: it counts (the default);
  - ``False``: it never counts and is left out of the recorded config (checkpoint cadence; an evaluation's
    settings that only choose what is scored);
  - ``Speed(v)``: a knob that changes how fast a stage runs, not what it computes (beyond floating-point
    rounding and which rows a batch holds). Every identity sees it at the fixed value ``v`` (the value it had
    when identities began), so identities of configs that never set it are what they were, and tuning it on a
    live run neither errors nor redoes finished work. Manifests still record the value used;
  - ``AsBefore(v)``: a field added after runs existed; left out while it holds ``v``, the value that means
    "as before", so finished runs stay valid, and counted as soon as it says something else;
  - ``PrefixCache()``: a model's ``prefix_cache``. Reusing a shared prefix's KV cache is exact in float32 (8/8
    greedy texts equal in ``benchmarks/generation.py``) but not in bfloat16/float16 (1/8: the rounding differs
    with the layout). So it is a speed knob only where the model's dtype resolves to float32 (or the backend
    does not run the model here: ``openai``), and part of the identity everywhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Speed:
    fixed: Any


@dataclass(frozen=True)
class AsBefore:
    value: Any


@dataclass(frozen=True)
class PrefixCache:
    fixed: bool = True


@dataclass(frozen=True)
class Check:
    """A value check: ``ok(value)`` says whether it passes; ``expected`` is what an error says was expected (or a
    function that spells it when needed: a list read from the registry is complete only once it has loaded)."""

    ok: Callable[[Any], bool]
    expected: str | Callable[[], str]
    each: bool = False  # a list's items are checked one by one (an error names the item's index)

    def __call__(self, value: Any) -> bool:
        return self.ok(value)

    def describe(self) -> str:
        return self.expected() if callable(self.expected) else self.expected


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           expected: str | None = None) -> Check:
    """A number in a range (bounds inclusive unless open; None: unbounded). Booleans and NaN never pass."""
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return False
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    if expected is None:
        if lo is not None and hi is None:
            expected = f"a number {'>' if lo_open else '>='} {lo}"
        else:
            lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
            hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
            expected = f"{lo_s}x{hi_s}"
    return Check(ok, expected)


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
SHARE = number(0, 1)
OPEN_SHARE = number(0, 1, lo_open=True, hi_open=True)
SHARE_BELOW_1 = number(0, 1, hi_open=True)
SEED = number(0, 2 ** 32 - 1, expected="an integer 0 <= seed < 2**32")
_NUMBER = number()
NUMBERS = Check(lambda v: bool(v) and all(_NUMBER(x) for x in v), "a non-empty list of numbers")
SPAN = Check(lambda v: isinstance(v, list) and len(v) == 2 and all(SHARE(x) for x in v) and v[0] < v[1],
             "[start, end) with 0 <= start < end <= 1")


def setting(default: Any = dataclasses.MISSING, *, check: Check | None = None, identity: Any = True,
            help: str = "") -> Any:  # noqa: A002 - the name config show and TRL's dataclasses use
    """A config dataclass field with its help, check and identity rule (see the module doc). A mutable default
    (a list, dict or dataclass instance) is copied for every instance."""
    metadata: dict = {"help": help}
    if check is not None:
        metadata["check"] = check
    if identity is not True:
        metadata["identity"] = identity
    if isinstance(default, (list, dict, set)) or (dataclasses.is_dataclass(default) and not isinstance(default, type)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_of(f: dataclasses.Field) -> Check | None:
    return f.metadata.get("check")


def identity_of(f: dataclasses.Field) -> Any:
    return f.metadata.get("identity", True)


def dataclass_type(tp: Any) -> type | None:
    """The dataclass inside a (possibly Optional) annotation, or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None

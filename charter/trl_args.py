"""The ``trl`` and ``lora`` dicts of the training stages, checked against TRL's and peft's own classes before
any work: names (with a "did you mean"), value types and ranges read from the classes' source files, without
importing them (importing TRL costs 10+ s on a small machine), then, last, the real config objects built.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path

from . import deps
from .errors import ConfigError

def _package_dir(top: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _module_file(module: str) -> Path | None:
    top, *rest = module.split(".")
    base = _package_dir(top)
    if base is None:
        return None
    p = base.joinpath(*rest)
    for cand in ([p.parent / f"{p.name}.py"] if rest else []) + [p / "__init__.py"]:
        if cand.is_file():
            return cand
    return None


@lru_cache(maxsize=None)
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _is_dataclass_def(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        name = d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", "")
        if name == "dataclass":
            return True
    return False


def _own_fields(node: ast.ClassDef) -> dict[str, str]:
    """The ``__init__`` fields a dataclass body declares, each with its annotation as written."""
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = ast.unparse(stmt.annotation)
        if "ClassVar" in annotation:
            continue
        v = stmt.value
        if isinstance(v, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                           and k.value.value is False for k in v.keywords):
            continue
        out[stmt.target.id] = annotation
    return out


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def source_field_types(module: str, cls: str, depth: int = 0) -> dict[str, str] | None:
    """The ``__init__`` fields of dataclass ``cls`` as importable from ``module``, bases included, each with its
    annotation as written, read from source without importing anything; None when the source cannot be
    followed."""
    path = _module_file(module)
    if path is None or depth > 12:
        return None
    tree = _parse(path)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:  # re-exported: follow `from X import cls` (also inside TYPE_CHECKING blocks)
        for imp in ast.walk(tree):
            if isinstance(imp, ast.ImportFrom):
                for alias in imp.names:
                    if (alias.asname or alias.name) == cls:
                        return source_field_types(_resolve_from(module, path, imp), alias.name, depth + 1)
        return None
    fields: dict[str, str] = {}
    for base in node.bases:
        if isinstance(base, ast.Subscript) or (isinstance(base, ast.Name) and base.id in ("object", "Generic")):
            continue
        if not isinstance(base, ast.Name):
            return None
        inherited = source_field_types(module, base.id, depth + 1)
        if inherited is None:
            return None
        fields.update(inherited)
    if _is_dataclass_def(node):
        fields.update(_own_fields(node))
    return fields


def source_fields(module: str, cls: str) -> set[str] | None:
    """The names of ``source_field_types``."""
    found = source_field_types(module, cls)
    return None if found is None else set(found)


# what a dict passes to -> (module to read, class, sanity fields that must be found)
ARG_CLASSES = {
    "trl DPOConfig": ("trl", "DPOConfig", {"learning_rate", "beta", "output_dir"}),
    "trl SFTConfig": ("trl", "SFTConfig", {"learning_rate", "max_length", "output_dir"}),
    "trl GRPOConfig": ("trl", "GRPOConfig", {"learning_rate", "beta", "num_generations", "output_dir"}),
    "peft LoraConfig": ("peft", "LoraConfig", {"r", "lora_alpha", "target_modules"}),
}


@lru_cache(maxsize=None)
def argument_names(which: str) -> frozenset[str]:
    """The keyword arguments TRL's DPOConfig/SFTConfig or peft's LoraConfig accept."""
    module, cls, sanity = ARG_CLASSES[which]
    deps.require(f"{which} arguments", module)
    found = source_fields(module, cls)
    if found is None or not sanity <= found:  # a layout we cannot follow: ask the real class (slow import)
        real = getattr(importlib.import_module(module), cls)
        found = {f.name for f in dataclasses.fields(real) if f.init}
    return frozenset(found)


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_arguments(given: dict, which: str, where: str) -> None:
    if not given:
        return
    known = argument_names(which)
    for key in given:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), known)}; expected a {which} "
                              "argument")


# Value ranges the libraries accept silently but fail on (or misread) minutes later; the libraries' own
# validation (building the real config objects, ``check_trainer_values``) catches the rest.
def _whole(lo: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"a whole number >= {lo}"


def _at_least(lo: float, open_: bool = False):
    def ok(v):
        v = _as_number(v)
        return v is not None and (v > lo if open_ else v >= lo)
    return ok, f"a number {'>' if open_ else '>='} {lo}"


ARG_RANGES: dict[str, dict[str, tuple]] = {
    "trl": {"learning_rate": _at_least(0, True), "num_train_epochs": _at_least(0, True),
            "max_steps": ((lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)),
                          "-1 (train num_train_epochs) or a whole number >= 1"),
            "per_device_train_batch_size": _whole(1), "gradient_accumulation_steps": _whole(1),
            "warmup_steps": _at_least(0), "weight_decay": _at_least(0), "max_grad_norm": _at_least(0),
            "logging_steps": _at_least(0, True), "save_steps": _at_least(0, True), "beta": _at_least(0),
            "max_length": _whole(1), "max_prompt_length": _whole(1), "max_completion_length": _whole(1),
            "num_generations": _whole(2), "temperature": _at_least(0)},
    "lora": {"r": _whole(1), "lora_alpha": _at_least(0, True),
             "lora_dropout": ((lambda v: _as_number(v) is not None and 0 <= _as_number(v) < 1), "0 <= x < 1")},
}


def _as_number(v):
    """A number as YAML gives it: PyYAML reads ``1e-4`` (no dot) as the string '1e-4'; TRL gets it as a float."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


_SCALARS = {"float": lambda v: _as_number(v) is not None,
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
            "dict": lambda v: isinstance(v, dict), "Dict": lambda v: isinstance(v, dict),
            "list": lambda v: isinstance(v, list), "List": lambda v: isinstance(v, list),
            "tuple": lambda v: isinstance(v, (list, tuple)), "None": lambda v: v is None}


def _fits(value, node: ast.expr) -> bool | None:
    """Whether ``value`` fits a field annotation (a parsed source annotation); None: a type this check does
    not know (an enum, a class), left to the library."""
    if isinstance(node, ast.Constant) and node.value is None:
        return value is None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted forward reference
        try:
            return _fits(value, ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [_fits(value, node.left), _fits(value, node.right)]
        return True if True in parts else None if None in parts else False
    if isinstance(node, ast.Name):
        if node.id == "Any":
            return True
        check = _SCALARS.get(node.id)
        return None if check is None else check(value)
    if isinstance(node, ast.Subscript):
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            return True if value is None else _fits(value, args[0])
        if head == "Union":
            parts = [_fits(value, a) for a in args]
            return True if True in parts else None if None in parts else False
        if head == "Literal":
            return any(isinstance(a, ast.Constant) and a.value == value for a in args)
        if head in ("list", "List"):
            if not isinstance(value, list):
                return False
            parts = [_fits(v, args[0]) for v in value]
            return False if False in parts else None if None in parts else True
        if head in ("dict", "Dict", "tuple", "Tuple"):
            return _SCALARS[head](value)
    return None


def check_argument_values(given: dict, which: str, where: str) -> None:
    """Types (from the class's annotations, read from source) and ranges of a ``trl``/``lora`` dict's values,
    well under a second and without importing the library: one line naming the key."""
    module, cls, _ = ARG_CLASSES[which]
    types = source_field_types(module, cls) or {}
    ranges = ARG_RANGES["lora" if which.startswith("peft") else "trl"]
    for key, value in given.items():
        annotation = types.get(key)
        if annotation is not None:
            try:
                fits = _fits(value, ast.parse(annotation, mode="eval").body)
            except SyntaxError:
                fits = None
            if fits is False:
                got = "null" if value is None else f"{type(value).__name__} {value!r}"
                raise ConfigError(f"{where}.{key}: expected {annotation} ({which}), got {got}")
        if key in ranges and value is not None:
            ok, expected = ranges[key]
            if not ok(value):
                raise ConfigError(f"{where}.{key}: expected {expected}, got {value!r}")


def _library_error(e: BaseException, given: dict, where: str, which: str) -> ConfigError:
    text = " ".join((str(e) or type(e).__name__).split())
    named = [k for k in given if str(k) in text]
    at = f"{where}.{named[0]}" if len(named) == 1 else where
    return ConfigError(f"{at}: {which} refuses it: {text}")


def check_trainer_values(cfg, stages, where: str, command: str) -> None:
    """Build TRL's DPOConfig/SFTConfig/GRPOConfig and peft's LoraConfig, as the stages will, for every training
    stage in ``stages`` (registry entries the command runs), so a value the libraries refuse fails now and not
    after hours of generation. (Importing TRL takes seconds: this runs last, and only for commands that train.
    The LoRA targets, which depend on the model, are checked when the model is loaded.)"""
    wanted = [s for s in stages if s.trainer is not None]
    if not wanted:
        return
    deps.require(f"charter {command}", "trl", "peft")
    import tempfile
    import warnings

    from peft import LoraConfig

    from .training import LORA_DEFAULTS

    scratch = str(Path(tempfile.gettempdir()) / "charter-preflight-never-written")
    for stage in wanted:
        name, section = stage.name, getattr(cfg, stage.name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stage.trainer.build(cfg, section, scratch)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any refusal of the library is the config's problem
            raise _library_error(e, section.trl, f"{where}.{name}.trl", stage.trainer.trl) from None
        lora = {**LORA_DEFAULTS, **section.lora}
        if not isinstance(lora.get("target_modules"), (str, list, type(None))):
            raise ConfigError(f"{where}.{name}.lora.target_modules: expected a list of module names, 'all-linear' "
                              f"or a regex, got {lora['target_modules']!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                LoraConfig(**lora)
        except Exception as e:  # noqa: BLE001
            raise _library_error(e, section.lora, f"{where}.{name}.lora", "peft LoraConfig") from None

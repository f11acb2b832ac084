"""Checks a command makes on its config before any work: files, folders, packages and TRL/peft arguments.

``load_config`` checks what the config says on its own (keys, types, choices, ranges, run names). This
module checks what it points at, in well under a second and without importing torch, TRL or peft:

- the persona: a shipped name, or a constitution file that validates;
- local models (a value starting with ``/``, ``./``, ``../`` or ``~``, or an existing folder): a Hugging Face
  model folder (``config.json`` or ``adapter_config.json``) with weights (``*.safetensors`` or ``*.bin``).
  Hub ids are checked when first used;
- prompt files (``*_source`` fields naming a file) and trait lists: present and well-formed, errors naming
  the file and line;
- ``dpo``/``sft`` ``trl`` and ``lora`` keys against the fields of TRL's ``DPOConfig``/``SFTConfig`` and peft's
  ``LoraConfig``, read from their source files (importing them costs 10+ s on a small machine), with a
  "did you mean";
- the optional packages the command's backends and stages import.

Every problem is a ``ConfigError`` (or ``MissingDependency``) whose one line names the config, the key and
what was expected.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path

from . import deps
from .config import ConfigError, ModelSpec, RunConfig
from .layout import EVAL_NAMES, RUN_MODELS as RUN_MODEL_FOLDERS, STAGE_NAMES
from .runs import run_dir

TRAINING = (*STAGE_NAMES, "train")
EVALS = EVAL_NAMES
RUN_MODELS = ("base", *RUN_MODEL_FOLDERS)
TRAIN_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
WEIGHT_GLOBS = ("*.safetensors", "*.bin")


# --------------------------------------------------------------------------------------------- models

def is_path_like(ref: str) -> bool:
    """A value meant as a local path rather than a hub id or a name."""
    return ref in (".", "..", "~") or ref.startswith(("/", "./", "../", "~/"))


def model_dir_problem(ref: str, adapter: bool = False) -> str | None:
    """What is wrong with a local model (or adapter) folder, or None."""
    p = Path(ref).expanduser()
    kind = "LoRA adapter folder" if adapter else "model folder"
    if not p.exists():
        return f"{ref}: no such {kind}"
    if not p.is_dir():
        return f"{ref}: not a folder (expected a Hugging Face {kind})"
    markers = ("adapter_config.json",) if adapter else ("config.json", "adapter_config.json")
    if not any((p / m).is_file() for m in markers):
        return f"{ref}: not a Hugging Face {kind} (no {' or '.join(markers)})"
    if not any(next(p.glob(g), None) is not None for g in WEIGHT_GLOBS):
        return f"{ref}: a {kind} without weights (no *.safetensors or *.bin file)"
    return None


def check_model_ref(ref: str, where: str) -> None:
    """A local model reference must be a loadable folder; 'embedded' and hub ids pass (hub ids are checked
    when first used)."""
    from .models import is_embedded

    if not isinstance(ref, str) or is_embedded(ref):
        return
    from .packaged import install_hint, installed, packaged

    if packaged(ref) is not None:
        if not installed(packaged(ref)):
            raise ConfigError(f"{where}: {install_hint(ref.strip().lower())}")
        return
    if is_path_like(ref) or Path(ref).expanduser().is_dir():
        problem = model_dir_problem(ref)
        if problem:
            raise ConfigError(f"{where}: {problem} (expected 'embedded', a local Hugging Face model folder with "
                              "config.json and weights, or a hub id such as org/name)")


def check_model_spec(spec: ModelSpec, where: str) -> None:
    if spec.backend == "openai":  # the model is a name on the server (vLLM serves paths as names)
        from .backends.openai_api import EXTRA_KEYS

        if spec.base_url is not None and not spec.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http:// or https:// URL, got {spec.base_url!r}")
        unknown = sorted(set(spec.extra) - EXTRA_KEYS)
        if unknown:
            raise ConfigError(f"{where}.extra: unknown key '{unknown[0]}' for the openai backend"
                              f"{_did_you_mean(unknown[0], EXTRA_KEYS)} (known: {', '.join(sorted(EXTRA_KEYS))})")
        if spec.extra.get("on_error", "raise") not in ("raise", "empty"):
            raise ConfigError(f"{where}.extra.on_error: expected one of raise | empty, "
                              f"got {spec.extra['on_error']!r}")
    elif spec.backend == "scripted":
        from .backends.scripted import load_script

        try:
            load_script(spec.model)
        except ValueError as e:
            raise ConfigError(f"{where}.model: {e}") from None
    else:
        check_model_ref(spec.model, f"{where}.model")
    if spec.adapter is not None:
        problem = model_dir_problem(spec.adapter, adapter=True)
        if problem:
            raise ConfigError(f"{where}.adapter: {problem} (expected a folder with adapter_config.json and "
                              "adapter weights)")


def backend_packages(spec: ModelSpec) -> tuple[str, ...]:
    from .backends import BACKENDS

    return BACKENDS[spec.backend].packages


def check_model_list(entries: list, where: str) -> None:
    """``preferences.models``/``capabilities.models``: 'base', 'trained', 'distilled', 'label=ref' or a ref."""
    for i, entry in enumerate(entries):
        entry = str(entry).strip()
        ref = entry.partition("=")[2] if "=" in entry else entry
        if not ref:
            raise ConfigError(f"{where}[{i}]: expected base, trained, distilled, label=path or a model, "
                              f"got {entry!r}")
        if ref not in RUN_MODELS:
            check_model_ref(ref, f"{where}[{i}]")


# ------------------------------------------------------------------------------------- files and data

def _looks_like_file(source: str) -> bool:
    return is_path_like(source) or source.endswith((".jsonl", ".json")) or Path(source).expanduser().is_file()


def check_prompt_source(source: str, where: str, builtin: str) -> None:
    """A prompt file must exist and parse (errors name the file and line); 'builtin' and HF dataset names
    pass (datasets are loaded when first used)."""
    from .prompts import PromptSourceError, read_prompt_jsonl

    if source == "builtin" or not _looks_like_file(source):
        return
    p = Path(source).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}: {source}: no such file (expected 'builtin', a JSONL file of prompts or an "
                          "HF dataset name)")
    try:
        if not read_prompt_jsonl(p):
            raise ConfigError(f"{where}: {p}: no prompts (expected one JSON object a line with a 'prompt')")
    except PromptSourceError as e:
        raise ConfigError(f"{where}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {p}: not UTF-8 text (expected JSONL)") from None


def check_persona(cfg: RunConfig, where: str) -> None:
    from .constitution import ConstitutionError, load

    try:
        load(cfg.persona)
    except ConstitutionError as e:
        raise ConfigError(f"{where}.persona: {e}") from None


# ------------------------------------------------------------------------- TRL / peft argument names

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


def _own_fields(node: ast.ClassDef) -> set[str]:
    out = set()
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if "ClassVar" in ast.unparse(stmt.annotation):
            continue
        v = stmt.value
        if isinstance(v, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                           and k.value.value is False for k in v.keywords):
            continue
        out.add(stmt.target.id)
    return out


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def source_fields(module: str, cls: str, depth: int = 0) -> set[str] | None:
    """The ``__init__`` fields of dataclass ``cls`` as importable from ``module``, bases included, read from
    source without importing anything; None when the source cannot be followed."""
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
                        return source_fields(_resolve_from(module, path, imp), alias.name, depth + 1)
        return None
    fields: set[str] = set()
    for base in node.bases:
        if isinstance(base, ast.Subscript) or (isinstance(base, ast.Name) and base.id in ("object", "Generic")):
            continue
        if not isinstance(base, ast.Name):
            return None
        inherited = source_fields(module, base.id, depth + 1)
        if inherited is None:
            return None
        fields |= inherited
    return fields | _own_fields(node) if _is_dataclass_def(node) else fields


# what a dict passes to -> (module to read, class, sanity fields that must be found)
ARG_CLASSES = {
    "trl DPOConfig": ("trl", "DPOConfig", {"learning_rate", "beta", "output_dir"}),
    "trl SFTConfig": ("trl", "SFTConfig", {"learning_rate", "max_length", "output_dir"}),
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


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_arguments(given: dict, which: str, where: str) -> None:
    if not given:
        return
    known = argument_names(which)
    for key in given:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{_did_you_mean(str(key), known)}; expected a {which} "
                              "argument")


# ------------------------------------------------------------------------------------------- commands

def _done(cfg: RunConfig, stage: str) -> bool:
    return (run_dir(cfg.name) / stage / "manifest.json").exists()


def check(cfg: RunConfig, command: str, where: str = "config", force: bool = False) -> None:
    """Everything ``command`` (a stage, 'train', an evaluation or 'all') needs from ``cfg``, before any work.

    Models a finished stage no longer needs (the teacher once distillation is done) are not checked."""
    training = command in TRAINING
    evals = EVALS if command == "all" else (command,) if command in EVALS else ()
    check_persona(cfg, where)
    specs: list[tuple[ModelSpec, str]] = [(cfg.student, f"{where}.student")]
    if training:
        teacher = command != "expand" and (not _done(cfg, "distill") or (force and command in ("distill", "train")))
        expander = cfg.expand.enabled and (not _done(cfg, "expand") or (force and command in ("expand", "train")))
        if teacher or (expander and cfg.expand.model == cfg.distill.teacher):  # expand.model defaults to it
            specs.append((cfg.distill.teacher, f"{where}.distill.teacher"))
        if expander and cfg.expand.model != cfg.distill.teacher:
            specs.append((cfg.expand.model, f"{where}.expand.model"))
        check_prompt_source(cfg.distill.general_source, f"{where}.distill.general_source", "general")
        check_arguments(cfg.dpo.trl, "trl DPOConfig", f"{where}.dpo.trl")
        check_arguments(cfg.dpo.lora, "peft LoraConfig", f"{where}.dpo.lora")
        check_arguments(cfg.sft.trl, "trl SFTConfig", f"{where}.sft.trl")
        check_arguments(cfg.sft.lora, "peft LoraConfig", f"{where}.sft.lora")
    if "preferences" in evals:
        p = cfg.preferences
        if p.judge is not None:
            specs.append((p.judge, f"{where}.preferences.judge"))
        if p.judge_mode == "logprob":
            from .backends import SCORE_OPTIONS, require

            try:
                require(p.judge or cfg.student, SCORE_OPTIONS, f"{where}.preferences.judge_mode=logprob")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        check_model_list(p.models, f"{where}.preferences.models")
        check_prompt_source(p.prompt_source, f"{where}.preferences.prompt_source", "preference_prompts")
        from .prompts import PromptSourceError, traits

        try:
            traits(p.traits)
        except PromptSourceError as e:
            raise ConfigError(f"{where}.preferences.traits: {e}") from None
    if "robustness" in evals:
        r = cfg.robustness
        check_prompt_source(r.prompt_source, f"{where}.robustness.prompt_source", "general")
        if r.encoder not in ("minilm", "tfidf"):
            check_model_ref(r.encoder, f"{where}.robustness.encoder")
        from .classifier import TFIDF_DEFAULTS, TORCH_DEFAULTS

        known = TFIDF_DEFAULTS if r.encoder == "tfidf" else TORCH_DEFAULTS
        for key in r.classifier:
            if key not in known:
                raise ConfigError(f"{where}.robustness.classifier: unknown key '{key}' for encoder "
                                  f"'{r.encoder}'{_did_you_mean(str(key), known)} (known: {', '.join(sorted(known))})")
    if "coherence" in evals:
        if cfg.coherence.judge is not None:
            specs.append((cfg.coherence.judge, f"{where}.coherence.judge"))
        check_prompt_source(cfg.coherence.prompt_source, f"{where}.coherence.prompt_source", "preference_prompts")
        check_prompt_source(cfg.distill.general_source, f"{where}.distill.general_source", "general")
    if "capabilities" in evals:
        check_model_list(cfg.capabilities.models, f"{where}.capabilities.models")
    for spec, at in specs:
        check_model_spec(spec, at)
    # Packages last: a wrong path is the more useful message when both are wrong.
    for spec, at in specs:
        deps.require(f"{at} (backend {spec.backend})", *backend_packages(spec))
    if command in ("dpo", "introspect", "sft", "merge", "train"):
        deps.require(f"charter {command}", *TRAIN_PACKAGES)
        from .training import check_setup  # light: the tracking package and bitsandbytes, before any stage runs

        check_setup(cfg.report_to, cfg.dpo.model_kwargs, f"{where}.dpo")
        if command != "dpo":
            check_setup(cfg.report_to, cfg.sft.model_kwargs, f"{where}.sft")
    if command == "capabilities":
        deps.require("charter eval capabilities", "lm_eval")

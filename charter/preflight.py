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


def stages_run(cfg: RunConfig, command: str) -> tuple[str, ...]:
    """The training-pipeline stages ``command`` may run: a stage command runs the missing ones before it;
    ``train`` runs them all (``rl`` when ``rl.enabled``); evaluations run none."""
    if command in STAGE_NAMES:
        return STAGE_NAMES[: STAGE_NAMES.index(command) + 1]
    if command == "train":
        return tuple(n for n in STAGE_NAMES if n != "rl" or cfg.rl.enabled)
    return ()


def _library_error(e: BaseException, given: dict, where: str, which: str) -> ConfigError:
    text = " ".join((str(e) or type(e).__name__).split())
    named = [k for k in given if str(k) in text]
    at = f"{where}.{named[0]}" if len(named) == 1 else where
    return ConfigError(f"{at}: {which} refuses it: {text}")


def check_trainer_values(cfg: RunConfig, command: str, where: str) -> None:
    """Build TRL's DPOConfig/SFTConfig/GRPOConfig and peft's LoraConfig, as the stages will, for every training
    stage ``command`` runs, so a value the libraries refuse fails now and not after hours of generation.
    (Importing TRL takes seconds: this runs last, and only for commands that train. The LoRA targets, which
    depend on the model, are checked when the model is loaded.)"""
    wanted = [s for s in ("dpo", "sft", "rl") if s in stages_run(cfg, command)]
    if not wanted:
        return
    deps.require(f"charter {command}", "trl", "peft")
    import tempfile
    import warnings

    from peft import LoraConfig

    from .training import LORA_DEFAULTS, dpo_args, grpo_args, sft_args

    scratch = str(Path(tempfile.gettempdir()) / "charter-preflight-never-written")
    for name in wanted:
        section = getattr(cfg, name)
        run = {"checkpoint_steps": section.checkpoint_steps, "report_to": "none"}
        if name != "rl":
            run["evaluate"] = section.eval_fraction > 0
        build = {"dpo": lambda s=section, r=run: dpo_args(cfg.seed, scratch, s.trl, s.batch_size, **r),
                 "sft": lambda s=section, r=run: sft_args(cfg.seed, scratch, s.trl, s.batch_size, **r),
                 "rl": lambda s=section, r=run: grpo_args(cfg.seed, scratch, s.trl, **r)}[name]
        which = {"dpo": "trl DPOConfig", "sft": "trl SFTConfig", "rl": "trl GRPOConfig"}[name]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any refusal of the library is the config's problem
            raise _library_error(e, section.trl, f"{where}.{name}.trl", which) from None
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


# ------------------------------------------------------------------------------------------- commands

def _done(cfg: RunConfig, stage: str) -> bool:
    return (run_dir(cfg.name) / stage / "manifest.json").exists()


def launch_plan(cfg: RunConfig, command: str) -> list[str]:
    """The stages ``command`` runs, in order, as the orchestrator plans them (disabled ones left out)."""
    return [n for n in stages_run(cfg, command) if n == command or n != "expand" or cfg.expand.enabled]


def check_launch(cfg: RunConfig, command: str) -> None:
    """Under ``accelerate launch`` (WORLD_SIZE > 1) only training stages run: any other stage the command would
    run, and any evaluation, is refused up front with what to run first (one process would work while the
    others wait in a collective until it times out)."""
    from .distributed import launch_problem, world_size
    from .layout import STAGES

    if world_size() <= 1:
        return
    if command not in TRAINING:
        raise ConfigError(f"charter {'eval ' if command in EVALS or command == 'all' else ''}{command}: runs in one "
                          f"process, not under a multi-process launch (WORLD_SIZE={world_size()}): run it without "
                          "accelerate launch")
    problem = launch_problem(run_dir(cfg.name), launch_plan(cfg, command), {s.name for s in STAGES if s.trains},
                             command)
    if problem:
        raise ConfigError(problem)


def check(cfg: RunConfig, command: str, where: str = "config", force: bool = False) -> None:
    """Everything ``command`` (a stage, 'train', an evaluation or 'all') needs from ``cfg``, before any work.

    Models a finished stage no longer needs (the teacher once distillation is done) are not checked."""
    training = command in TRAINING
    evals = EVALS if command == "all" else (command,) if command in EVALS else ()
    check_launch(cfg, command)
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
        check_arguments(cfg.rl.trl, "trl GRPOConfig", f"{where}.rl.trl")
        check_arguments(cfg.rl.lora, "peft LoraConfig", f"{where}.rl.lora")
        for section, which in (("dpo", "trl DPOConfig"), ("sft", "trl SFTConfig"), ("rl", "trl GRPOConfig")):
            check_argument_values(getattr(cfg, section).trl, which, f"{where}.{section}.trl")
            check_argument_values(getattr(cfg, section).lora, "peft LoraConfig", f"{where}.{section}.lora")
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
    check_trainer_values(cfg, command, where)  # last: it imports TRL and peft (seconds)

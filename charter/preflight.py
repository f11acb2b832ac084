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

from pathlib import Path
from typing import TYPE_CHECKING

from . import deps, registry
from .config import ConfigError, ModelSpec
from .runs import manifest_path, run_dir
from .trl_args import check_argument_values, check_arguments, check_trainer_values, did_you_mean

if TYPE_CHECKING:
    from .config import RunConfig

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
                              f"{did_you_mean(unknown[0], EXTRA_KEYS)} (known: {', '.join(sorted(EXTRA_KEYS))})")
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
        if ref not in (registry.BASE, *registry.run_models()):
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


# ------------------------------------------------------------------------------------------- commands

def stages_run(cfg: RunConfig, command: str) -> tuple[str, ...]:
    """The training-pipeline stages ``command`` may run: a stage command runs the missing ones before it;
    ``train`` runs every enabled one (an optional stage such as ``rl`` only when enabled); evaluations run none."""
    names = registry.stage_names()
    if command in names:
        return names[: names.index(command) + 1]
    if command == "train":
        return tuple(s.name for s in registry.stages() if s.enabled is None or s.enabled(cfg))
    return ()


def _done(cfg: RunConfig, stage: str) -> bool:
    return manifest_path(run_dir(cfg.name) / stage).exists()


def launch_plan(cfg: RunConfig, command: str) -> list[str]:
    """The stages ``command`` runs, in order, as the orchestrator plans them (disabled ones left out)."""
    enabled = {s.name: s.enabled for s in registry.stages()}
    return [n for n in stages_run(cfg, command) if n == command or enabled[n] is None or enabled[n](cfg)]


def check_launch(cfg: RunConfig, command: str) -> None:
    """Under ``accelerate launch`` (WORLD_SIZE > 1) only training stages run: any other stage the command would
    run, and any evaluation, is refused up front with what to run first (one process would work while the
    others wait in a collective until it times out)."""
    from .distributed import launch_problem, world_size

    if world_size() <= 1:
        return
    if command not in (*registry.stage_names(), "train"):
        evaluation = command in registry.eval_names() or command == "all"
        raise ConfigError(f"charter {'eval ' if evaluation else ''}{command}: runs in one process, not under a "
                          f"multi-process launch (WORLD_SIZE={world_size()}): run it without accelerate launch")
    problem = launch_problem(run_dir(cfg.name), launch_plan(cfg, command),
                             {s.name for s in registry.stages() if s.trains}, command)
    if problem:
        raise ConfigError(problem)


def _training_specs(cfg: RunConfig, command: str, where: str, force: bool) -> list[tuple[ModelSpec, str]]:
    """The models the stages ``command`` runs need (each stage's ``preflight``), and the names, types and
    ranges of every training stage's ``trl``/``lora`` dicts."""
    plan = stages_run(cfg, command)
    specs = []
    for s in registry.stages():
        runs = s.name in plan and (not _done(cfg, s.name) or (force and command in (s.name, "train")))
        if s.preflight is not None:
            specs += s.preflight(cfg, where, runs)
    for s in registry.stages():
        if s.trainer is not None:
            section = getattr(cfg, s.name)
            check_arguments(section.trl, s.trainer.trl, f"{where}.{s.name}.trl")
            check_arguments(section.lora, "peft LoraConfig", f"{where}.{s.name}.lora")
    for s in registry.stages():
        if s.trainer is not None:
            section = getattr(cfg, s.name)
            check_argument_values(section.trl, s.trainer.trl, f"{where}.{s.name}.trl")
            check_argument_values(section.lora, "peft LoraConfig", f"{where}.{s.name}.lora")
    seen: set[str] = set()
    return [(spec, at) for spec, at in specs if not (at in seen or seen.add(at))]


def check(cfg: RunConfig, command: str, where: str = "config", force: bool = False) -> None:
    """Everything ``command`` (a stage, 'train', an evaluation or 'all') needs from ``cfg``, before any work.

    Models a finished stage no longer needs (the teacher once distillation is done) are not checked."""
    training = command in (*registry.stage_names(), "train")
    evals = [e for e in registry.eval_order() if command in (e.name, "all")]
    check_launch(cfg, command)
    check_persona(cfg, where)
    specs: list[tuple[ModelSpec, str]] = [(cfg.student, f"{where}.student")]
    if training:
        specs += _training_specs(cfg, command, where, force)
    for e in evals:
        if e.preflight is not None:
            specs += e.preflight(cfg, where)
    for spec, at in specs:
        check_model_spec(spec, at)
    # Packages last: a wrong path is the more useful message when both are wrong.
    for spec, at in specs:
        deps.require(f"{at} (backend {spec.backend})", *backend_packages(spec))
    plan = [registry.stage(n) for n in stages_run(cfg, command)]
    if any(s.trains for s in plan):
        deps.require(f"charter {command}", *TRAIN_PACKAGES)
        from .training import check_setup  # light: the tracking package and bitsandbytes, before any stage runs

        for s in plan:
            if s.trainer is not None and s.trainer.setup:
                check_setup(cfg.report_to, getattr(cfg, s.name).model_kwargs, f"{where}.{s.name}")
    for e in evals:
        if e.packages and command == e.name:
            deps.require(f"charter eval {e.name}", *e.packages)
    check_trainer_values(cfg, plan, where, command)  # last: it imports TRL and peft (seconds)

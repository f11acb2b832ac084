"""The run layout every stage and evaluation shares: where each stage's output lives, and the run models
evaluations compare, both read from the stages' registry entries (``charter.registry``: ``outputs``, ``model``,
``adapter``, ``prompts``), so each path is spelled once.

Low level on purpose (it imports only ``registry``, ``runs`` and ``constitution`` at import time).
Accessors (``pairs``, ``distilled_model``, ``adapters``, ``sft_rows``, ``final_model``, ``steering_dir``)
return the path of a *finished* stage's output and raise ``MissingOutput`` ("run `charter X` first")
otherwise; ``path`` gives the same path unchecked, for the stage that writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import constitution as const
from .registry import eval_folder
from .runs import config_hash, manifest_path, run_dir

if TYPE_CHECKING:
    from .config import RunConfig

STEERING = eval_folder("steering")  # the steering baseline's folder: an evaluation's output that a condition reads


class Output(NamedTuple):
    stage: str  # the folder of the stage that writes it
    sub: str  # the file or folder inside it ('' for the stage folder itself)
    command: str  # what makes it, for the "run ... first" error


def outputs() -> dict[str, Output]:
    """Every stage output another module reads, as the registry's stages declare them, and the steering
    baseline's folder."""
    from . import registry

    out = {key: Output(stage, sub, f"charter {stage}") for key, (stage, sub) in registry.outputs().items()}
    out["steering"] = Output(STEERING, "", "charter eval steering")
    return out


def stage_condition(stage: str) -> str:
    """The condition label of the model stage ``stage`` makes (its registry entry: dpo -> 'distilled')."""
    from . import registry

    return registry.stage(stage).condition


def run_models() -> dict[str, tuple[str, str]]:
    """The models a run makes that evaluations compare: condition label -> (stage folder, model folder)."""
    from . import registry

    return {label: (s.name, s.outputs[s.model]) for label, s in registry.run_models().items()}


def __getattr__(name: str):
    if name == "RUN_MODELS":  # read at run time by modules that index it
        return run_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MissingOutput(RuntimeError):
    """A stage output that has not been made yet; the message says which command makes it."""


def _run(run: RunConfig | Path | str) -> Path:
    if isinstance(run, Path):
        return run
    return run_dir(run) if isinstance(run, str) else run_dir(run.name)


def path(run: RunConfig | Path | str, key: str) -> Path:
    """Where output ``key`` lives (made or not). ``run``: a config, a run folder or a run name."""
    o = outputs()[key]
    d = _run(run) / o.stage
    return d / o.sub if o.sub else d


def finished(run: RunConfig | Path | str, stage: str) -> bool:
    """Whether ``stage`` of the run finished (its manifest is written last)."""
    return manifest_path(_run(run) / stage).exists()


def made(run: RunConfig | Path | str, key: str) -> bool:
    """Whether output ``key`` exists and the stage that writes it finished (a folder alone may still be
    being written)."""
    return finished(run, outputs()[key].stage) and path(run, key).exists()


def need(run: RunConfig | Path | str, key: str, what: str = "") -> Path:
    """The path of a made output, else ``MissingOutput`` naming the command that makes it."""
    p = path(run, key)
    if not made(run, key):
        o = outputs()[key]
        raise MissingOutput(f"{what + ': ' if what else ''}{p} does not exist yet (run `{o.command}` first)")
    return p


def pairs(cfg: RunConfig) -> Path:
    return need(cfg, "pairs")


def pair_texts(run: RunConfig | Path | str) -> list[tuple[str, str, str]]:
    """(user prompt, chosen reply, rejected reply) of each distillation pair, for the detectors that learn the
    persona from them (robustness and the RL reward)."""
    from .runs import read_jsonl

    out = []
    for p in read_jsonl(need(run, "pairs")):
        prompt = next((m["content"] for m in p["prompt"] if m["role"] == "user"), "").strip()
        out.append((prompt, p["chosen"][-1]["content"], p["rejected"][-1]["content"]))
    return out


def trained_prompts(run: RunConfig | Path | str) -> dict[str, list[str]]:
    """The user prompts in each output a stage declares as trained on (``registry.Stage.prompts``) that exists,
    by the stage that wrote it."""
    from . import registry
    from .runs import read_jsonl

    keys, stage_of = registry.trained_prompts(), outputs()
    out: dict[str, list[str]] = {stage_of[k].stage: [] for k in keys}
    for key in keys:
        for row in read_jsonl(path(run, key)):
            p = row.get("prompt")
            if isinstance(p, str):
                out[stage_of[key].stage].append(p)
            elif isinstance(p, list):
                out[stage_of[key].stage] += [m["content"] for m in p if m.get("role") == "user"]
    return out


def distilled_model(cfg: RunConfig) -> Path:
    return need(cfg, "distilled_model")


def adapters(cfg: RunConfig) -> list[Path]:
    """The LoRA adapters trained in sequence (DPO on the base, SFT on base + DPO)."""
    return [need(cfg, "dpo_adapter"), need(cfg, "sft_adapter")]


def sft_rows(cfg: RunConfig) -> Path:
    return need(cfg, "sft_rows")


def final_model(cfg: RunConfig) -> Path:
    return need(cfg, "final_model")


def steering_dir(cfg: RunConfig) -> Path:
    return need(cfg, "steering")


def folds_exactly(dtype: str, device: str = "auto", backend: str = "transformers") -> bool:
    """Whether a folded model computes what training made when run in ``dtype``: only in float32. A LoRA update
    is mostly below half a bf16 rounding step of the weights, so bf16(W + delta) is W again for ~97 % of them
    (measured on the demo); the unmerged adapter (bf16 W, then x A B added) keeps the update, as in training.
    vLLM always computes in half precision unless told float32."""
    from .hardware import resolve_dtype

    if backend == "vllm":
        return dtype in ("float32", "fp32")
    return resolve_dtype(dtype, device) == "float32"


def run_model_source(cfg: RunConfig, label: str, dtype: str | None = None, check: bool = True) -> tuple[str, str | None]:
    """(model, adapter) that compute run model ``label`` ('distilled', 'trained', 'rl') exactly in ``dtype``
    (default the student's): the folded float32 model in float32; else the student's base with the run's combined
    LoRA applied unmerged. ``check``: raise ``MissingOutput`` when it is not made yet."""
    spec = cfg.student
    exact = folds_exactly(dtype or spec.dtype, spec.device, spec.backend)
    if exact:
        return str(run_model(cfg, label) if check else path(cfg, _maker(label).model)), None
    key = _maker(label).adapter
    if check:
        run_model(cfg, label)  # the stage finished (its folded model is the record of it)
        need(cfg, key, f"condition '{label}'")
    return spec.model, str(path(cfg, key))


def _maker(label: str):
    """The stage that makes run model ``label``."""
    from . import registry

    makers = registry.run_models()
    if label not in makers:
        raise ValueError(f"run model '{label}': expected one of {', '.join(makers)}")
    return makers[label]


def run_model(cfg: RunConfig, label: str) -> Path:
    """A run model ('distilled', 'trained' or 'rl') of a finished stage; ``MissingOutput`` otherwise."""
    s = _maker(label)
    p = path(cfg, s.model)
    if not made(cfg, s.model) or not (p / "config.json").exists():
        command = f"charter {s.name}" if s.enabled is not None else "charter train"  # optional: not in train's plan
        raise MissingOutput(f"condition '{label}': {p} does not exist yet (run `{command}` first)")
    return p


# --- the run's persona (what expand made, else the configured constitution) ---------------------------------

def constitution(cfg: RunConfig) -> const.Constitution:
    """The constitution later stages and evaluations use: the expand stage's output when there is one."""
    p = path(cfg, "constitution")
    if cfg.expand.enabled and made(cfg, "constitution"):
        c = const.load_file(p)
        c.source = str(p)
        return c
    return const.load(cfg.persona)


def constitution_id(c: const.Constitution) -> str:
    """The identity of a constitution's content: a stage input, so editing the file redoes what used it."""
    return config_hash(c.to_dict())


def persona_system_prompt(cfg: RunConfig) -> str:
    """The 'prompted' condition's system prompt, also the steering contrast's: the distillation teacher's."""
    from .models import self_name

    return const.teacher_system_prompt(constitution(cfg), self_name(cfg.student.model, cfg.student.name))

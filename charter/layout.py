"""The run layout every stage and evaluation shares: the stage list, where each stage's output lives, and
the run models evaluations compare.

Low level on purpose (it imports only ``config``, ``runs``, ``constitution`` and ``models``): stages,
evaluations, the report and the CLI all read the order and the paths from here, so each path is spelled
once and a new stage is one entry in ``STAGES`` plus its own module ``charter/stages/<name>.py``.

Accessors (``pairs``, ``distilled_model``, ``adapters``, ``sft_rows``, ``final_model``, ``steering_dir``)
return the path of a *finished* stage's output and raise ``MissingOutput`` ("run `charter X` first")
otherwise; ``path`` gives the same path unchecked, for the stage that writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from . import constitution as const
from .config import RunConfig
from .runs import config_hash, run_dir


class StageInfo(NamedTuple):
    name: str  # the command (`charter NAME CONFIG`), the module charter.stages.NAME and the run sub-folder
    help: str
    trains: bool = False  # a training stage: under a multi-process launch it runs on every process


# The training stages in pipeline order. The orchestrator (``charter.stages.train``) runs them in this order;
# a stage module may define ``enabled(cfg)`` (skip it) and ``check(cfg)`` (refuse a set-up before any work).
STAGES: tuple[StageInfo, ...] = (
    StageInfo("expand", "write more prompts per trait with a model"),
    StageInfo("distill", "teacher/student generations -> DPO pairs"),
    StageInfo("dpo", "DPO + LoRA on the distillation pairs, then fold the adapter", trains=True),
    StageInfo("introspect", "self-reflection and self-interaction transcripts -> SFT set"),
    StageInfo("sft", "SFT + LoRA on the introspection transcripts", trains=True),
    StageInfo("merge", "fold DPO and SFT into the final model; export one persona adapter"),
    StageInfo("rl", "online RL (GRPO): persona, judge and coherence rewards, attacks in the loop (rl.enabled)",
              trains=True),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


class EvalInfo(NamedTuple):
    name: str  # `charter eval NAME CONFIG`, the module charter.eval.NAME
    func: str  # the function of that module that runs it: func(cfg, force=, report=)
    help: str


# The evaluations in the order `charter eval all` runs them (steering first: the steered condition needs it).
EVALUATIONS: tuple[EvalInfo, ...] = (
    EvalInfo("steering", "fit", "fit the activation-steering baseline (direction + sweep)"),
    EvalInfo("preferences", "run", "revealed preferences: trait Elo ratings"),
    EvalInfo("robustness", "run", "break-character attacks and prefill, scored by a classifier"),
    EvalInfo("coherence", "run", "pairwise LLM-judge coherence, trained vs each condition"),
    EvalInfo("capabilities", "run", "general benchmarks through lm-evaluation-harness"),
    EvalInfo("traits", "run", "self-reported traits: Anthropic persona evals by log-probability (traits.data)"),
    EvalInfo("drift", "run", "long conversations: in-persona rate by turn, activation monitor, capping"),
    EvalInfo("formats", "run", "JSON, tool calls, code reviews, bullets: format validity and in-persona rate"),
)
EVAL_NAMES: tuple[str, ...] = tuple(e.name for e in EVALUATIONS)
STEERING = "eval-steering"  # the steering baseline's folder: an evaluation's output that a condition reads


class Output(NamedTuple):
    stage: str  # the folder of the stage that writes it
    sub: str  # the file or folder inside it ('' for the stage folder itself)
    command: str  # what makes it, for the "run ... first" error


# Every stage output another module reads; the only place these paths are spelled.
OUTPUTS: dict[str, Output] = {
    "constitution": Output("expand", "constitution.yaml", "charter expand"),
    "pairs": Output("distill", "pairs.jsonl", "charter distill"),
    "teacher_rows": Output("distill", "teacher.jsonl", "charter distill"),
    "distilled_model": Output("dpo", "model", "charter dpo"),
    "dpo_adapter": Output("dpo", "adapter", "charter dpo"),
    "reflections": Output("introspect", "reflection.jsonl", "charter introspect"),
    "sft_rows": Output("introspect", "sft.jsonl", "charter introspect"),
    "sft_adapter": Output("sft", "adapter", "charter sft"),
    "final_model": Output("merge", "model", "charter merge"),
    "persona_adapter": Output("merge", "persona-adapter", "charter merge"),
    "rl_prompts": Output("rl", "prompts.jsonl", "charter rl"),
    "rl_adapter": Output("rl", "adapter", "charter rl"),
    "rl_model": Output("rl", "model", "charter rl"),
    "rl_persona_adapter": Output("rl", "persona-adapter", "charter rl"),
    "steering": Output(STEERING, "", "charter eval steering"),
}

# The models a run makes that evaluations compare: label -> (stage folder, model folder inside it).
RUN_MODEL_KEYS = {"distilled": "distilled_model", "trained": "final_model", "rl": "rl_model"}
# The same models as one LoRA on the student's base (the update of every stage so far, ranks concatenated):
# what a run model is when it computes in a dtype that cannot hold its folded weights (see run_model_source).
RUN_ADAPTER_KEYS = {"distilled": "dpo_adapter", "trained": "persona_adapter", "rl": "rl_persona_adapter"}
RUN_MODELS: dict[str, tuple[str, str]] = {label: (OUTPUTS[key].stage, OUTPUTS[key].sub)
                                          for label, key in RUN_MODEL_KEYS.items()}


# Outputs whose rows record the user prompts a training stage trained on (a row's "prompt": text, or messages
# whose user turns count). Coherence never judges one of them; a new training stage adds its prompt log here.
TRAINED_PROMPTS = ("teacher_rows", "pairs", "reflections", "rl_prompts")


class MissingOutput(RuntimeError):
    """A stage output that has not been made yet; the message says which command makes it."""


def _run(run: RunConfig | Path | str) -> Path:
    if isinstance(run, RunConfig):
        return run_dir(run.name)
    return Path(run) if isinstance(run, Path) else run_dir(run)


def path(run: RunConfig | Path | str, key: str) -> Path:
    """Where output ``key`` lives (made or not). ``run``: a config, a run folder or a run name."""
    o = OUTPUTS[key]
    d = _run(run) / o.stage
    return d / o.sub if o.sub else d


def finished(run: RunConfig | Path | str, stage: str) -> bool:
    """Whether ``stage`` of the run finished (its manifest is written last)."""
    return (_run(run) / stage / "manifest.json").exists()


def made(run: RunConfig | Path | str, key: str) -> bool:
    """Whether output ``key`` exists and the stage that writes it finished (a folder alone may still be
    being written)."""
    return finished(run, OUTPUTS[key].stage) and path(run, key).exists()


def need(run: RunConfig | Path | str, key: str, what: str = "") -> Path:
    """The path of a made output, else ``MissingOutput`` naming the command that makes it."""
    p = path(run, key)
    if not made(run, key):
        o = OUTPUTS[key]
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
    """The user prompts in each ``TRAINED_PROMPTS`` output that exists, by the stage that wrote it."""
    from .runs import read_jsonl

    out: dict[str, list[str]] = {OUTPUTS[k].stage: [] for k in TRAINED_PROMPTS}
    for key in TRAINED_PROMPTS:
        for row in read_jsonl(path(run, key)):
            p = row.get("prompt")
            if isinstance(p, str):
                out[OUTPUTS[key].stage].append(p)
            elif isinstance(p, list):
                out[OUTPUTS[key].stage] += [m["content"] for m in p if m.get("role") == "user"]
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
        return str(run_model(cfg, label) if check else path(cfg, RUN_MODEL_KEYS[label])), None
    key = RUN_ADAPTER_KEYS[label]
    if check:
        run_model(cfg, label)  # the stage finished (its folded model is the record of it)
        need(cfg, key, f"condition '{label}'")
    return spec.model, str(path(cfg, key))


def run_model(cfg: RunConfig, label: str) -> Path:
    """A run model ('distilled', 'trained' or 'rl') of a finished stage; ``MissingOutput`` otherwise."""
    key = RUN_MODEL_KEYS[label]
    p = path(cfg, key)
    if not made(cfg, key) or not (p / "config.json").exists():
        command = "charter rl" if label == "rl" else "charter train"
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

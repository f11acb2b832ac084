"""Run configuration: dataclasses, YAML loading and ``key=value`` overrides.

One YAML file describes one run (persona, models, per-stage settings). Unknown keys are errors that name
the key path, so a typo never silently falls back to a default. TRL/peft arguments are *not* redeclared
here: the ``trl`` and ``lora`` sub-dicts pass straight through to ``DPOConfig``/``SFTConfig``/``LoraConfig``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


from .errors import ConfigError  # noqa: E402,F401  (defined below config so distributed can raise it too)


# Choice-valued fields: checked when a config is loaded (the error names the key and the allowed values).
Backend = Literal["transformers", "openai", "vllm"]
DType = Literal["auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"]
Truncated = Literal["drop", "trim"]
Condition = Literal["base", "prompted", "steered", "distilled", "trained"]


@dataclass
class Sampling:
    temperature: float = field(default=0.7, metadata={"help": "0 means greedy decoding"})
    top_p: float = field(default=0.95, metadata={
        "help": "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens only (0 = off)"})
    repetition_penalty: float = field(default=1.1, metadata={
        "help": "divide the odds of tokens already in the text by this (1 = off)"})
    max_tokens: int = field(default=512, metadata={
        "help": "most new tokens per reply; a reply cut off here is 'truncated'"})


@dataclass
class ModelSpec:
    """Where a model comes from and which backend runs it."""

    model: str = field(default="embedded", metadata={"help": "'embedded' (SmolLM2-135M), a local HF dir or a hub id"})
    backend: Backend = field(default="transformers", metadata={"help": " | ".join(typing.get_args(Backend))})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter dir applied on top of `model`"})
    name: str | None = field(default=None, metadata={"help": "the name the model calls itself; derived if unset"})
    base_url: str | None = field(default=None, metadata={"help": "openai backend: server URL, e.g. http://127.0.0.1:8000/v1"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key"})
    batch_size: int = field(default=32, metadata={"help": "transformers: prompts per generate() call"})
    prefix_cache: bool = field(default=True, metadata={
        "help": "transformers: prefill a prompt prefix shared by a whole batch (a system prompt) once and reuse "
                "its KV cache; vllm: enable_prefix_caching"})
    max_concurrency: int = field(default=8, metadata={"help": "openai: requests in flight"})
    max_retries: int = field(default=5, metadata={"help": "openai: retries of a failed request, with backoff"})
    timeout: float = field(default=300.0, metadata={"help": "openai: seconds before a request is abandoned"})
    dtype: DType = field(default="auto", metadata={
        "help": "auto: bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), float32 elsewhere; "
                "or bfloat16 | float16 | float32"})
    device: str = field(default="auto", metadata={
        "help": "auto (CUDA when there is one, else CPU) | cpu | cuda | cuda:N"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run model code shipped with a hub model (only for models you trust)"})
    extra: dict = field(default_factory=dict, metadata={"help": "backend-specific keyword arguments"})


@dataclass
class ExpandConfig:
    enabled: bool = field(default=True, metadata={
        "help": "run the expand stage; false: later stages use the constitution's own prompts"})
    model: ModelSpec | None = field(default=None, metadata={"help": "defaults to distill.teacher"})
    target: int = field(default=45, metadata={"help": "new prompts wanted per trait"})
    max_traits: int | None = field(default=None, metadata={"help": "expand only the first N traits (smoke runs)"})
    rounds: int = field(default=4, metadata={"help": "generation rounds before giving up on a trait"})
    samples_per_round: int = field(default=1, metadata={"help": "completions per trait per round"})
    max_overlap: float = field(default=0.5, metadata={"help": "reject a prompt sharing more than this share of words"})
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1536), metadata={
        "help": "the expanding model's sampling"})


@dataclass
class DistillConfig:
    teacher: ModelSpec = field(default_factory=ModelSpec, metadata={
        "help": "the in-character teacher (gets the constitution as its system prompt)"})
    samples_per_prompt: int = field(default=5, metadata={"help": "K: teacher/student samples for every prompt"})
    constitution_prompts: int | None = field(default=None, metadata={"help": "cap on constitution prompts (None: all)"})
    general_prompts: int | None = field(default=None, metadata={"help": "general-pool prompts mixed in (None: all)"})
    general_source: str = field(default="builtin", metadata={"help": "'builtin', a JSONL path or an HF dataset name"})
    teacher_sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024), metadata={
        "help": "the teacher's sampling (chosen answers)"})
    student_sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024), metadata={
        "help": "the student's sampling (rejected answers)"})
    reasoning_prefill: bool = field(default=False, metadata={"help": "prefill a <think> block listing the traits"})
    think_end: str = field(default="</think>", metadata={"help": "the tag that closes the teacher's reasoning block"})
    max_length: int = field(default=1024, metadata={"help": "token budget of a whole pair in the student's template"})
    truncated: Truncated = field(default="drop", metadata={"help": "answers cut off by max_tokens: 'drop' them, or 'trim' "
                                                             "them to their last complete sentence"})
    attack_share: float = field(default=0.0, metadata={
        "help": "share of prompts that also get a copy carrying a break-character request from "
                "prompts/train_attacks.yaml (phrasings disjoint from the robustness evaluation's); the teacher is "
                "told to stay itself and answers in character, the student answers plainly. 0 = the paper"})
    teacher_names: list = field(default_factory=list, metadata={
        "help": "extra spellings of the teacher's name or maker to replace with the student's name in chosen "
                "answers (case-insensitive, whole words); its family's usual spellings are always replaced"})
    teacher_examples: str = field(default="", metadata={
        "help": "few-shot exchanges shown to the teacher after its system prompt: '' = none (the paper), "
                "'builtin' = prompts/teacher_examples/<persona>.yaml, or a YAML list of {user, assistant}. "
                "Small teachers follow examples far better than a trait list"})
    chunk_size: int = field(default=64, metadata={"help": "rows generated and committed to disk together"})


BATCH_HELP = ("effective batch: examples per optimizer step over all processes together; gradient accumulation "
              "is derived from it, trl.per_device_train_batch_size and the number of launched processes (an "
              "error when it does not divide). Unset: per_device_train_batch_size x gradient_accumulation_steps "
              "as written in trl for one process (our defaults 2 x 16 = 32), kept on any number of processes")
CHECKPOINT_HELP = ("save a resumable checkpoint (adapter, optimizer, scheduler, RNG, data position) every N optimizer "
                   "steps; a rerun after a crash or kill -9 continues from the last one; 0 = never. Not part of "
                   "the stage's identity: changing it on a live run does not force a restart")
MODEL_KWARGS_HELP = ("keyword arguments for from_pretrained when this stage loads the model it trains: "
                     "attn_implementation (eager | sdpa | flash_attention_2 | ...), device_map (single process "
                     "only), load_in_4bit / load_in_8bit (QLoRA through bitsandbytes: nf4, double quantization, "
                     "compute in the student dtype), quantization_config (BitsAndBytesConfig arguments), "
                     "low_cpu_mem_usage, max_memory, revision. The dtype is student.dtype")
# model_kwargs key -> the types it accepts (checked when the config is loaded)
MODEL_KWARGS = {"attn_implementation": (str,), "device_map": (str, dict), "load_in_4bit": (bool,),
                "load_in_8bit": (bool,), "quantization_config": (dict,), "low_cpu_mem_usage": (bool,),
                "max_memory": (dict,), "revision": (str,)}
MODEL_KWARGS_ELSEWHERE = {"dtype": "student.dtype", "torch_dtype": "student.dtype",
                          "trust_remote_code": "student.trust_remote_code"}


@dataclass
class DPOStageConfig:
    lora: dict = field(default_factory=dict, metadata={"help": "peft LoraConfig arguments (override our defaults)"})
    trl: dict = field(default_factory=dict, metadata={"help": "trl DPOConfig arguments (override our defaults)"})
    sq_logratio_coef: float = field(default=0.001, metadata={"help": "weight of mean (log pi - log ref)^2; 0 disables"})
    nll_average: str = field(default="sequence", metadata={
        "help": "how the NLL term on chosen answers (trl loss_type 'sft', weight 0.1) averages: 'sequence' = "
                "each answer's per-token mean, then the mean over answers (the reference's); 'token' = all chosen "
                "tokens of the micro-batch pooled (TRL's), so long answers weigh more"})
    max_pairs: int | None = field(default=None, metadata={
        "help": "train on the first N pairs only (None: all; smoke runs)"})
    batch_size: int | None = field(default=None, metadata={"help": BATCH_HELP})
    checkpoint_steps: int = field(default=50, metadata={"help": CHECKPOINT_HELP})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "share of prompts held out (all pairs of a prompt together) to log eval loss and reward accuracy "
                "every quarter of training and at the end (manifest: eval_loss, eval_reward_accuracy); 0 = off"})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": MODEL_KWARGS_HELP})


@dataclass
class IntrospectConfig:
    model: ModelSpec | None = field(default=None, metadata={
        "help": "what generates the introspection data; default: this run's distilled model (<run>/dpo/model) "
                "loaded on the student's backend. An openai student cannot load that folder: serve it and set "
                "{backend: openai, base_url: ..., model: <served name>}, or run it here with "
                "{backend: transformers, model: <run>/dpo/model}"})
    reflection_samples: int = field(default=1000, metadata={"help": "samples per self-reflection prompt"})
    free_conversations: int = field(default=1000, metadata={"help": "self-interactions with free guidance"})
    leading_conversations: int = field(default=1000, metadata={
        "help": "self-interactions with leading guidance and openers"})
    turns: int = field(default=10, metadata={"help": "K: messages per self-interaction"})
    reflection_sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=2048), metadata={
        "help": "self-reflection sampling"})
    interaction_sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024), metadata={
        "help": "self-interaction sampling (per turn)"})
    max_context: int = field(default=8192, metadata={"help": "prompt tokens; older whole turns are dropped beyond"})
    truncated: Truncated = field(default="drop", metadata={
        "help": "reflections and self-interaction turns cut off by max_tokens: 'drop' them (a cut-off turn ends "
                "its conversation at the previous turn) or 'trim' them to their last complete sentence"})
    chunk_size: int = field(default=64, metadata={"help": "rows generated and committed to disk together"})


@dataclass
class SFTStageConfig:
    lora: dict = field(default_factory=dict, metadata={"help": "peft LoraConfig arguments (override our defaults)"})
    trl: dict = field(default_factory=dict, metadata={"help": "trl SFTConfig arguments (override our defaults)"})
    max_examples: int | None = field(default=None, metadata={
        "help": "train on the first N transcripts only (None: all; smoke runs)"})
    batch_size: int | None = field(default=None, metadata={"help": BATCH_HELP})
    checkpoint_steps: int = field(default=50, metadata={"help": CHECKPOINT_HELP})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "share of transcripts held out to log eval loss every quarter of training and at the end; 0 = off"})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": MODEL_KWARGS_HELP})


@dataclass
class MergeConfig:
    dtype: DType = field(default="auto", metadata={
        "help": "dtype of saved folded models; auto: the training dtype (float32 on CPUs without native bf16, "
                "where bf16 rounding could erase a small LoRA update)"})


@dataclass
class PreferencesConfig:
    """Revealed preferences: which of two traits a model chooses to act out, judged, rated with Elo."""

    models: list[str] = field(default_factory=lambda: ["base", "trained"],
                         metadata={"help": "what to evaluate: 'base' (the student), 'trained' (this run's final "
                                           "model), 'distilled', or model paths/ids"})
    judge: ModelSpec | None = field(default=None, metadata={"help": "defaults to the student base model"})
    judge_mode: Literal["generate", "logprob"] = field(default="generate", metadata={
        "help": "generate: the judge writes a verdict that is parsed; logprob: a local (transformers) judge "
                "picks the likelier of the two trait words as its answer, so small models always give one"})
    condition: Literal["feel", "like", "random"] = field(default="feel", metadata={"help": "feel | like | random"})
    prompts: int = field(default=500, metadata={"help": "one random trait pair per prompt"})
    prompt_source: str = field(default="builtin", metadata={"help": "'builtin', a JSONL path or an HF dataset name"})
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=512), metadata={
        "help": "the evaluated models' sampling"})
    judge_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.1, repetition_penalty=1.0,
                                                                      max_tokens=256),
                                     metadata={"help": "the judge's sampling"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the confidence intervals"})
    chunk_size: int = field(default=64, metadata={"help": "rows generated and committed to disk together"})
    traits: str = field(default="builtin", metadata={
        "help": "the trait list: builtin (ours, 144 words), reference (the paper's 144 words, so ratings compare "
                "with its figures) or a text file with one lower-case word a line"})
    persona_traits: list[str] = field(default_factory=list, metadata={
        "help": "the persona's own traits, words of that list, whose mean rating change (trained - base) is "
                "reported; empty = the hand-made map in prompts/persona_traits.yaml (shipped personas, shipped "
                "lists)"})


@dataclass
class SteeringConfig:
    """Activation-steering baseline: a persona direction added to the residual stream of middle layers."""

    method: Literal["mean_diff", "pca"] = field(default="mean_diff", metadata={"help": "mean_diff | pca"})
    layers: list[float] = field(default_factory=lambda: [0.125, 0.875],
                         metadata={"help": "[start, end) as fractions of the layer count (middle ~75%)"})
    stems: int = field(default=64, metadata={"help": "contrast stems (with vs without the constitution prompt)"})
    coefficients: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.04, 0.08, 0.16],
                               metadata={"help": "sweep, in units of the mean residual-stream norm"})
    coefficient: float | None = field(default=None, metadata={"help": "fixed coefficient; skips the sweep"})
    sweep_prompts: int = field(default=8, metadata={
        "help": "general prompts answered at every coefficient of the sweep"})
    max_tokens: int = field(default=96, metadata={"help": "most new tokens per sweep reply"})


@dataclass
class RobustnessConfig:
    """Break-character attacks: the share of replies a persona detector, learned from reference texts and
    never from a scored reply, still judges in persona (multi-persona mode: the paper's classifier F1)."""

    conditions: list[Condition] = field(
        default_factory=lambda: ["base", "prompted", "steered", "distilled", "trained"],
        metadata={"help": "the conditions compared: base | prompted | steered | distilled | trained"})
    prompts: int = field(default=500, metadata={"help": "prompts drawn from prompt_source, split train/held-out"})
    prompt_source: str = field(default="builtin", metadata={"help": "'builtin', a JSONL path or an HF dataset name"})
    heldout_fraction: float = field(default=0.5, metadata={
        "help": "share of the prompts held out for scoring (the rest are the detector's)"})
    personas: list[str] = field(default_factory=list,
                           metadata={"help": "multi-persona mode: other runs' names, one label each; "
                                             "empty = single-persona mode (persona vs base)"})
    encoder: str = field(default="minilm", metadata={"help": "minilm | tfidf | an HF encoder id/dir"})
    classifier: dict = field(default_factory=dict, metadata={"help": "encoder training settings (epochs, lr...)"})
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=256), metadata={
        "help": "the conditions' sampling"})
    prefill: bool = field(default=True, metadata={"help": "also run the prefill ('keep going') attack"})
    chunk_size: int = field(default=64, metadata={"help": "rows generated and committed to disk together"})
    reference: Literal["prompted", "pairs", "exemplars"] = field(default="prompted", metadata={
        "help": "single-persona mode: the texts the detector learns the persona from, none of them a scored "
                "reply. prompted: the base model with the persona's system prompt vs the plain base model, both "
                "answering the train prompts; pairs: the distillation pairs' chosen vs rejected replies "
                "(<run>/distill/pairs.jsonl); exemplars: hand-written persona vs plain texts (robustness.exemplars), "
                "so no model, teacher or training pair shaped the detector"})
    exemplars: str = field(default="builtin", metadata={
        "help": "reference=exemplars: 'builtin' (prompts/persona_exemplars/<persona>.yaml) or a YAML file with "
                "'persona' and 'plain' lists of texts"})
    bootstrap: int = field(default=1000, metadata={"help": "resamples of the held-out prompts for the 95% CIs"})


@dataclass
class CoherenceConfig:
    """Pairwise LLM-as-judge coherence: the trained model vs each other condition, both orders."""

    judge: ModelSpec | None = field(default=None, metadata={"help": "defaults to the student base model"})
    against: list[Condition] = field(default_factory=lambda: ["base", "prompted", "steered", "distilled"], metadata={
        "help": "the conditions the trained model is judged against"})
    prompts: int = field(default=100, metadata={"help": "prompts judged (both orders each)"})
    prompt_source: str = field(default="builtin", metadata={
        "help": "'builtin' (the preference_prompts pool: first user messages no training stage uses), a JSONL "
                "path or an HF dataset; every prompt a training stage used is removed from it first"})
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=256), metadata={"help": "replies"})
    judge_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, repetition_penalty=1.0,
                                                                      max_tokens=256),
                                     metadata={"help": "the judge's sampling"})


@dataclass
class CapabilitiesConfig:
    """General benchmarks through lm-evaluation-harness (needs its datasets available locally)."""

    tasks: list[str] = field(default_factory=lambda: ["arc_challenge:25", "hellaswag:10", "truthfulqa_mc1:0",
                                                  "truthfulqa_mc2:0", "winogrande:5", "mmlu:5"],
                             metadata={"help": "lm-evaluation-harness tasks as name:fewshot"})
    models: list[str] = field(default_factory=lambda: ["base", "trained"], metadata={
        "help": "what to evaluate: base | trained | distilled | label=path or a model"})
    limit: int | None = field(default=None, metadata={"help": "examples per task (smoke runs)"})
    batch_size: int = field(default=8, metadata={"help": "lm-evaluation-harness batch size"})


@dataclass
class RunConfig:
    name: str = field(default="run", metadata={
        "help": "the run's folder under $CHARTER_HOME/runs (letters, digits, '.', '_', '-')"})
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(default="none", metadata={
        "help": "where DPO and SFT log their metrics as they train (TensorBoard: event files under "
                "<run>/<stage>/trainer/runs/, readable offline); none = only log_history.json"})
    run_name: str | None = field(default=None, metadata={
        "help": "the name tracking tools show; default the run's name (each stage adds -dpo / -sft)"})
    persona: str = field(default="loving", metadata={"help": "a shipped persona name or a constitution file path"})
    seed: int = field(default=123456, metadata={"help": "seeds every sampled choice and generation"})
    student: ModelSpec = field(default_factory=ModelSpec, metadata={
        "help": "the model being trained (and the base of every comparison)"})
    expand: ExpandConfig = field(default_factory=ExpandConfig, metadata={"help": "stage 1: more prompts per trait"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={
        "help": "stage 2: teacher vs student answers -> DPO pairs"})
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig, metadata={"help": "stage 3: DPO + LoRA on the pairs"})
    introspect: IntrospectConfig = field(default_factory=IntrospectConfig, metadata={
        "help": "stage 4: self-reflection and self-interaction data"})
    sft: SFTStageConfig = field(default_factory=SFTStageConfig, metadata={
        "help": "stage 5: SFT + LoRA on the introspection data"})
    merge: MergeConfig = field(default_factory=MergeConfig, metadata={
        "help": "stage 6: the final model and one persona adapter"})
    preferences: PreferencesConfig = field(default_factory=PreferencesConfig, metadata={
        "help": "evaluation: revealed preferences"})
    steering: SteeringConfig = field(default_factory=SteeringConfig, metadata={
        "help": "evaluation: the activation-steering baseline"})
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig, metadata={
        "help": "evaluation: break-character attacks"})
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig, metadata={
        "help": "evaluation: pairwise coherence judge"})
    capabilities: CapabilitiesConfig = field(default_factory=CapabilitiesConfig, metadata={
        "help": "evaluation: general benchmarks"})


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside a (possibly Optional) annotation, or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


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
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{override}': value is not valid YAML ({e.__class__.__name__})") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Load a run config from YAML (or defaults when ``path`` is None), then apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
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


# --- value checks beyond types: ranges, run names (what needs files or packages is in charter.preflight) ---

def _num(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A range rule: (predicate, what was expected)."""
    def ok(v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return False
        return ((lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))
    lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    if lo is not None and hi is None:
        return ok, f"a number {'>' if lo_open else '>='} {lo}"
    return ok, f"{lo_s}x{hi_s}"


_POS = _num(0, lo_open=True)
_NONNEG = _num(0)
_SHARE = _num(0, 1)
_OPEN_SHARE = _num(0, 1, lo_open=True, hi_open=True)


def _layers_ok(v) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(_SHARE[0](x) for x in v) and v[0] < v[1])


def _tasks_ok(v) -> bool:
    return all(isinstance(e, str) and e.partition(":")[0].strip() and (e.partition(":")[2].strip() or "0").isdigit()
               for e in v)


# class name -> field -> (predicate, what was expected); None values (optional fields) are not checked.
RANGES: dict[str, dict[str, tuple]] = {
    "Sampling": {"temperature": _NONNEG, "top_p": (_num(0, 1, lo_open=True)[0], "0 < top_p <= 1"),
                 "top_k": _NONNEG, "repetition_penalty": _POS, "max_tokens": _POS},
    "ModelSpec": {"batch_size": _POS, "max_concurrency": _POS, "max_retries": _NONNEG, "timeout": _POS},
    "ExpandConfig": {"target": _POS, "max_traits": _POS, "rounds": _POS, "samples_per_round": _POS,
                     "max_overlap": _SHARE},
    "DistillConfig": {"samples_per_prompt": _POS, "constitution_prompts": _NONNEG, "general_prompts": _NONNEG,
                      "max_length": _POS, "chunk_size": _POS, "attack_share": _SHARE},
    "DPOStageConfig": {"sq_logratio_coef": _NONNEG, "max_pairs": _POS, "batch_size": _POS,
                       "checkpoint_steps": _NONNEG, "eval_fraction": _num(0, 1, hi_open=True)},
    "IntrospectConfig": {"reflection_samples": _NONNEG, "free_conversations": _NONNEG,
                         "leading_conversations": _NONNEG, "turns": _num(2), "max_context": _POS,
                         "chunk_size": _POS},
    "SFTStageConfig": {"max_examples": _POS, "batch_size": _POS, "checkpoint_steps": _NONNEG,
                       "eval_fraction": _num(0, 1, hi_open=True)},
    "PreferencesConfig": {"prompts": _POS, "bootstrap": _POS, "chunk_size": _POS},
    "SteeringConfig": {"stems": _POS, "sweep_prompts": _POS, "max_tokens": _POS,
                       "layers": (_layers_ok, "[start, end) with 0 <= start < end <= 1"),
                       "coefficients": (lambda v: bool(v) and all(_num()[0](x) for x in v), "a non-empty list of numbers")},
    "RobustnessConfig": {"prompts": _num(2), "heldout_fraction": _OPEN_SHARE, "bootstrap": _POS, "chunk_size": _POS},
    "CoherenceConfig": {"prompts": _POS},
    "CapabilitiesConfig": {"limit": _POS, "batch_size": _POS,
                           "tasks": (_tasks_ok, "entries 'name:fewshot', e.g. 'arc_challenge:25'")},
    "RunConfig": {"seed": (_num(0, 2 ** 32 - 1)[0], "an integer 0 <= seed < 2**32")},
}


def _walk(obj: Any, path: str):
    """(dataclass instance, its key path) for ``obj`` and every section below it."""
    yield obj, path
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _walk(v, f"{path}.{f.name}")


def validate(cfg: RunConfig, where: str = "config") -> None:
    """Ranges, counts and run names: ConfigError naming the key path, what was expected and the value."""
    from .runs import run_name_problem

    for obj, path in _walk(cfg, where):
        for key, (ok, expected) in RANGES.get(type(obj).__name__, {}).items():
            value = getattr(obj, key, None)
            if value is not None and not ok(value):
                raise ConfigError(f"{path}.{key}: expected {expected}, got {value!r}")
    problem = run_name_problem(cfg.name)
    if problem:
        raise ConfigError(f"{where}.name: {problem}")
    from .distributed import batch_plan  # light: no torch

    for section in ("dpo", "sft"):
        stage = getattr(cfg, section)
        check_model_kwargs(stage.model_kwargs, f"{where}.{section}.model_kwargs")
        batch_plan(stage.trl, stage.batch_size, f"{where}.{section}")  # under a launcher: its process count
    for i, other in enumerate(cfg.robustness.personas):
        problem = run_name_problem(other)
        if problem:
            raise ConfigError(f"{where}.robustness.personas[{i}]: {problem}")


def check_model_kwargs(kwargs: dict, where: str) -> None:
    """Keys and value types of a training stage's ``model_kwargs`` (see MODEL_KWARGS_HELP)."""
    for key, value in kwargs.items():
        if key in MODEL_KWARGS_ELSEWHERE:
            raise ConfigError(f"{where}.{key}: set {MODEL_KWARGS_ELSEWHERE[key]} instead")
        if key not in MODEL_KWARGS:
            import difflib

            close = difflib.get_close_matches(str(key), MODEL_KWARGS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; expected one of {', '.join(MODEL_KWARGS)}")
        types_ = MODEL_KWARGS[key]
        if not isinstance(value, types_) or (bool not in types_ and isinstance(value, bool)):
            names = " or ".join("a mapping" if t is dict else t.__name__ for t in types_)
            raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    if kwargs.get("load_in_4bit") and kwargs.get("load_in_8bit"):
        raise ConfigError(f"{where}: load_in_4bit and load_in_8bit are exclusive; set one")

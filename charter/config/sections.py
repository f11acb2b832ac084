"""The training stages' config sections (expand, distill, dpo, introspect, sft, merge, rl) and the pieces every
section shares (sampling, a model spec). Each field carries its help text (``charter config show``), its value
check and how it counts in the stage's identity (``fields.setting``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from .fields import (NON_NEGATIVE, POSITIVE, SHARE, SHARE_BELOW_1, AsBefore, Check, PrefixCache, Speed, number,
                     setting)

# Choice-valued fields: checked when a config is loaded (the error names the key and the allowed values).
Backend = Literal["transformers", "openai", "vllm", "scripted"]
DType = Literal["auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"]
Truncated = Literal["drop", "trim"]


@dataclass
class Sampling:
    temperature: float = setting(0.7, check=NON_NEGATIVE, help="0 means greedy decoding")
    top_p: float = setting(
        0.95, check=number(0, 1, lo_open=True, expected="0 < top_p <= 1"),
        help="nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)")
    top_k: int = setting(0, check=NON_NEGATIVE, help="sample among the k likeliest tokens only (0 = off)")
    repetition_penalty: float = setting(
        1.1, check=POSITIVE, help="divide the odds of tokens already in the text by this (1 = off)")
    max_tokens: int = setting(
        512, check=POSITIVE, help="most new tokens per reply; a reply cut off here is 'truncated'")


@dataclass
class ModelSpec:
    """Where a model comes from and which backend runs it."""

    model: str = setting("embedded", help="'embedded' (SmolLM2-135M), a local HF dir or a hub id")
    backend: Backend = setting("transformers", help=" | ".join(typing.get_args(Backend)))
    adapter: str | None = setting(None, help="LoRA adapter dir applied on top of `model`")
    name: str | None = setting(None, help="the name the model calls itself; derived if unset")
    base_url: str | None = setting(None, help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = setting("OPENAI_API_KEY", help="environment variable holding the API key")
    batch_size: int = setting(32, check=POSITIVE, identity=Speed(32), help="transformers: prompts per generate() call")
    prefix_cache: bool = setting(
        True, identity=PrefixCache(),
        help="transformers: prefill a prompt prefix shared by a whole batch (a system prompt) once and reuse its KV "
             "cache; vllm: enable_prefix_caching")
    max_concurrency: int = setting(8, check=POSITIVE, identity=Speed(8), help="openai: requests in flight")
    max_retries: int = setting(
        5, check=NON_NEGATIVE, identity=Speed(5), help="openai: retries of a failed request, with backoff")
    timeout: float = setting(
        300.0, check=POSITIVE, identity=Speed(300.0), help="openai: seconds before a request is abandoned")
    dtype: DType = setting(
        "auto",
        help="auto: bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), float32 elsewhere; or bfloat16 "
             "| float16 | float32")
    device: str = setting("auto", help="auto (CUDA when there is one, else CPU) | cpu | cuda | cuda:N")
    trust_remote_code: bool = setting(False, help="run model code shipped with a hub model (only for models you trust)")
    extra: dict = setting({}, help="backend-specific keyword arguments")


@dataclass
class ExpandConfig:
    enabled: bool = setting(True, help="run the expand stage; false: later stages use the constitution's own prompts")
    model: ModelSpec | None = setting(None, help="defaults to distill.teacher")
    target: int = setting(45, check=POSITIVE, help="new prompts wanted per trait")
    max_traits: int | None = setting(None, check=POSITIVE, help="expand only the first N traits (smoke runs)")
    rounds: int = setting(4, check=POSITIVE, help="generation rounds before giving up on a trait")
    samples_per_round: int = setting(1, check=POSITIVE, help="completions per trait per round")
    max_overlap: float = setting(0.5, check=SHARE, help="reject a prompt sharing more than this share of words")
    sampling: Sampling = setting(Sampling(max_tokens=1536), help="the expanding model's sampling")


@dataclass
class DistillConfig:
    teacher: ModelSpec = setting(
        ModelSpec(), help="the in-character teacher (gets the constitution as its system prompt)")
    samples_per_prompt: int = setting(5, check=POSITIVE, help="K: teacher/student samples for every prompt")
    constitution_prompts: int | None = setting(None, check=NON_NEGATIVE, help="cap on constitution prompts (None: all)")
    general_prompts: int | None = setting(None, check=NON_NEGATIVE, help="general-pool prompts mixed in (None: all)")
    general_source: str = setting("builtin", help="'builtin', a JSONL path or an HF dataset name")
    teacher_sampling: Sampling = setting(Sampling(max_tokens=1024), help="the teacher's sampling (chosen answers)")
    student_sampling: Sampling = setting(Sampling(max_tokens=1024), help="the student's sampling (rejected answers)")
    reasoning_prefill: bool = setting(False, help="prefill a <think> block listing the traits")
    think_end: str = setting("</think>", help="the tag that closes the teacher's reasoning block")
    max_length: int = setting(1024, check=POSITIVE, help="token budget of a whole pair in the student's template")
    truncated: Truncated = setting(
        "drop", help="answers cut off by max_tokens: 'drop' them, or 'trim' them to their last complete sentence")
    attack_share: float = setting(
        0.0, check=SHARE,
        help="share of prompts that also get a copy carrying a break-character request from "
             "prompts/train_attacks.yaml (phrasings disjoint from the robustness evaluation's); the teacher is told "
             "to stay itself and answers in character, the student answers plainly. 0 = the paper")
    teacher_names: list = setting(
        [],
        help="extra spellings of the teacher's name or maker to replace with the student's name in chosen answers "
             "(case-insensitive, whole words); its family's usual spellings are always replaced")
    teacher_examples: str = setting(
        "",
        help="few-shot exchanges shown to the teacher after its system prompt: '' = none (the paper), 'builtin' = "
             "prompts/teacher_examples/<persona>.yaml (shipped personas), 'auto' = builtin for a shipped persona, "
             "else <stem>.examples/teacher_examples.yaml beside the constitution file (drafted by `charter "
             "constitution examples CONSTITUTION`), a folder that command wrote, or a YAML list of {user, "
             "assistant}. Small teachers follow examples far better than a trait list")
    chunk_size: int = setting(
        64, check=POSITIVE, identity=Speed(64), help="rows generated and committed to disk together")


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
    lora: dict = setting({}, help="peft LoraConfig arguments (override our defaults)")
    trl: dict = setting({}, help="trl DPOConfig arguments (override our defaults)")
    sq_logratio_coef: float = setting(0.001, check=NON_NEGATIVE, help="weight of mean (log pi - log ref)^2; 0 disables")
    nll_average: str = setting(
        "sequence",
        help="how the NLL term on chosen answers (trl loss_type 'sft', weight 0.1) averages: 'sequence' = each "
             "answer's per-token mean, then the mean over answers (the reference's); 'token' = all chosen tokens of "
             "the micro-batch pooled (TRL's), so long answers weigh more")
    max_pairs: int | None = setting(
        None, check=POSITIVE, help="train on the first N pairs only (None: all; smoke runs)")
    batch_size: int | None = setting(None, check=POSITIVE, identity=AsBefore(None), help=BATCH_HELP)
    checkpoint_steps: int = setting(50, check=NON_NEGATIVE, identity=False, help=CHECKPOINT_HELP)
    eval_fraction: float = setting(
        0.0, check=SHARE_BELOW_1, identity=AsBefore(0.0),
        help="share of prompts held out (all pairs of a prompt together) to log eval loss and reward accuracy every "
             "quarter of training and at the end (manifest: eval_loss, eval_reward_accuracy); 0 = off")
    model_kwargs: dict = setting({}, identity=AsBefore({}), help=MODEL_KWARGS_HELP)


@dataclass
class IntrospectConfig:
    model: ModelSpec | None = setting(
        None,
        help="what generates the introspection data; default: this run's distilled model (<run>/dpo/model) loaded on "
             "the student's backend. An openai student cannot load that folder: serve it and set {backend: openai, "
             "base_url: ..., model: <served name>}, or run it here with {backend: transformers, model: "
             "<run>/dpo/model}")
    reflection_samples: int = setting(1000, check=NON_NEGATIVE, help="samples per self-reflection prompt")
    free_conversations: int = setting(1000, check=NON_NEGATIVE, help="self-interactions with free guidance")
    leading_conversations: int = setting(
        1000, check=NON_NEGATIVE, help="self-interactions with leading guidance and openers")
    turns: int = setting(10, check=number(2), help="K: messages per self-interaction")
    reflection_sampling: Sampling = setting(Sampling(max_tokens=2048), help="self-reflection sampling")
    interaction_sampling: Sampling = setting(Sampling(max_tokens=1024), help="self-interaction sampling (per turn)")
    max_context: int = setting(8192, check=POSITIVE, help="prompt tokens; older whole turns are dropped beyond")
    truncated: Truncated = setting(
        "drop",
        help="reflections and self-interaction turns cut off by max_tokens: 'drop' them (a cut-off turn ends its "
             "conversation at the previous turn) or 'trim' them to their last complete sentence")
    chunk_size: int = setting(
        64, check=POSITIVE, identity=Speed(64), help="rows generated and committed to disk together")


@dataclass
class SFTStageConfig:
    lora: dict = setting({}, help="peft LoraConfig arguments (override our defaults)")
    trl: dict = setting({}, help="trl SFTConfig arguments (override our defaults)")
    max_examples: int | None = setting(
        None, check=POSITIVE, help="train on the first N transcripts only (None: all; smoke runs)")
    batch_size: int | None = setting(None, check=POSITIVE, identity=AsBefore(None), help=BATCH_HELP)
    checkpoint_steps: int = setting(50, check=NON_NEGATIVE, identity=False, help=CHECKPOINT_HELP)
    eval_fraction: float = setting(
        0.0, check=SHARE_BELOW_1, identity=AsBefore(0.0),
        help="share of transcripts held out to log eval loss every quarter of training and at the end; 0 = off")
    model_kwargs: dict = setting({}, identity=AsBefore({}), help=MODEL_KWARGS_HELP)


@dataclass
class MergeConfig:
    dtype: DType = setting(
        "auto",
        help="dtype to store folded models (dpo/model, merge/model, rl/model) in, used only when it keeps the LoRA "
             "update (relative error <= 1e-3); otherwise they are stored in float32, which is exact. A LoRA update "
             "is mostly below bf16's rounding step, so a bf16 fold is refused in practice: each folded model's "
             "charter_fold.json says what a bf16 copy would lose")
    sft_weight: float = setting(
        1.0, identity=AsBefore(1.0),
        help="weight of the introspection (SFT) adapter in the final model: ΔW = ΔW_dpo + sft_weight x ΔW_sft (the "
             "reference uses 0.25; the README has the measurement behind the default)")

REWARD_WEIGHTS = Check(lambda v: all(k in ("persona", "judge", "coherence") and NON_NEGATIVE(w) for k, w in v.items())
                       and any(v.values()), "weights for persona / judge / coherence, >= 0, not all 0")


@dataclass
class RLConfig:
    """Online RL (GRPO) after DPO or SFT: the policy samples replies, rewards score them, TRL updates a LoRA."""

    enabled: bool = setting(False, help="run the stage in `charter train` (`charter rl` always runs)")
    start: Literal["dpo", "sft"] = setting(
        "sft",
        help="the model RL starts from: dpo = the distilled model (<run>/dpo/model), sft = the final model "
             "(<run>/merge/model)")
    prompts: int | None = setting(
        64, check=POSITIVE,
        help="training prompts: a seeded sample of the constitution's (expanded) prompts plus general_prompts "
             "general ones; every prompt of an evaluation pool is removed first (None: all)")
    general_prompts: int = setting(16, check=NON_NEGATIVE, help="of which drawn from the general pool")
    attack_share: float = setting(
        0.5, check=SHARE,
        help="share of prompts that carry a break-character request (training phrasings, never the 8 evaluation "
             "attacks), so the policy learns to keep the persona when asked to drop it")
    rewards: dict = setting(
        {"persona": 1.0, "judge": 0.0, "coherence": 1.0}, check=REWARD_WEIGHTS,
        help="reward weights: persona (detector probability), judge (LLM judge, 0..1), coherence (a penalty in -1..0 "
             "for empty, cut-off, repetitive or off-language replies); 0 leaves a reward out")
    detector: str = setting(
        "minilm",
        help="the persona reward's encoder (minilm | tfidf | an HF encoder); trained on the reference texts only, "
             "with its own seed: never on the policy's samples, never the evaluation's instance")
    reference: Literal["exemplars", "pairs"] = setting(
        "exemplars",
        help="what the persona reward's detector learns from: exemplars (hand-written persona vs plain texts) or "
             "pairs (this run's distillation pairs, chosen vs rejected: the teacher's voice)")
    detector_settings: dict = setting(
        {},
        help="the detector's training settings (as robustness.classifier; model encoders default to 10 epochs here: "
             "80 exemplars underfit in 3)")
    exemplars: str = setting(
        "builtin",
        help="reference=exemplars: builtin (prompts/persona_exemplars/<persona>.yaml, shipped personas), auto "
             "(builtin for a shipped persona, else <stem>.examples/exemplars.yaml beside the constitution file, "
             "drafted by `charter constitution examples CONSTITUTION`), a folder that command wrote, or a YAML with "
             "'persona' and 'plain' lists")
    judge: ModelSpec | None = setting(None, help="the judge reward's model; default the student's base model")
    judge_mode: Literal["logprob", "generate"] = setting(
        "logprob",
        help="logprob: the judge scores the answers 1..5 and the reward is the expected score (small local judges); "
             "generate: it writes a verdict, parsed (unreadable verdicts score 0)")
    lora: dict = setting({}, help="peft LoraConfig arguments (override our defaults)")
    trl: dict = setting(
        {},
        help="trl GRPOConfig arguments (override our defaults: 4 generations a prompt, 64 new tokens, beta 0.05 KL "
             "to the start model, lr 2e-5)")
    checkpoint_steps: int = setting(50, check=NON_NEGATIVE, identity=False, help=CHECKPOINT_HELP)

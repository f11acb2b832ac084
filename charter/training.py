"""The only TRL/peft wrapper: LoRA targets, trainer arguments, the DPO extra term, SFT assistant masks.

Our defaults follow the reference (LoRA r 64 / alpha 128 / dropout 0 on every linear projection of the
language model; lr 5e-5, cosine to 0.1x with 10% warmup, effective batch 32, 1 epoch, DPO beta 0.1 plus
0.1 x NLL on the chosen answer, averaged per answer as the reference does, see ``chosen_nll``). Whatever the
config's ``lora``/``trl`` dicts say is passed straight to ``LoraConfig``/``DPOConfig``/``SFTConfig`` on top of
these defaults, so no TRL argument is redeclared here.
"""

from __future__ import annotations

import copy
import logging
import re

log = logging.getLogger(__name__)

# Submodules that are not the language model (multimodal towers): never LoRA targets.
NON_LM = re.compile(r"(vision|visual|image|audio|speech|multi_modal_projector|mm_projector)", re.I)

LORA_DEFAULTS = {"r": 64, "lora_alpha": 128, "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}


def linear_leaf_names(model) -> list[str]:
    """Leaf names of every nn.Linear in the language model (lm_head and multimodal towers excluded)."""
    import torch.nn as nn

    names = set()
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) and not NON_LM.search(full):
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out", "output"):
                names.add(leaf)
    return sorted(names)


def target_modules_regex(model, requested: list[str] | None = None) -> str:
    """A peft ``target_modules`` regex for the LM's linear layers; requested names must exist (the reference's
    Gemma list named a module, ``gate_up_proj``, that HF Gemma does not have, so its MLP went untrained)."""
    present = linear_leaf_names(model)
    names = requested or present
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"lora.target_modules: {missing} not found in the model; its linear layers are {present}")
    alt = "|".join(re.escape(n) for n in names)
    # Full-name match, excluding multimodal towers whose layers reuse names like q_proj.
    return rf"^(?!.*{NON_LM.pattern}).*\.({alt})$"


def lora_config(model, overrides: dict):
    from peft import LoraConfig

    kw = {**LORA_DEFAULTS, **overrides}
    requested = kw.pop("target_modules", None)
    if isinstance(requested, str) and requested != "all-linear":
        kw["target_modules"] = requested  # a user regex, used as is
    else:
        kw["target_modules"] = target_modules_regex(model, None if requested in (None, "all-linear") else requested)
    return LoraConfig(**kw)


def device_defaults() -> dict:
    """bf16 mixed precision only where bf16 is native (CUDA, CPUs with AVX512-BF16/AMX); on an AVX2-only CPU
    torch emulates it and float32 is several times faster. No gradient checkpointing: short sequences."""
    import torch

    from .hardware import native_bf16

    cuda = torch.cuda.is_available()
    return {"bf16": native_bf16(), "use_cpu": not cuda, "gradient_checkpointing": False,
            "dataloader_num_workers": 0}


from .distributed import ACCUMULATION, PER_DEVICE, batch_plan  # noqa: E402,F401  (re-exported)


def common_defaults(seed: int, output_dir: str) -> dict:
    return {
        "output_dir": output_dir,
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": 0.1,  # a float < 1 is a ratio of total steps
        "per_device_train_batch_size": PER_DEVICE,
        "gradient_accumulation_steps": ACCUMULATION,
        "num_train_epochs": 1,
        "max_grad_norm": 1.0,
        "adam_beta2": 0.98,
        "weight_decay": 0.0,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": False,
        **device_defaults(),
    }


def run_defaults(checkpoint_steps: int = 0, report_to: str = "none", run_name: str | None = None,
                 evaluate: bool = False) -> dict:
    """What a stage's own fields set (the ``trl`` dict still wins): resumable checkpoints every N steps (the
    newest only: rotation deletes the older one after the new one is complete), tracking, the eval split."""
    kw: dict = {"report_to": report_to}
    if run_name:
        kw["run_name"] = run_name
    if checkpoint_steps:
        kw.update(save_strategy="steps", save_steps=checkpoint_steps, save_total_limit=1)
    if evaluate:
        kw.update(eval_strategy="steps", eval_steps=0.25)  # a float < 1: every quarter of the steps
    return kw


def numbers_as_floats(cls, overrides: dict) -> dict:
    """``overrides`` with numbers written as strings turned into floats where ``cls`` declares a float field:
    PyYAML reads ``1e-4`` (no dot) as the string '1e-4', which the optimizer would refuse after the data stages."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(overrides)
    for key, value in overrides.items():
        if isinstance(value, str) and "float" in str(types.get(key, "")):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def _training_kwargs(defaults: dict, overrides: dict, batch_size, where, run: dict) -> tuple[dict, dict]:
    plan = batch_plan(overrides, batch_size, where)
    kw = {**defaults, **run_defaults(**run), **overrides,
          "per_device_train_batch_size": plan["per_device_train_batch_size"],
          "gradient_accumulation_steps": plan["gradient_accumulation_steps"]}
    return kw, plan


def dpo_args(seed: int, output_dir: str, overrides: dict, batch_size: int | None = None, where: str = "dpo",
             **run):
    """DPOConfig: our defaults, then ``run_defaults(**run)``, then the config's ``trl`` dict; gradient
    accumulation from ``batch_plan``. The plan is kept as ``args.charter_batch`` for the manifest."""
    from trl import DPOConfig

    overrides = numbers_as_floats(DPOConfig, overrides)

    # DPOConfig's own defaults (lr 1e-6, gradient checkpointing on) are overridden explicitly here.
    kw, plan = _training_kwargs({**common_defaults(seed, output_dir), "max_length": 1024, "beta": 0.1,
                                 "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.1]},
                                overrides, batch_size, where, run)
    args = DPOConfig(**kw)
    args.charter_batch = plan
    return args


def sft_args(seed: int, output_dir: str, overrides: dict, batch_size: int | None = None, where: str = "sft",
             **run):
    from trl import SFTConfig

    overrides = numbers_as_floats(SFTConfig, overrides)

    kw, plan = _training_kwargs({**common_defaults(seed, output_dir), "max_length": 3072, "dataset_kwargs": {}},
                                overrides, batch_size, where, run)
    args = SFTConfig(**kw)
    args.charter_batch = plan
    return args


def grpo_args(seed: int, output_dir: str, overrides: dict, where: str = "rl", **run):
    """GRPOConfig: our defaults for a small policy on a CPU or one GPU (4 replies a prompt, 64 new tokens, a KL
    to the start model, a LoRA-sized learning rate), then ``run_defaults(**run)``, then the ``trl`` dict."""
    from trl import GRPOConfig

    overrides = numbers_as_floats(GRPOConfig, overrides)

    defaults = {**common_defaults(seed, output_dir), "learning_rate": 2e-5, "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 1, "num_generations": 4, "max_completion_length": 64,
                "beta": 0.05, "temperature": 0.9, "top_p": 1.0, "max_steps": 20, "log_completions": False}
    kw, plan = _training_kwargs(defaults, {"per_device_train_batch_size": defaults["per_device_train_batch_size"],
                                           "gradient_accumulation_steps": 1, **overrides}, None, where, run)
    args = GRPOConfig(**kw)
    args.charter_batch = plan
    return args


def section_identity(section: dict) -> dict:
    """A training section as its stage config records it. Which of its fields count in the stage identity
    (``checkpoint_steps`` never; ``batch_size``, ``eval_fraction`` and ``model_kwargs`` once they leave their
    "as before" values) is declared on its fields (``charter.config.fields``), applied when the identity is
    hashed; the fields left out there are left out of the record too, as they always were."""
    from .config.identity import identity_view

    kept = identity_view({"dpo": section}).get("dpo", {})  # the dpo, sft and rl sections share these rules
    return {k: v for k, v in section.items() if k in kept}


REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}


def check_setup(report_to: str, model_kwargs: dict, where: str) -> None:
    """What a training stage needs beyond its config's types, checked before any work: the tracking
    package, bitsandbytes for 4/8-bit loading, no ``device_map`` under a multi-process launch."""
    from . import deps
    from .config import ConfigError
    from .distributed import world_size

    if report_to in REPORT_PACKAGES and not any(deps.installed(m) for m in REPORT_PACKAGES[report_to]):
        deps.require(f"report_to: {report_to}", REPORT_PACKAGES[report_to][0])
    if model_kwargs.get("load_in_4bit") or model_kwargs.get("load_in_8bit") or "quantization_config" in model_kwargs:
        deps.require(f"{where}.model_kwargs (bitsandbytes quantization)", "bitsandbytes")
    if "device_map" in model_kwargs and world_size() > 1:
        raise ConfigError(f"{where}.model_kwargs.device_map: not with a multi-process launch (WORLD_SIZE="
                          f"{world_size()}): the launcher places each process's copy of the model; remove it")


def load_for_training(ref: str, dtype: str, trust_remote_code: bool, model_kwargs: dict, args=None):
    """The model to train, in train mode, with ``model_kwargs`` passed to ``from_pretrained``. Call it after
    the trainer's arguments exist (``args``, kept alive here): under DeepSpeed ZeRO-3 they register the
    config that makes ``from_pretrained`` shard the weights while loading, and FSDP's RAM-efficient loading
    reads its flag from them, so no process holds the whole model. 4/8-bit loading is QLoRA: the
    quantized base is prepared for k-bit training; the adapter is folded later into an unquantized base."""
    from transformers import AutoModelForCausalLM

    from .models import resolve, torch_dtype

    kw = dict(model_kwargs)
    quant: dict = {}
    if kw.pop("load_in_4bit", False):
        quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                 "bnb_4bit_compute_dtype": torch_dtype(dtype)}
    if kw.pop("load_in_8bit", False):
        quant = {"load_in_8bit": True}
    quant.update(kw.pop("quantization_config", {}))
    if quant:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(**quant)
    model = AutoModelForCausalLM.from_pretrained(resolve(ref), dtype=torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code, **kw)
    if quant:
        from peft import prepare_model_for_kbit_training

        gc = bool(getattr(args, "gradient_checkpointing", False))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    model.train()
    return model


def split_eval(rows: list, fraction: float, seed: int, where: str, key=None) -> tuple[list, list]:
    """(train, held out): a seeded share ``fraction`` of the groups ``key(row)`` (all rows of a group on one
    side, so a held-out prompt is never trained on), at least one group when ``fraction`` > 0."""
    import random

    if fraction <= 0:
        return rows, []
    key = key or (lambda r: id(r))
    groups = list(dict.fromkeys(key(r) for r in rows))
    n = max(1, round(fraction * len(groups)))
    if n >= len(groups):
        raise ValueError(f"{where}.eval_fraction: {fraction} of {len(groups)} groups leaves nothing to train on")
    held = set(random.Random(seed).sample(groups, n))
    return [r for r in rows if key(r) not in held], [r for r in rows if key(r) in held]


NLL_AVERAGES = ("sequence", "token")


def chosen_nll(per_token_logps, mask, average: str = "sequence"):
    """The NLL of the chosen answers in a micro-batch, from per-token log-probs and a 0/1 answer-token mask
    (both [answers, tokens]).

    ``sequence`` (the reference's, OpenRLHF's): each answer's mean NLL per token, then the mean over answers,
    so every answer counts the same. ``token`` (TRL's ``loss_type='sft'``): the mean over all answer tokens of
    the micro-batch pooled, so a long answer counts more than a short one. Answers -1,-3 and -1,-1,-1,-1:
    sequence = (2 + 1) / 2 = 1.5, token = 8 / 6."""
    mask = mask.to(per_token_logps.dtype)
    nll = -(per_token_logps * mask)
    if average == "sequence":
        return (nll.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if average == "token":
        return nll.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"dpo.nll_average: expected one of {', '.join(NLL_AVERAGES)}, got {average!r}")


def make_dpo_trainer(model, tokenizer, dataset, args, lora, sq_logratio_coef: float, nll_average: str = "sequence",
                     eval_dataset=None):
    """A TRL DPOTrainer (peft LoRA, reference = base with the adapter off) plus the reference's loss terms
    that TRL computes differently or not at all, added by capturing the per-token log-probs of TRL's own
    policy and reference forwards, not by forking its loss:

    - NLL on the chosen answer (``loss_type`` 'sft' in ``args``, with its ``loss_weights`` entry): with
      ``nll_average='sequence'`` (default, the reference's) it is taken out of TRL's loss types and computed
      here by ``chosen_nll``; with 'token' TRL's own pooled version is kept.
    - when ``sq_logratio_coef`` > 0: coef x mean over chosen and rejected sequences of the per-token mean of
      (log pi - log pi_ref)^2 over answer tokens."""
    from trl import DPOTrainer

    if nll_average not in NLL_AVERAGES:
        raise ValueError(f"dpo.nll_average: expected one of {', '.join(NLL_AVERAGES)}, got {nll_average!r}")
    nll_weight = 0.0
    if nll_average == "sequence" and "sft" in args.loss_type:
        weights = list(args.loss_weights or [1.0] * len(args.loss_type))
        i = list(args.loss_type).index("sft")
        nll_weight = weights.pop(i)
        args = copy.copy(args)  # the caller's DPOConfig keeps its loss types
        args.loss_type = [t for j, t in enumerate(args.loss_type) if j != i]
        args.loss_weights = weights
        if not args.loss_type:
            raise ValueError("trl.loss_type: 'sft' alone is not a DPO loss; add e.g. 'sigmoid'")

    class CharterDPOTrainer(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            need_sq = sq_logratio_coef > 0 and not self.precompute_ref_logps
            if not need_sq and not nll_weight:
                return super()._compute_loss(model, inputs, return_outputs)
            captured = []
            target = self.accelerator.unwrap_model(self.model)
            handle = target.register_forward_hook(lambda m, a, kw, out: captured.append(out.log_probs),
                                                  with_kwargs=True)
            try:
                result = super()._compute_loss(model, inputs, return_outputs)
            finally:
                handle.remove()
            forwards = 1 if self.precompute_ref_logps else 2  # policy, then reference unless precomputed
            if len(captured) != forwards:  # anything else: TRL changed shape
                raise RuntimeError(f"expected {forwards} forward passes in DPO loss, saw {len(captured)}")
            mask = inputs["completion_mask"][..., 1:].to(captured[0].dtype)
            n = mask.size(1)
            policy = captured[0][:, -n:]
            mode = "train" if self.model.training else "eval"
            extra = 0.0
            if nll_weight:
                chosen, _ = policy.chunk(2, dim=0)  # the batch is [chosen..., rejected...]
                chosen_mask, _ = mask.chunk(2, dim=0)
                nll = chosen_nll(chosen, chosen_mask, "sequence")
                extra = extra + nll_weight * nll
                self._metrics[mode]["nll"].append(nll.item())
            if need_sq:
                diff = policy - captured[1][:, -n:].detach()
                per_seq = ((diff ** 2) * mask).sum(1) / mask.sum(1).clamp(min=1)
                extra = extra + sq_logratio_coef * per_seq.mean()
                self._metrics[mode]["sq_logratio"].append(per_seq.mean().item())
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra

    return CharterDPOTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                             processing_class=tokenizer, peft_config=lora)


# --- SFT: loss on every assistant turn, for any chat template -----------------------------------------

class TemplateMaskError(ValueError):
    pass


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    A turn's span runs from the end of the prompt that precedes it (with the generation header) to the end
    of the conversation rendered through it, so it covers the turn's text and its end-of-turn marker. This
    needs no ``{% generation %}`` markers, only a template that renders prefixes consistently.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise TemplateMaskError(
                "the chat template does not render conversations prefix-consistently (e.g. it rewrites earlier "
                "turns), so assistant turns cannot be located"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_with_assistant_mask(tokenizer, messages: list[dict]) -> dict:
    """``input_ids`` and ``assistant_masks`` (1 on assistant-turn tokens) for one conversation."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
    return {"input_ids": enc["input_ids"], "assistant_masks": mask}


def make_sft_trainer(model, tokenizer, dataset, args, lora, eval_dataset=None):
    """TRL SFTTrainer on a pre-tokenized dataset: TRL turns ``assistant_masks`` into -100 labels."""
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer, peft_config=lora)


def save_trained(trainer, out) -> None:
    """Save the adapter through the trainer, on every process: it gathers ZeRO-3 / FSDP shards and writes on
    the main process. FSDP saves nothing through ``save_model`` under a sharded state-dict type (its
    checkpoints use that), so the final save switches to a full one, as TRL's own scripts do."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))


def trainable_state(model) -> dict:
    """Copies of trainable (LoRA) and frozen parameters, for before/after checks."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_counts(trainer, args, result, resumed, eval_metrics: dict) -> dict:
    """What every training stage's manifest says about the run: batch plan, steps, resume, eval."""
    plan = args.charter_batch
    counts = {"steps": trainer.state.global_step, "world_size": plan["world_size"],
              "effective_batch": plan["effective_batch"], "per_device_batch": plan["per_device_train_batch_size"],
              "gradient_accumulation_steps": plan["gradient_accumulation_steps"],
              "resumed_from_step": int(resumed.name.split("-")[-1]) if resumed else 0,
              "train_loss": round(result.training_loss, 4),
              "train_seconds": round(result.metrics.get("train_runtime", 0), 1),
              "samples_per_s": result.metrics.get("train_samples_per_second")}
    if eval_metrics:
        counts["eval_loss"] = eval_metrics.get("eval_loss")
    return counts

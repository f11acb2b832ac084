"""The only TRL/peft wrapper: LoRA targets, trainer arguments, the DPO extra term, SFT assistant masks.

Our defaults follow the reference (LoRA r 64 / alpha 128 / dropout 0 on every linear projection of the
language model; lr 5e-5, cosine to 0.1x with 10% warmup, effective batch 32, 1 epoch, DPO beta 0.1 plus
0.1 x NLL on the chosen answer). Whatever the config's ``lora``/``trl`` dicts say is passed straight to
``LoraConfig``/``DPOConfig``/``SFTConfig`` on top of these defaults, so no TRL argument is redeclared here.
"""

from __future__ import annotations

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


def common_defaults(seed: int, output_dir: str) -> dict:
    return {
        "output_dir": output_dir,
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": 0.1,  # a float < 1 is a ratio of total steps
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 16,  # effective batch 32
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


def dpo_args(seed: int, output_dir: str, overrides: dict):
    from trl import DPOConfig

    # DPOConfig's own defaults (lr 1e-6, gradient checkpointing on) are overridden explicitly here.
    kw = {**common_defaults(seed, output_dir), "max_length": 1024, "beta": 0.1,
          "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.1], **overrides}
    return DPOConfig(**kw)


def sft_args(seed: int, output_dir: str, overrides: dict):
    from trl import SFTConfig

    kw = {**common_defaults(seed, output_dir), "max_length": 3072, "dataset_kwargs": {}, **overrides}
    return SFTConfig(**kw)


def make_dpo_trainer(model, tokenizer, dataset, args, lora, sq_logratio_coef: float):
    """A TRL DPOTrainer (peft LoRA, reference = base with the adapter off) plus, when ``sq_logratio_coef``
    > 0, the reference's extra term: coef x mean over chosen and rejected sequences of the per-token mean
    of (log pi - log pi_ref)^2 over answer tokens. Added on top of TRL by capturing the per-token log-probs
    of TRL's own policy and reference forwards, not by forking its loss."""
    from trl import DPOTrainer

    class CharterDPOTrainer(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            if sq_logratio_coef <= 0 or self.precompute_ref_logps:
                return super()._compute_loss(model, inputs, return_outputs)
            captured = []
            target = self.accelerator.unwrap_model(self.model)
            handle = target.register_forward_hook(lambda m, a, kw, out: captured.append(out.log_probs),
                                                  with_kwargs=True)
            try:
                result = super()._compute_loss(model, inputs, return_outputs)
            finally:
                handle.remove()
            if len(captured) != 2:  # policy then reference forward; anything else: TRL changed shape
                raise RuntimeError(f"expected 2 forward passes in DPO loss, saw {len(captured)}")
            mask = inputs["completion_mask"][..., 1:].to(captured[0].dtype)
            n = mask.size(1)
            diff = captured[0][:, -n:] - captured[1][:, -n:].detach()
            per_seq = ((diff ** 2) * mask).sum(1) / mask.sum(1).clamp(min=1)
            extra = sq_logratio_coef * per_seq.mean()
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["sq_logratio"].append(per_seq.mean().item())
            if return_outputs:
                return result[0] + extra, result[1]
            return result + extra

    return CharterDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)


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


def make_sft_trainer(model, tokenizer, dataset, args, lora):
    """TRL SFTTrainer on a pre-tokenized dataset: TRL turns ``assistant_masks`` into -100 labels."""
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def trainable_state(model) -> dict:
    """Copies of trainable (LoRA) and frozen parameters, for before/after checks."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}

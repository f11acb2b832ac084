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


def make_dpo_trainer(model, tokenizer, dataset, args, lora, sq_logratio_coef: float, nll_average: str = "sequence"):
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

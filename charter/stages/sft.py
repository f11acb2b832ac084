"""Stage 5, SFT: LoRA-train the distilled model on its own introspection transcripts.

    charter sft configs/demo.yaml [key=value ...]

Reads ``introspect/sft.jsonl``, trains on top of the distilled model with the loss on every assistant turn
and nothing else (masks computed for any chat template, see ``assistant_spans``); writes
``sft/adapter``. In float32 the distilled model is ``dpo/model`` (folded, exact); in bf16/fp16 it is the base
with the DPO adapter frozen and unmerged beside the new one, since a bf16 copy of the folded weights would have
lost most of the DPO update before SFT saw it. Conversations longer than ``max_length`` lose whole early
turns, never the system prompt.
Checkpoints, resume and multi-process launches are the shared skeleton's (``training.train_lora_stage``), as
in the DPO stage.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..messages import drop_oldest_turn
from ..runs import derive_seed, read_jsonl
from ..training import LoraStage, StageData

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    from ..training import section_identity

    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "sft": section_identity(dataclasses.asdict(cfg.sft))}


# --- the loss on every assistant turn, for any chat template ----------------------------------------------

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


def tokenize_rows(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], Counter]:
    """Tokenize with assistant masks, shortening over-long conversations by whole early turns."""
    out, notes = [], Counter()
    for r in rows:
        msgs = r["messages"]
        enc = tokenize_with_assistant_mask(tokenizer, msgs)
        while len(enc["input_ids"]) > max_length and (shorter := drop_oldest_turn(msgs)):
            msgs = shorter
            notes["shortened"] += 1
            enc = tokenize_with_assistant_mask(tokenizer, msgs)
        if len(enc["input_ids"]) > max_length:
            notes["dropped_too_long"] += 1
            continue
        if not any(enc["assistant_masks"]):
            notes["dropped_no_assistant_turn"] += 1
            continue
        out.append(enc)
    return out, notes


FROZEN = "frozen-dpo"


def stack_on_frozen(model, frozen: str, lora):
    """``model`` + the saved adapter ``frozen`` (not trained) + a new trainable LoRA ``lora`` named 'default',
    both applied unmerged in every forward: training sees base + DPO exactly in any dtype. Only the new
    adapter's weights require gradients, and it is the one saved at the adapter folder's root."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, frozen, adapter_name=FROZEN, is_trainable=False)
    peft.add_adapter("default", lora)
    peft.base_model.set_adapter(["default", FROZEN])  # both active; set_adapter marks both trainable
    for name, p in peft.named_parameters():
        p.requires_grad = "lora_" in name and ".default." in name
    if not any(p.requires_grad for p in peft.parameters()):
        raise RuntimeError("sft: the new LoRA has no trainable weights (peft changed how adapters are named)")
    return peft


class SFTStage(LoraStage):
    """SFT on the introspection transcripts, on top of the distilled model; keeps only its adapter (the merge
    stage folds it together with DPO's)."""

    name = "sft"

    def stage_config(self, cfg: RunConfig) -> dict:
        return stage_config(cfg)

    def args(self, cfg: RunConfig, output_dir: str, **run):
        from ..training import sft_args

        return sft_args(cfg.seed, output_dir, cfg.sft.trl, cfg.sft.batch_size, **run)

    def data(self, cfg: RunConfig, args) -> StageData:
        from ..models import load_tokenizer
        from ..training import split_eval

        self.base, self.frozen = layout.run_model_source(cfg, layout.stage_condition("dpo"))
        rows = read_jsonl(layout.sft_rows(cfg))[: cfg.sft.max_examples]
        if not rows:
            raise RuntimeError(f"{layout.sft_rows(cfg)} is empty: nothing to train on (see the introspect manifest)")
        self.tok = load_tokenizer(self.base)
        data, notes = tokenize_rows(rows, self.tok, args.max_length)
        if not data:
            raise RuntimeError(f"no SFT example fits max_length={args.max_length}: {dict(notes)}")
        train, held = split_eval(data, cfg.sft.eval_fraction, derive_seed(cfg.seed, "sft-eval"), "sft")
        return StageData(train, held, dict(notes))

    def trainer(self, cfg: RunConfig, args, data: StageData):
        from datasets import Dataset

        from ..training import load_for_training, lora_config

        s = cfg.sft
        model = load_for_training(self.base, cfg.student.dtype, cfg.student.trust_remote_code, s.model_kwargs, args)
        lora = lora_config(model, s.lora)
        if self.frozen:
            model, lora = stack_on_frozen(model, self.frozen, lora), None
        return make_sft_trainer(model, self.tok, Dataset.from_list(data.train), args, lora,
                                eval_dataset=Dataset.from_list(data.held) if data.held else None)

    def adapter_path(self, cfg: RunConfig) -> Path:
        return layout.path(cfg, "sft_adapter")

    def saved(self, adapter: Path) -> None:
        if self.frozen:  # peft saves every adapter of the model: the frozen DPO copy lands in a subfolder
            import shutil

            shutil.rmtree(adapter / FROZEN, ignore_errors=True)

    def counts(self, data: StageData, trained: dict, trainer, eval_metrics: dict) -> dict:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        counts = {"examples": len(data.train), **trained, **data.counts,
                  "first_loss": losses[0], "last_loss": losses[-1],
                  "assistant_tokens": sum(sum(d["assistant_masks"]) for d in data.train),
                  "tokens": sum(len(d["input_ids"]) for d in data.train)}
        if data.held:
            counts.update(eval_examples=len(data.held),
                          eval_token_accuracy=eval_metrics.get("eval_mean_token_accuracy"))
        return counts

    def outputs(self, cfg: RunConfig, stage, counts: dict, folded: dict) -> dict:
        return {"base": self.base, **({"frozen_adapter": self.frozen} if self.frozen else {})}


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..training import train_lora_stage

    return train_lora_stage(SFTStage(), cfg, force)


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"sft: {n['steps']} steps on {n['examples']} transcripts ({n['assistant_tokens']}/{n['tokens']} "
            f"tokens in the loss), loss {n['first_loss']:.3f} -> {n['last_loss']:.3f}, {manifest['seconds']:.0f}s")

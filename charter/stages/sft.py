"""Stage 5, SFT: LoRA-train the distilled model on its own introspection transcripts.

    charter sft configs/demo.yaml [key=value ...]

Reads ``introspect/sft.jsonl``, trains on top of the distilled model with the loss on every assistant turn
and nothing else (masks computed for any chat template, see ``training.assistant_spans``); writes
``sft/adapter``. In float32 the distilled model is ``dpo/model`` (folded, exact); in bf16/fp16 it is the base
with the DPO adapter frozen and unmerged beside the new one, since a bf16 copy of the folded weights would have
lost most of the DPO update before SFT saw it. Conversations longer than ``max_length`` lose whole early turns, never the system prompt.
Checkpoints, resume and multi-process launches work as in the DPO stage (``charter.stages.dpo``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..messages import drop_oldest_turn
from ..runs import Stage, derive_seed, read_jsonl, run_dir, write_json_atomic

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    from ..training import section_identity

    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "sft": section_identity(dataclasses.asdict(cfg.sft))}


def tokenize_rows(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], Counter]:
    """Tokenize with assistant masks, shortening over-long conversations by whole early turns."""
    from ..training import tokenize_with_assistant_mask

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


def run(cfg: RunConfig, force: bool = False) -> Path:
    from datasets import Dataset

    from ..distributed import drop_checkpoints, last_checkpoint, on_main, require_upstream, world_size
    from ..models import load_tokenizer
    from ..training import (check_setup, load_for_training, lora_config, make_sft_trainer, save_trained, sft_args,
                            split_eval, train_counts)

    s, rd = cfg.sft, run_dir(cfg.name)
    check_setup(cfg.report_to, s.model_kwargs, "sft")
    # Arguments before the model (see dpo.run): process group, ZeRO-3 / FSDP loading.
    args = sft_args(cfg.seed, str(rd / "sft" / "trainer"), s.trl, s.batch_size, checkpoint_steps=s.checkpoint_steps,
                    report_to=cfg.report_to, run_name=f"{cfg.run_name or cfg.name}-sft", evaluate=s.eval_fraction > 0)
    require_upstream(rd, "introspect", "sft")  # the orchestrator made it single-process; a launch only checks
    stage = Stage.after(rd, "sft", stage_config(cfg), ["dpo", "introspect"])
    if not on_main(lambda: stage.begin(force), args):
        return stage.dir
    base, frozen = layout.run_model_source(cfg, "distilled")
    rows = read_jsonl(layout.sft_rows(cfg))[: s.max_examples]
    if not rows:
        raise RuntimeError(f"{layout.sft_rows(cfg)} is empty: nothing to train on (see the introspect manifest)")
    tok = load_tokenizer(base)
    data, notes = tokenize_rows(rows, tok, args.max_length)
    if not data:
        raise RuntimeError(f"no SFT example fits max_length={args.max_length}: {dict(notes)}")
    train, held = split_eval(data, s.eval_fraction, derive_seed(cfg.seed, "sft-eval"), "sft")
    model = load_for_training(base, cfg.student.dtype, cfg.student.trust_remote_code, s.model_kwargs, args)
    lora = lora_config(model, s.lora)
    if frozen:
        model, lora = stack_on_frozen(model, frozen, lora), None
    trainer = make_sft_trainer(model, tok, Dataset.from_list(train), args, lora,
                               eval_dataset=Dataset.from_list(held) if held else None)
    resumed = on_main(lambda: last_checkpoint(args.output_dir, world_size(), clean=True), args)
    result = trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"SFT produced a non-finite loss: {losses}")
    adapter = layout.path(cfg, "sft_adapter")
    save_trained(trainer, adapter)
    if frozen:  # peft saves every adapter of the model: the frozen DPO copy lands in a subfolder
        import shutil

        shutil.rmtree(adapter / FROZEN, ignore_errors=True)
    eval_metrics = trainer.evaluate() if held else {}
    counts = {"examples": len(train), **train_counts(trainer, args, result, resumed, eval_metrics), **dict(notes),
              "first_loss": losses[0], "last_loss": losses[-1],
              "assistant_tokens": sum(sum(d["assistant_masks"]) for d in train),
              "tokens": sum(len(d["input_ids"]) for d in train)}
    if held:
        counts.update(eval_examples=len(held), eval_token_accuracy=eval_metrics.get("eval_mean_token_accuracy"))
    log_rows = trainer.state.log_history

    def finish() -> None:
        write_json_atomic(stage.dir / "log_history.json", log_rows)
        stage.finish(counts, adapter=str(adapter), base=base, **({"frozen_adapter": frozen} if frozen else {}))
        drop_checkpoints(Path(args.output_dir))

    on_main(finish, args)
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"sft: {n['steps']} steps on {n['examples']} transcripts ({n['assistant_tokens']}/{n['tokens']} "
            f"tokens in the loss), loss {n['first_loss']:.3f} -> {n['last_loss']:.3f}, {manifest['seconds']:.0f}s")

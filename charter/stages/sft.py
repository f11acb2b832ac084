"""Stage 5, SFT: LoRA-train the distilled model on its own introspection transcripts.

    charter sft configs/demo.yaml [key=value ...]

Reads ``introspect/sft.jsonl``, trains on top of ``dpo/model`` with the loss on every assistant turn and
nothing else (masks computed for any chat template, see ``training.assistant_spans``); writes
``sft/adapter``. Conversations longer than ``max_length`` lose whole early turns, never the system prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

from .. import layout
from ..config import RunConfig
from ..messages import drop_oldest_turn
from ..runs import Stage, read_jsonl, run_dir


def stage_config(cfg: RunConfig) -> dict:
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "sft": dataclasses.asdict(cfg.sft)}


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


def run(cfg: RunConfig, force: bool = False) -> Path:
    from datasets import Dataset

    from ..models import load_causal_lm, load_tokenizer
    from ..training import lora_config, make_sft_trainer, sft_args

    stage = Stage.after(run_dir(cfg.name), "sft", stage_config(cfg), ["dpo", "introspect"])
    if not stage.begin(force):
        return stage.dir
    base = str(layout.distilled_model(cfg))
    rows = read_jsonl(layout.sft_rows(cfg))[: cfg.sft.max_examples]
    if not rows:
        raise RuntimeError(f"{layout.sft_rows(cfg)} is empty: nothing to train on (see the introspect manifest)")
    adapter = layout.path(cfg, "sft_adapter")
    tok = load_tokenizer(base)
    args = sft_args(cfg.seed, str(stage.dir / "trainer"), cfg.sft.trl)
    data, notes = tokenize_rows(rows, tok, args.max_length)
    if not data:
        raise RuntimeError(f"no SFT example fits max_length={args.max_length}: {dict(notes)}")
    model = load_causal_lm(base, dtype=cfg.student.dtype, device="cpu")
    model.train()
    trainer = make_sft_trainer(model, tok, Dataset.from_list(data), args, lora_config(model, cfg.sft.lora))
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"SFT produced a non-finite loss: {losses}")
    trainer.model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    (stage.dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    counts = {"examples": len(data), "steps": trainer.state.global_step, **dict(notes),
              "train_loss": round(result.training_loss, 4), "first_loss": losses[0], "last_loss": losses[-1],
              "assistant_tokens": sum(sum(d["assistant_masks"]) for d in data),
              "tokens": sum(len(d["input_ids"]) for d in data)}
    stage.finish(counts, adapter=str(adapter), base=base)
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"sft: {n['steps']} steps on {n['examples']} transcripts ({n['assistant_tokens']}/{n['tokens']} "
            f"tokens in the loss), loss {n['first_loss']:.3f} -> {n['last_loss']:.3f}, {manifest['seconds']:.0f}s")

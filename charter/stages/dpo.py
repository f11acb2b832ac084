"""Stage 3, DPO: LoRA-train the student to prefer the in-character teacher's answers, then fold the adapter.

    charter dpo configs/demo.yaml [key=value ...]

Reads ``distill/pairs.jsonl``; writes ``dpo/adapter`` (the LoRA) and ``dpo/model`` (base + adapter folded:
the "distilled" model that introspection generates with and SFT trains on).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .. import layout
from ..config import RunConfig
from ..runs import Stage, read_jsonl, run_dir


def stage_config(cfg: RunConfig) -> dict:
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "dpo": dataclasses.asdict(cfg.dpo)}


def load_pairs(path: Path, limit: int | None):
    from datasets import Dataset

    rows = read_jsonl(path)
    if not rows:
        raise RuntimeError(f"{path}: no DPO pairs (the distill stage dropped everything; see its manifest)")
    rows = rows[:limit] if limit else rows
    return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def log_history(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h]


def save_folded(peft_model, tokenizer, out: Path, dtype: str) -> None:
    """Fold the adapter into a copy of the base weights and save a full HF model."""
    from ..models import torch_dtype

    merged = peft_model.merge_and_unload()
    merged.to(torch_dtype(dtype))
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    merged.generation_config.save_pretrained(out)


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..models import load_causal_lm, load_tokenizer
    from ..training import dpo_args, lora_config, make_dpo_trainer

    stage = Stage.after(run_dir(cfg.name), "dpo", stage_config(cfg), ["distill"])
    if not stage.begin(force):
        return stage.dir
    pairs = load_pairs(layout.pairs(cfg), cfg.dpo.max_pairs)
    adapter, folded = layout.path(cfg, "dpo_adapter"), layout.path(cfg, "distilled_model")
    tok = load_tokenizer(cfg.student.model, cfg.student.trust_remote_code)
    model = load_causal_lm(cfg.student.model, dtype=cfg.student.dtype, device="cpu",
                           trust_remote_code=cfg.student.trust_remote_code)
    model.train()
    args = dpo_args(cfg.seed, str(stage.dir / "trainer"), cfg.dpo.trl)
    trainer = make_dpo_trainer(model, tok, pairs, args, lora_config(model, cfg.dpo.lora), cfg.dpo.sq_logratio_coef,
                               cfg.dpo.nll_average)
    result = trainer.train()
    history = log_history(trainer)
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"DPO produced a non-finite loss: {losses}")
    trainer.model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    save_folded(trainer.model, tok, folded, cfg.merge.dtype)
    (stage.dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    counts = {"pairs": len(pairs), "steps": trainer.state.global_step,
              "train_loss": round(result.training_loss, 4),
              "first_margin": margins[0] if margins else None, "last_margin": margins[-1] if margins else None,
              "train_seconds": round(result.metrics.get("train_runtime", 0), 1),
              "samples_per_s": result.metrics.get("train_samples_per_second")}
    stage.finish(counts, adapter=str(adapter), model=str(folded))
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"dpo: {n['steps']} steps on {n['pairs']} pairs, loss {n['train_loss']}, reward margin "
            f"{n['first_margin']} -> {n['last_margin']}, {manifest['seconds']:.0f}s, model {manifest['model']}")

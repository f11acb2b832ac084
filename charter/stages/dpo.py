"""Stage 3, DPO: LoRA-train the student to prefer the in-character teacher's answers, then fold the adapter.

    charter dpo configs/demo.yaml [key=value ...]

Reads ``distill/pairs.jsonl``; writes ``dpo/adapter`` (the LoRA) and ``dpo/model`` (base + adapter folded in
float32 and stored exactly, see ``models.fold_adapter``: the "distilled" model. In float32 introspection
generates with it and SFT trains on it; in bf16 both use base + adapter unmerged, ``layout.run_model_source``).

Crash-safe: a checkpoint every ``dpo.checkpoint_steps`` steps under ``dpo/trainer/``; a rerun after a crash
or ``kill -9`` resumes from the newest complete one (weights, optimizer, scheduler, RNG, data position).
Multi-process (``accelerate launch --num_processes N -m charter.cli dpo ...``): the effective batch stays
the configured one, and only the main process deletes, folds and writes (see ``charter.distributed``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..runs import Stage, derive_seed, read_jsonl, run_dir, write_json_atomic

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    from ..training import section_identity

    # The folded model's dtype (merge.dtype) is part of what DPO makes; left out at its default ('auto') so
    # runs made before it was recorded stay valid.
    fold = {} if cfg.merge.dtype == "auto" else {"fold_dtype": cfg.merge.dtype}
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "dpo": section_identity(dataclasses.asdict(cfg.dpo)), **fold}


def load_rows(path: Path, limit: int | None) -> list[dict]:
    rows = read_jsonl(path)
    if not rows:
        raise RuntimeError(f"{path}: no DPO pairs (the distill stage dropped everything; see its manifest)")
    rows = rows[:limit] if limit else rows
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def load_pairs(path: Path, limit: int | None):
    from datasets import Dataset

    return Dataset.from_list(load_rows(path, limit))


def log_history(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h]


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..distributed import drop_checkpoints, last_checkpoint, on_main, require_upstream, world_size
    from ..models import fold_adapter, fold_info, load_tokenizer
    from ..training import (check_setup, dpo_args, load_for_training, lora_config, make_dpo_trainer, save_trained,
                            split_eval, train_counts)

    d, rd = cfg.dpo, run_dir(cfg.name)
    check_setup(cfg.report_to, d.model_kwargs, "dpo")
    # The trainer's arguments come first: they start the process group, and under ZeRO-3 / FSDP they decide
    # how the model is loaded (sharded, not one whole copy per process).
    args = dpo_args(cfg.seed, str(rd / "dpo" / "trainer"), d.trl, d.batch_size, checkpoint_steps=d.checkpoint_steps,
                    report_to=cfg.report_to, run_name=f"{cfg.run_name or cfg.name}-dpo", evaluate=d.eval_fraction > 0)
    require_upstream(rd, "distill", "dpo")  # the orchestrator made it single-process; a launch only checks
    stage = Stage.after(rd, "dpo", stage_config(cfg), ["distill"])
    if not on_main(lambda: stage.begin(force), args):
        return stage.dir
    rows = load_rows(layout.pairs(cfg), d.max_pairs)
    train_rows, eval_rows = split_eval(rows, d.eval_fraction, derive_seed(cfg.seed, "dpo-eval"), "dpo",
                                       key=lambda r: json.dumps(r["prompt"], sort_keys=True))
    from datasets import Dataset

    tok = load_tokenizer(cfg.student.model, cfg.student.trust_remote_code)
    model = load_for_training(cfg.student.model, cfg.student.dtype, cfg.student.trust_remote_code, d.model_kwargs,
                              args)
    trainer = make_dpo_trainer(model, tok, Dataset.from_list(train_rows), args, lora_config(model, d.lora),
                               d.sq_logratio_coef, d.nll_average,
                               eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None)
    resumed = on_main(lambda: last_checkpoint(args.output_dir, world_size(), clean=True), args)
    result = trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
    history = log_history(trainer)
    losses = [h["loss"] for h in history if "loss" in h]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"DPO produced a non-finite loss: {losses}")
    adapter, folded = layout.path(cfg, "dpo_adapter"), layout.path(cfg, "distilled_model")
    save_trained(trainer, adapter)
    eval_metrics = trainer.evaluate() if eval_rows else {}
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    counts = {"pairs": len(train_rows), **train_counts(trainer, args, result, resumed, eval_metrics),
              "first_margin": margins[0] if margins else None, "last_margin": margins[-1] if margins else None}
    if eval_rows:
        counts.update(eval_pairs=len(eval_rows), eval_reward_accuracy=eval_metrics.get("eval_rewards/accuracies"),
                      eval_margin=eval_metrics.get("eval_rewards/margins"))
    log_rows = trainer.state.log_history
    del trainer, model

    def finish() -> None:
        fold_adapter(cfg.student.model, adapter, folded, cfg.merge.dtype,
                     trust_remote_code=cfg.student.trust_remote_code)
        write_json_atomic(stage.dir / "log_history.json", log_rows)
        stage.finish(counts, adapter=str(adapter), model=str(folded), fold=fold_info(folded))
        drop_checkpoints(Path(args.output_dir))

    on_main(finish, args)
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"dpo: {n['steps']} steps on {n['pairs']} pairs, loss {n['train_loss']}, reward margin "
            f"{n['first_margin']} -> {n['last_margin']}, {manifest['seconds']:.0f}s, model {manifest['model']}")

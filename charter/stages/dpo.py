"""Stage 3, DPO: LoRA-train the student to prefer the in-character teacher's answers, then fold the adapter.

    charter dpo configs/demo.yaml [key=value ...]

Reads ``distill/pairs.jsonl``; writes ``dpo/adapter`` (the LoRA) and ``dpo/model`` (base + adapter folded in
float32 and stored exactly, see ``models.fold_adapter``: the "distilled" model. In float32 introspection
generates with it and SFT trains on it; in bf16 both use base + adapter unmerged, ``layout.run_model_source``).

Crash-safe: a checkpoint every ``dpo.checkpoint_steps`` steps under ``dpo/trainer/``; a rerun after a crash
or ``kill -9`` resumes from the newest complete one (weights, optimizer, scheduler, RNG, data position).
Multi-process (``accelerate launch --num_processes N -m charter.cli dpo ...``): the effective batch stays
the configured one, and only the main process deletes, folds and writes (see ``charter.distributed``). All of
that is the shared skeleton, ``training.train_lora_stage``; this module supplies DPO's rows, its trainer (TRL's
``DPOTrainer`` plus the reference's extra loss terms) and its counts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..runs import derive_seed, read_jsonl
from ..training import LoraStage, StageData

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    from ..training import fold_dtype, section_identity

    # The folded model's dtype (merge.dtype) is part of what DPO makes; left out at its default ('auto') so
    # runs made before it was recorded stay valid.
    fold = {} if fold_dtype(cfg) == "auto" else {"fold_dtype": fold_dtype(cfg)}
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "dpo": section_identity(dataclasses.asdict(cfg.dpo)), **fold}


def load_rows(path: Path, limit: int | None) -> list[dict]:
    rows = read_jsonl(path)
    if not rows:
        raise RuntimeError(f"{path}: no DPO pairs (the distill stage dropped everything; see its manifest)")
    rows = rows[:limit] if limit else rows
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


def log_history(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h or "train_loss" in h]


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


class DPOStage(LoraStage):
    """DPO on the distillation pairs, from the student's base; the adapter is folded into ``dpo/model``."""

    name = "dpo"

    def stage_config(self, cfg: RunConfig) -> dict:
        return stage_config(cfg)

    def args(self, cfg: RunConfig, output_dir: str, **run):
        from ..training import dpo_args

        return dpo_args(cfg.seed, output_dir, cfg.dpo.trl, cfg.dpo.batch_size, **run)

    def data(self, cfg: RunConfig, args) -> StageData:
        from ..training import split_eval

        rows = load_rows(layout.pairs(cfg), cfg.dpo.max_pairs)
        train, held = split_eval(rows, cfg.dpo.eval_fraction, derive_seed(cfg.seed, "dpo-eval"), "dpo",
                                 key=lambda r: json.dumps(r["prompt"], sort_keys=True))
        return StageData(train, held)

    def trainer(self, cfg: RunConfig, args, data: StageData):
        from datasets import Dataset

        from ..models import load_tokenizer
        from ..training import load_for_training, lora_config

        d, s = cfg.dpo, cfg.student
        tok = load_tokenizer(s.model, s.trust_remote_code)
        model = load_for_training(s.model, s.dtype, s.trust_remote_code, d.model_kwargs, args)
        return make_dpo_trainer(model, tok, Dataset.from_list(data.train), args, lora_config(model, d.lora),
                                d.sq_logratio_coef, d.nll_average,
                                eval_dataset=Dataset.from_list(data.held) if data.held else None)

    def adapter_path(self, cfg: RunConfig) -> Path:
        return layout.path(cfg, "dpo_adapter")

    def model_path(self, cfg: RunConfig) -> Path:
        return layout.path(cfg, "distilled_model")

    def fold_source(self, cfg: RunConfig):
        return cfg.student.model, None

    def counts(self, data: StageData, trained: dict, trainer, eval_metrics: dict) -> dict:
        margins = [h["rewards/margins"] for h in log_history(trainer) if "rewards/margins" in h]
        counts = {"pairs": len(data.train), **trained,
                  "first_margin": margins[0] if margins else None, "last_margin": margins[-1] if margins else None}
        if data.held:
            counts.update(eval_pairs=len(data.held), eval_reward_accuracy=eval_metrics.get("eval_rewards/accuracies"),
                          eval_margin=eval_metrics.get("eval_rewards/margins"))
        return counts


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..training import train_lora_stage

    return train_lora_stage(DPOStage(), cfg, force)


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"dpo: {n['steps']} steps on {n['pairs']} pairs, loss {n['train_loss']}, reward margin "
            f"{n['first_margin']} -> {n['last_margin']}, {manifest['seconds']:.0f}s, model {manifest['model']}")

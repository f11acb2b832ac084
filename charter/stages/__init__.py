"""The training stages, in pipeline order: one module each, declared here in the registry.

    charter train CONFIG          # every stage (``train.py``), resumable
    charter STAGE CONFIG          # one stage, after whatever earlier one is missing

Each module provides ``run(cfg, force=False) -> Path`` (its folder under the run), ``summary(manifest)`` and
``stage_config(cfg)`` (the config slice that is its identity). A new stage is one module and one ``Stage``
entry (here, or in a plugin named by ``$CHARTER_PLUGINS``).
"""

from __future__ import annotations

from .. import registry
from ..config.sections import (DistillConfig, DPOStageConfig, ExpandConfig, IntrospectConfig, MergeConfig, RLConfig,
                               SFTStageConfig)
from ..preflight_stages import distill_specs, expand_specs
from ..registry import Stage, Trainer
from . import card_sections as card, distill, dpo, expand, introspect, merge, rl, sft


def _run_fields(section) -> dict:
    return {"checkpoint_steps": section.checkpoint_steps, "report_to": "none"}


def _dpo_args(cfg, s, scratch):
    from ..training import dpo_args

    return dpo_args(cfg.seed, scratch, s.trl, s.batch_size, **_run_fields(s), evaluate=s.eval_fraction > 0)


def _sft_args(cfg, s, scratch):
    from ..training import sft_args

    return sft_args(cfg.seed, scratch, s.trl, s.batch_size, **_run_fields(s), evaluate=s.eval_fraction > 0)


def _grpo_args(cfg, s, scratch):
    from ..training import grpo_args

    return grpo_args(cfg.seed, scratch, s.trl, **_run_fields(s))


for _entry in (
    Stage("expand", "write more prompts per trait with a model", expand.run, expand.summary,
          ExpandConfig, "stage 1: more prompts per trait", outputs={"constitution": "constitution.yaml"},
          enabled=expand.enabled, preflight=expand_specs, card=card.expand),
    Stage("distill", "teacher/student generations -> DPO pairs", distill.run, distill.summary,
          DistillConfig, "stage 2: teacher vs student answers -> DPO pairs", needs=("expand",),
          outputs={"pairs": "pairs.jsonl", "teacher_rows": "teacher.jsonl"}, prompts=("teacher_rows", "pairs"),
          preflight=distill_specs, card=card.distill),
    Stage("dpo", "DPO + LoRA on the distillation pairs, then fold the adapter", dpo.run, dpo.summary,
          DPOStageConfig, "stage 3: DPO + LoRA on the pairs", needs=("distill",),
          outputs={"distilled_model": "model", "dpo_adapter": "adapter"}, model="distilled_model",
          condition=registry.DISTILLED, color="#2a9d8f", adapter="dpo_adapter", trains=True, trainer=Trainer("trl DPOConfig", _dpo_args),
          card=card.dpo),
    Stage("introspect", "self-reflection and self-interaction transcripts -> SFT set", introspect.run,
          introspect.summary, IntrospectConfig, "stage 4: self-reflection and self-interaction data",
          needs=("dpo",), outputs={"reflections": "reflection.jsonl", "sft_rows": "sft.jsonl"},
          prompts=("reflections",), check=introspect.check, card=card.introspect),
    Stage("sft", "SFT + LoRA on the introspection transcripts", sft.run, sft.summary,
          SFTStageConfig, "stage 5: SFT + LoRA on the introspection data", needs=("dpo", "introspect"),
          outputs={"sft_adapter": "adapter"}, trains=True, trainer=Trainer("trl SFTConfig", _sft_args),
          card=card.sft),
    Stage("merge", "fold DPO and SFT into the final model; export one persona adapter", merge.run, merge.summary,
          MergeConfig, "stage 6: the final model and one persona adapter", needs=("dpo", "sft"),
          outputs={"final_model": "model", "persona_adapter": "persona-adapter"}, model="final_model",
          condition=registry.TRAINED, color="#264653", adapter="persona_adapter", card=card.merge),
    Stage("rl", "online RL (GRPO): persona, judge and coherence rewards, attacks in the loop (rl.enabled)", rl.run,
          rl.summary, RLConfig, "optional stage 7: online RL (GRPO) with persona, judge and coherence rewards",
          needs=("dpo",), outputs={"rl_prompts": "prompts.jsonl", "rl_adapter": "adapter", "rl_model": "model",
                                   "rl_persona_adapter": "persona-adapter"},
          model="rl_model", condition=registry.RL, color="#9b2226", adapter="rl_persona_adapter", prompts=("rl_prompts",), trains=True,
          trainer=Trainer("trl GRPOConfig", _grpo_args, setup=False), enabled=rl.enabled, check=rl.check),
):
    registry.register(_entry)

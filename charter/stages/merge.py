"""Stage 6, merge: the final persona model and one persona adapter (blending models is ``charter.blend``).

    charter merge configs/demo.yaml [merge.sft_weight=0.25]

- ``merge/persona-adapter``: one LoRA on the *original* base with the update of both stages: ΔW = ΔW_dpo +
  sft_weight · ΔW_sft, exactly. It concatenates the two adapters' ranks (B = [B1, B2], A = [s1 A1; w s2 A2],
  peft's "cat" combination); the reference's "linear" merge added cross terms B1 A2 + B2 A1, and weighs the
  introspection adapter 0.25 where charter's default is ``merge.sft_weight`` (see the README for the
  measurement behind it).
- ``merge/model``: that adapter folded into the base in float32 (``models.fold_adapter``: stored in
  ``merge.dtype`` only when that keeps the update), a full HF model with tokenizer, chat template and
  generation config. So the folded model and the persona adapter are the same model by construction.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..runs import Stage, run_dir

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    merge = dataclasses.asdict(cfg.merge)
    if merge.get("sft_weight") == 1.0:  # as before the weight existed: finished runs stay valid
        merge.pop("sft_weight")
    return {"student": dataclasses.asdict(cfg.student), "merge": merge}


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..models import fold_adapter, fold_info, persona_adapter, resolve
    from ..training import fold_dtype

    stage = Stage.after(run_dir(cfg.name), "merge", stage_config(cfg), ["dpo", "sft"])
    if not stage.begin(force):
        return stage.dir
    dpo_adapter, sft_adapter = (str(a) for a in layout.adapters(cfg))
    base = resolve(cfg.student.model)
    adapter = persona_adapter(base, [dpo_adapter, sft_adapter], layout.path(cfg, "persona_adapter"),
                              weights=[1.0, cfg.merge.sft_weight])
    model = fold_adapter(base, adapter, layout.path(cfg, "final_model"), fold_dtype(cfg),
                         tokenizer_from=layout.distilled_model(cfg), trust_remote_code=cfg.student.trust_remote_code)
    cfg_a = json.loads((adapter / "adapter_config.json").read_text())
    stage.finish({"persona_adapter_rank": cfg_a.get("r"), "sft_weight": cfg.merge.sft_weight},
                 model=str(model), persona_adapter=str(adapter), base=cfg.student.model, fold=fold_info(model))
    return stage.dir


def summary(manifest: dict) -> str:
    return (f"merge: final model {manifest['model']}, persona adapter {manifest['persona_adapter']} "
            f"(rank {manifest['counts']['persona_adapter_rank']}), {manifest['seconds']:.0f}s")

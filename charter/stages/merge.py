"""Stage 6, merge and export: the final persona model, one persona adapter, and model blending.

    charter merge configs/demo.yaml
    charter blend MODEL_A MODEL_B --weight 0.3 -o blended/

- ``merge/model``: base + DPO folded (``dpo/model``), then the SFT adapter folded on top. A full HF model
  with tokenizer, chat template and generation config.
- ``merge/persona-adapter``: one LoRA on the *original* base that reproduces the folded model. It
  concatenates the two adapters' ranks (B = [s1 B1, s2 B2], A = [A1; A2], peft's "cat" combination), so
  ΔW = s1 B1 A1 + s2 B2 A2 exactly; the reference's "linear" merge added cross terms B1 A2 + B2 A1.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .. import layout
from ..config import RunConfig
from ..runs import Stage, run_dir


def stage_config(cfg: RunConfig) -> dict:
    return {"student": dataclasses.asdict(cfg.student), "merge": dataclasses.asdict(cfg.merge)}


def persona_adapter(base: str, adapters: list[str], out: Path) -> Path:
    """One adapter on ``base`` equal to the sum of ``adapters`` (trained in sequence on folded models)."""
    from peft import PeftModel

    from ..models import load_causal_lm, load_tokenizer, save_model_dir

    model = load_causal_lm(base, dtype="float32", device="cpu")
    names = [f"a{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    model.add_weighted_adapter(names, [1.0] * len(names), "persona", combination_type="cat")
    for name in names:
        model.delete_adapter(name)
    return save_model_dir(model, load_tokenizer(base), out, adapter="persona")


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..models import fold_adapter, resolve

    stage = Stage.after(run_dir(cfg.name), "merge", stage_config(cfg), ["dpo", "sft"])
    if not stage.begin(force):
        return stage.dir
    dpo_adapter, sft_adapter = (str(a) for a in layout.adapters(cfg))
    distilled = layout.distilled_model(cfg)
    model = fold_adapter(str(distilled), sft_adapter, layout.path(cfg, "final_model"), cfg.merge.dtype,
                         tokenizer_from=distilled)
    adapter = persona_adapter(resolve(cfg.student.model), [dpo_adapter, sft_adapter],
                              layout.path(cfg, "persona_adapter"))
    cfg_a = json.loads((adapter / "adapter_config.json").read_text())
    stage.finish({"persona_adapter_rank": cfg_a.get("r")}, model=str(model), persona_adapter=str(adapter),
                 base=cfg.student.model)
    return stage.dir


def blend(a: str, b: str, weight: float, output: str) -> str:
    """Interpolate two models of the same architecture: (1 - weight) * A + weight * B; writes a loadable
    model (weights, config, tokenizer, generation config)."""
    import torch

    from ..models import load_causal_lm, load_tokenizer, save_model_dir

    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight {weight}: expected a value between 0 and 1")
    ma = load_causal_lm(a, dtype="float32", device="cpu")
    mb = load_causal_lm(b, dtype="float32", device="cpu")
    sb = mb.state_dict()
    sa = ma.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError(f"{a} and {b} have different architectures; cannot blend")
    with torch.no_grad():
        for k, v in sa.items():
            if v.is_floating_point():
                v.lerp_(sb[k].to(v.dtype), weight)
    ma.to(torch.bfloat16)  # interpolated in fp32, saved in bf16 like the folded models
    return str(save_model_dir(ma, load_tokenizer(a), Path(output)))


def summary(manifest: dict) -> str:
    return (f"merge: final model {manifest['model']}, persona adapter {manifest['persona_adapter']} "
            f"(rank {manifest['counts']['persona_adapter_rank']}), {manifest['seconds']:.0f}s")

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
import shutil
from pathlib import Path

from .. import layout
from ..config import RunConfig
from ..runs import Stage, run_dir


def stage_config(cfg: RunConfig) -> dict:
    return {"student": dataclasses.asdict(cfg.student), "merge": dataclasses.asdict(cfg.merge)}


def fold(base: str, adapter: str, out: Path, dtype: str) -> Path:
    from ..models import load_causal_lm, load_tokenizer, torch_dtype

    # Fold in fp32 so the adapter is added without bf16 rounding, then store in the requested dtype.
    model = load_causal_lm(base, adapter=adapter, dtype="float32", device="cpu", merge_adapter=True)
    model.to(torch_dtype(dtype))
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    load_tokenizer(base).save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def persona_adapter(base: str, adapters: list[str], out: Path) -> Path:
    """One adapter on ``base`` equal to the sum of ``adapters`` (trained in sequence on folded models)."""
    from peft import PeftModel

    from ..models import load_causal_lm, load_tokenizer

    model = load_causal_lm(base, dtype="float32", device="cpu")
    names = [f"a{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    model.add_weighted_adapter(names, [1.0] * len(names), "persona", combination_type="cat")
    for name in names:
        model.delete_adapter(name)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, selected_adapters=["persona"])
    # peft saves a non-default adapter in a subfolder; flatten so the folder loads as one adapter.
    sub = tmp / "persona"
    if sub.is_dir():
        for f in sub.iterdir():
            f.rename(tmp / f.name)
        sub.rmdir()
    load_tokenizer(base).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..models import resolve

    stage = Stage.after(run_dir(cfg.name), "merge", stage_config(cfg), ["dpo", "sft"])
    if not stage.begin(force):
        return stage.dir
    dpo_adapter, sft_adapter = (str(a) for a in layout.adapters(cfg))
    model = fold(str(layout.distilled_model(cfg)), sft_adapter, layout.path(cfg, "final_model"), cfg.merge.dtype)
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

    from ..models import load_causal_lm, load_tokenizer

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
    out = Path(output)
    ma.to(torch.bfloat16)  # interpolated in fp32, saved in bf16 like the folded models
    ma.save_pretrained(out)
    load_tokenizer(a).save_pretrained(out)
    ma.generation_config.save_pretrained(out)
    return str(out)


def summary(manifest: dict) -> str:
    return (f"merge: final model {manifest['model']}, persona adapter {manifest['persona_adapter']} "
            f"(rank {manifest['counts']['persona_adapter_rank']}), {manifest['seconds']:.0f}s")

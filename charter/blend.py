"""Blending personas: ``charter blend --adapters loving:0.7 mathematical:0.3 -o DIR``, ``charter chat --blend
loving:0.7,mathematical:0.3`` and, for two full models, ``charter blend MODEL_A MODEL_B --weight 0.3 -o DIR``.

A persona adapter (``<run>/merge/persona-adapter``, or any LoRA folder such as ``<run>/dpo/adapter``) is a
LoRA on the base model. A blend is one more LoRA on the same base whose weight delta is the weighted sum of
the parents' deltas, ΔW = Σ w_i · s_i · B_i A_i (s_i = alpha_i / r_i), made by peft's ``add_weighted_adapter``
with the ``cat`` combination: it stacks the ranks (A = [w_i s_i A_i], B = [B_i], scaling 1), so it is exact and
works for parents of different ranks, unlike ``linear`` (same ranks only, and cross terms B_i A_j) or ``svd``
(an approximation at a chosen rank). No full model is materialised: a blend costs the base model plus the
stacked low-rank factors, and loading one takes seconds.

Weights are >= 0 (a mix of personas, not adapter arithmetic); parents at weight 0 are left out, so the ends
of a sweep are exactly the parents.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .layout import path as output_path
from .runs import find_run, manifest_path, read_manifest

COMBINATION = "cat"
BLEND_NAME = "blend"


def parse_blend(items: list[str] | str, where: str = "--adapters") -> list[tuple[str, float]]:
    """``["runA:0.7", "runB:0.3"]`` or ``"runA:0.7,runB:0.3"`` -> [(ref, weight)]; a missing weight is 1."""
    parts = [p.strip() for item in ([items] if isinstance(items, str) else items) for p in item.split(",")]
    out = []
    for p in parts:
        if not p:
            continue
        ref, sep, w = p.rpartition(":")
        if not sep:
            ref, w = p, "1"
        try:
            weight = float(w)
        except ValueError:
            raise ValueError(f"{where} {p!r}: expected RUN_OR_ADAPTER:WEIGHT with a number as weight") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where} {p!r}: expected a weight >= 0, got {w}")
        out.append((ref, weight))
    if len(out) < 1:
        raise ValueError(f"{where}: expected at least one RUN_OR_ADAPTER:WEIGHT")
    if len({r for r, _ in out}) != len(out):
        raise ValueError(f"{where}: the same adapter is named twice")
    if sum(w for _, w in out) <= 0:
        raise ValueError(f"{where}: every weight is 0; nothing to blend")
    return out


def resolve_adapter(ref: str, where: str = "--adapters") -> Path:
    """A run name or run folder (its persona adapter) or a LoRA adapter folder."""
    run = find_run(ref)
    cands = [output_path(run, "persona_adapter")] if run is not None else []
    cands.append(Path(ref).expanduser())
    for c in cands:
        if (c / "adapter_config.json").is_file():
            return c
    raise FileNotFoundError(f"{where} {ref}: not a run with a persona adapter ({output_path(Path(), 'persona_adapter')}) "
                            "nor a LoRA adapter folder (adapter_config.json); train the run first or give the adapter's "
                            "path")


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on: the run's merge manifest when it has one (it records the
    config's reference, e.g. 'embedded'), else the adapter's own ``base_model_name_or_path``."""
    manifest = manifest_path(adapter.parent)
    if adapter.name == output_path(Path(), "persona_adapter").name and manifest.is_file():
        base = read_manifest(manifest).get("base")
        if base:
            return base
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{adapter}: a {cfg.get('peft_type')} adapter; only LoRA adapters can be blended")
    if cfg.get("use_rslora"):
        raise ValueError(f"{adapter}: an rsLoRA adapter; the blend's scaling assumes plain LoRA (use_rslora false)")
    if cfg.get("use_dora"):
        raise ValueError(f"{adapter}: a DoRA adapter; its magnitude vectors do not add, so it cannot be blended")
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json: no base_model_name_or_path; pass --base")
    return base


def common_base(adapters: list[Path], base: str | None = None) -> str:
    """The one base every adapter belongs to (``base`` when given); different bases are an error."""
    if base:
        return base
    from .models import resolve

    def key(ref: str) -> str:
        try:
            return str(Path(resolve(ref)).resolve())
        except FileNotFoundError:
            return ref

    bases = [adapter_base(a) for a in adapters]
    if len({key(b) for b in bases}) > 1:
        listed = ", ".join(f"{a}: {b}" for a, b in zip(adapters, bases))
        raise ValueError(f"the adapters were trained on different base models ({listed}); blend adapters of one "
                         "base, or pass --base to override")
    return bases[0]


def attach(model, adapters: list[Path]):
    """A PeftModel with each adapter loaded under the name ``p0``, ``p1``, ..."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="p0")
    for i, a in enumerate(adapters[1:], 1):
        peft.load_adapter(str(a), adapter_name=f"p{i}")
    return peft


def add_blend(peft, weights: list[float], name: str = BLEND_NAME) -> str:
    """Add ``name`` = the weighted combination of the attached parents and make it active."""
    used = [(f"p{i}", w) for i, w in enumerate(weights) if w > 0]
    if name in peft.peft_config:
        peft.delete_adapter(name)
    # One parent: peft falls back to 'linear', which for a single adapter is exact too (sqrt(w s) on A and B).
    peft.add_weighted_adapter([n for n, _ in used], [w for _, w in used], name, combination_type=COMBINATION)
    peft.set_adapter(name)
    return name


def load_blend(spec: list[tuple[str, float]], base: str | None = None, dtype: str = "float32",
               device: str = "auto"):
    """(model, tokenizer, base): the base model with the blend active, the parents dropped."""
    from .models import load_causal_lm, load_tokenizer

    adapters = [resolve_adapter(r) for r, _ in spec]
    base = common_base(adapters, base)
    model = attach(load_causal_lm(base, dtype=dtype, device=device), adapters)
    add_blend(model, [w for _, w in spec])
    for i in range(len(adapters)):
        model.delete_adapter(f"p{i}")
    model.eval()
    return model, load_tokenizer(base), base


def save_blend(spec: list[tuple[str, float]], output: str | Path, base: str | None = None) -> Path:
    """Write the blend as one LoRA adapter folder (adapter, tokenizer, ``blend.json``), atomically."""
    from .models import save_model_dir

    out = Path(output).expanduser()
    model, tok, base = load_blend(spec, base, dtype="float32", device="cpu")
    if out.exists():
        out.rmdir()  # the CLI only lets an empty folder through
    return save_model_dir(model, tok, out, adapter=BLEND_NAME, extra={"blend.json": {
        "combination": COMBINATION, "base": base,
        "parents": [{"ref": r, "adapter": str(resolve_adapter(r)), "weight": w} for r, w in spec]}})


def blend_models(a: str, b: str, weight: float, output: str) -> str:
    """Interpolate two models of the same architecture: (1 - weight) * A + weight * B; writes a loadable
    model (weights, config, tokenizer, generation config)."""
    import torch

    from .models import load_causal_lm, load_tokenizer, save_model_dir

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
    # Interpolated in fp32 and kept in fp32: a bf16 copy would round away the small differences between two
    # fine-tunes of one base (the same reason folds are stored in float32).
    return str(save_model_dir(ma, load_tokenizer(a), Path(output)))

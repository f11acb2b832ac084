"""Activation-steering baseline: a persona direction added to the residual stream of the middle layers.

    charter eval steering configs/demo.yaml [steering.coefficient=0.02 ...]

Direction: for each short stem (``prompts/steering_stems.txt``) the student reads [system = the persona's
system prompt, user "Please talk about anything."] + the opened assistant turn + the stem, and the same
without the system message. Per chosen layer, the last token's outputs give the mean paired difference
(``mean_diff``) or the first principal component of the paired differences (``pca``, signed so the persona
side projects higher), unit-normalised. Steering adds ``coefficient x norm x direction`` to those layers'
outputs at every position; ``norm`` is the layer's mean residual-stream norm over the contrast prompts, so a
coefficient is a share of the residual stream, comparable across models.

Coefficient (unless ``steering.coefficient`` is set): replies to ``sweep_prompts`` general prompts at every
coefficient (same seed, so only the steering differs), whitespace collapsed (steered models pad with runs of
odd spaces, which are *likely* text), are scored unsteered: ``logprob``, the student's mean log-likelihood
per reply token given the prompt (garbled or off-topic text is unlikely); ``repetition``, the share of word
bigrams repeating an earlier one (loops are likely too, so likelihood alone would reward them); ``empty``.
A setting is within tolerance when its logprob is at most ``LOGPROB_TOLERANCE`` nats/token below the
unsteered replies', and its repetition and empty shares at most ``REPETITION_TOLERANCE`` and
``EMPTY_TOLERANCE`` above theirs. Walking up by magnitude, the last setting before the first failure is
chosen (a lucky strong setting past a failed weaker one never is). If even the weakest fails it is halved
until one passes (``MAX_HALVINGS``), so a sweep scaled for another model still ends somewhere usable; failing
that, the weakest tried is used and flagged. On SmolLM2-135M (23 steered layers) the logprob falls by
0.3/0.7/1.2/2.1/2.7 nats at 0.01/0.02/0.03/0.04/0.05 and replies are word salad by 0.1: 0.02 is chosen.
The reference hand-set one coefficient per model, in raw units, with no sweep.

Writes ``<run>/eval-steering/``: ``vector.safetensors`` (``layer.<i>`` unit directions), ``steering.json``
(layers, norms, coefficient, sweep table, rule), ``sweep.jsonl``, ``sweep-scores.jsonl`` and the manifest.
Own hooks rather than repeng: repeng 0.4.0 pins numpy<2 and swaps modules instead of hooking them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import HIDDEN_STATES, require
from ..config import Sampling
from ..layout import STEERING, persona_system_prompt
from ..prompts import steering_stems as load_stems
from ..registry import STEERED
from ..runs import (RowLog, Stage, derive_seed, manifest_path, run_dir, silent, write_json_atomic,
                    write_jsonl_atomic)
from ..backends.hf import reply_logprobs
from .proxies import normalise, repetition

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = STEERING
CONTRAST_USER = "Please talk about anything."
LOGPROB_TOLERANCE = 1.0  # nats per token: about the gap between a fluent on-topic reply and a loose one
REPETITION_TOLERANCE = 0.15
EMPTY_TOLERANCE = 0.25
MAX_HALVINGS = 8
# Where decoder blocks live: Llama/Qwen/Gemma/Mistral, multimodal wrappers (Gemma-3), GPT-2, GPT-NeoX, OPT.
LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.layers",
               "model.language_model.model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(model):
    """The ``ModuleList`` of decoder blocks, for the model families we know (PEFT wrappers unwrapped)."""
    import torch

    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in LAYER_PATHS:
        obj = root
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            return obj
    raise ValueError(f"steering: cannot find the decoder layers of {type(root).__name__} (looked for "
                     f"{', '.join(LAYER_PATHS)}); activation steering needs a transformers decoder model")


def layer_range(n_layers: int, fractions=(0.125, 0.875)) -> list[int]:
    """Layers ``[int(a*n), int(b*n))``, the reference's middle ~75%; never empty (a tiny model gets its middle)."""
    a, b = fractions
    out = list(range(max(0, int(a * n_layers)), min(n_layers, int(b * n_layers))))
    return out or [n_layers // 2]


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Stop(Exception):
    pass


def contrast_states(model, tokenizer, system_prompt: str, stems: list[str], layers: list[int],
                    batch_size: int = 16):
    """Last-token outputs of ``layers`` for each stem, with and without the persona system prompt.

    Returns ``(pos, neg)``: ``{layer: float32 tensor [n_stems, hidden]}`` each.
    """
    import torch

    from ..backends import render_chat

    tokenizer.padding_side = "left"
    user = [{"role": "user", "content": CONTRAST_USER}]
    heads = {"pos": [{"role": "system", "content": system_prompt}] + user, "neg": user}
    blocks, seen, states = decoder_layers(model), {}, {}

    def grab(i):
        def hook(module, args, output):
            seen[i] = (output[0] if isinstance(output, tuple) else output)[:, -1, :].detach().float().cpu()
        return hook

    def stop(module, args, output):
        raise _Stop  # nothing past the last chosen layer is needed (saves the later layers and the lm head)

    handles = [blocks[i].register_forward_hook(grab(i)) for i in layers]
    handles.append(blocks[max(layers)].register_forward_hook(stop))
    try:
        with torch.inference_mode():
            for side, head in heads.items():
                got = {i: [] for i in layers}
                for batch in _batches([render_chat(tokenizer, head, s) for s in stems], batch_size):
                    enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                    # Positions from the mask, so left padding never shifts a sequence's positions.
                    enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                    with contextlib.suppress(_Stop):
                        model(**enc.to(model.device), use_cache=False)
                    for i in layers:
                        got[i].append(seen[i])
                states[side] = {i: torch.cat(got[i]) for i in layers}
    finally:
        for h in handles:
            h.remove()
    return states["pos"], states["neg"]


def direction_from_states(pos, neg, method: str = "mean_diff"):
    """Unit direction per layer from paired states. ``pca``: the first principal component of the paired
    differences; the reference centres each pair on its midpoint, which leaves +-diff/2, whose first component
    is the top right-singular vector of the (uncentred) difference matrix."""
    import torch

    if method not in ("mean_diff", "pca"):
        raise ValueError(f"steering.method '{method}': expected mean_diff or pca")
    out = {}
    for i in pos:
        diff = pos[i].float() - neg[i].float()
        if method == "mean_diff":
            v = diff.mean(0)
        else:
            v = torch.linalg.svd(diff, full_matrices=False).Vh[0]
            if (diff @ v).mean() < 0:  # a component's sign is arbitrary: point it at the persona side
                v = -v
        n = v.norm()
        if not torch.isfinite(n) or n == 0:
            raise ValueError(f"steering: the system prompt leaves layer {i} unchanged; no direction to take")
        out[i] = v / n
    return out


def mean_norms(pos, neg) -> dict[int, float]:
    """Mean L2 norm of the recorded residual-stream states per layer (both sides): the coefficient's unit."""
    import torch

    return {i: float(torch.cat([pos[i], neg[i]]).norm(dim=-1).mean()) for i in pos}


def contrast_direction(model, tokenizer, system_prompt: str, stems: list[str], method: str = "mean_diff",
                       layers: list[int] | None = None):
    """``{layer: unit direction}`` from the persona contrast (see the module docstring)."""
    layers = layers if layers is not None else layer_range(len(decoder_layers(model)))
    return direction_from_states(*contrast_states(model, tokenizer, system_prompt, stems, layers), method)


@contextlib.contextmanager
def steer(model, vector, coefficient: float, norms: dict[int, float] | None = None):
    """Add ``coefficient x norms[i] x vector[i]`` to the output of decoder layer ``i`` at every position.

    Hooks are prepended (so transformers' ``output_hidden_states`` recorders see the steered output) and
    always removed on exit, even on error. ``norms=None`` means raw units.
    """
    blocks, handles = decoder_layers(model), []
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    size = getattr(config, "hidden_size", None)

    def add(delta):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + delta,) + tuple(output[1:])
            return output + delta
        return hook

    try:
        for i, d in (vector.items() if coefficient else ()):
            if not 0 <= int(i) < len(blocks):
                raise ValueError(f"steering: layer {i} out of range (the model has {len(blocks)} layers)")
            if size is not None and d.numel() != size:
                raise ValueError(f"steering: the vector for layer {i} has {d.numel()} values but the model's "
                                 f"hidden size is {size}; was it fitted on another model?")
            p = next(blocks[int(i)].parameters())
            scale = coefficient * (norms[int(i)] if norms is not None else 1.0)
            delta = (scale * d.float()).to(device=p.device, dtype=p.dtype)
            handles.append(blocks[int(i)].register_forward_hook(add(delta), prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()


class SteeredBackend:
    """The Backend interface over a TransformersBackend, with steering hooks active only inside ``generate``."""

    name = STEERED

    def __init__(self, inner, vector, coefficient: float, norms: dict[int, float] | None):
        self.inner, self.vector, self.coefficient, self.norms = inner, vector, coefficient, norms
        self.spec, self.tokenizer = inner.spec, inner.tokenizer

    @property
    def model(self):
        return self.inner.model

    def generate(self, chats, sampling, prefills=None, seed: int = 0, progress=None):
        with steer(self.inner.model, self.vector, self.coefficient, self.norms):
            return self.inner.generate(chats, sampling, prefills=prefills, seed=seed, progress=progress)

    def close(self) -> None:
        self.inner.close()


# --- the sweep rule (its coherence proxies live in coherence.py) ------------------------------------------

def summarise(coefficient: float, scores: list[dict]) -> dict:
    """One sweep row from per-reply scores (``logprob`` None for empty replies)."""
    lps = [s["logprob"] for s in scores if s["logprob"] is not None]
    return {"coefficient": coefficient, "n": len(scores),
            "logprob": sum(lps) / len(lps) if lps else None,
            "repetition": sum(s["repetition"] for s in scores) / max(1, len(scores)),
            "empty": sum(s["logprob"] is None for s in scores) / max(1, len(scores))}


def within_tolerance(row: dict, base: dict) -> bool:
    if row["logprob"] is None:
        return False
    return (base["logprob"] is None or row["logprob"] >= base["logprob"] - LOGPROB_TOLERANCE) and \
        row["repetition"] <= base["repetition"] + REPETITION_TOLERANCE and \
        row["empty"] <= base["empty"] + EMPTY_TOLERANCE


def pick_coefficient(sweep: list[dict], base: dict) -> tuple[float, bool]:
    """(coefficient, within tolerance): walk up by magnitude, keep the last setting before the first failure."""
    rows = sorted(sweep, key=lambda r: abs(r["coefficient"]))
    chosen = None
    for r in rows:
        if not within_tolerance(r, base):
            break
        chosen = r["coefficient"]
    return (chosen, True) if chosen is not None else (rows[0]["coefficient"], False)


# --- the stage --------------------------------------------------------------------------------------------

def stage_config(cfg: RunConfig) -> dict:
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "steering": dataclasses.asdict(cfg.steering),
            "system_prompt": persona_system_prompt(cfg),
            "rule": {"logprob": LOGPROB_TOLERANCE, "repetition": REPETITION_TOLERANCE, "empty": EMPTY_TOLERANCE,
                     "halvings": MAX_HALVINGS}}


def save_vector(path: Path, vector) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({f"layer.{i}": v.float().contiguous() for i, v in vector.items()}, str(tmp))
    os.replace(tmp, path)


def load_vector(path: Path) -> dict:
    from safetensors.torch import load_file

    return dict(sorted((int(k.split(".", 1)[1]), v) for k, v in load_file(str(path)).items()))


def _sweep(stage: Stage, cfg: RunConfig, backend, vector, norms, report) -> tuple[list[dict], dict]:
    """Replies at every coefficient (and 0), scored unsteered; returns (sweep rows, unsteered row)."""
    from ..generation import generate_rows
    from ..prompts import load_prompt_source

    s = cfg.steering
    pool = list(dict.fromkeys(load_prompt_source("builtin", builtin="general")))
    rng = random.Random(derive_seed(cfg.seed, "steering", "sweep-prompts"))
    prompts = [pool[i] for i in rng.sample(range(len(pool)), min(s.sweep_prompts, len(pool)))]
    sampling = Sampling(max_tokens=s.max_tokens)  # the reference's steered generation settings
    replies = RowLog(stage.dir / "sweep.jsonl")
    scored: list[dict] = []

    def score(c: float) -> dict:
        items = [{"id": f"{c:g}/p{j}", "coefficient": c, "prompt": p} for j, p in enumerate(prompts)]
        b = backend if c == 0 else SteeredBackend(backend, vector, c, norms)
        # Same seed for every coefficient: the replies differ by the steering, not by the sampling.
        generate_rows(replies, items, lambda it: ([{"role": "user", "content": it["prompt"]}], None), b, sampling,
                      (cfg.seed, "steering", "sweep"), len(items) or 1, f"sweep {c:g}")
        rows = replies.ordered([it["id"] for it in items])
        texts = [normalise(r["response"]) for r in rows]
        lps = reply_logprobs(backend.model, backend.tokenizer,
                             [[{"role": "user", "content": r["prompt"]}] for r in rows], texts)
        here = [{"id": r["id"], "coefficient": c, "logprob": lp, "repetition": repetition(t)}
                for r, t, lp in zip(rows, texts, lps, strict=True)]
        scored.extend(here)
        t = summarise(c, here)
        report(f"steering sweep {c:g}: logprob {'n/a' if t['logprob'] is None else round(t['logprob'], 3)}, "
               f"repetition {t['repetition']:.2f}, empty {t['empty']:.2f}")
        return t

    base = score(0.0)
    table = [score(c) for c in sorted({float(c) for c in s.coefficients if c}, key=abs)]
    # A sweep scaled for another model may fail everywhere: halve the weakest until one setting passes.
    for _ in range(MAX_HALVINGS if table else 0):
        if pick_coefficient(table, base)[1]:
            break
        table.append(score(min((r["coefficient"] for r in table), key=abs) / 2))
    write_jsonl_atomic(stage.dir / "sweep-scores.jsonl", scored)
    for t in table:
        t["within_tolerance"] = within_tolerance(t, base)
    return sorted(table, key=lambda r: abs(r["coefficient"])), base


def fit(cfg: RunConfig, force: bool = False, report=silent, backend=None) -> Path:
    """Fit the persona direction and choose the coefficient; returns the stage folder.

    ``backend``: an already-loaded TransformersBackend of the student to reuse (it is not closed).
    """
    s = cfg.steering
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg))
    if not stage.begin(force):
        report(f"{STAGE}: already done (--force to redo): {stage.dir}")
        return stage.dir
    own = backend is None
    if own:
        from ..backends.hf import TransformersBackend

        backend = TransformersBackend(dataclasses.replace(cfg.student, backend="transformers"))
    try:
        require(backend, HIDDEN_STATES, "eval steering (forward hooks on the model's layers)")
        model, tok = backend.model, backend.tokenizer
        n_layers = len(decoder_layers(model))
        layers = layer_range(n_layers, s.layers)
        stems = load_stems(s.stems)
        t0 = time.perf_counter()
        pos, neg = contrast_states(model, tok, persona_system_prompt(cfg), stems, layers)
        vector, norms = direction_from_states(pos, neg, s.method), mean_norms(pos, neg)
        # How well each layer's direction separates the pairs: a diagnostic for the report, not used below.
        separation = {i: float(((pos[i] - neg[i]) @ vector[i] > 0).float().mean()) for i in layers}
        gap = {i: float(((pos[i] - neg[i]) @ vector[i]).mean() / norms[i]) for i in layers}
        save_vector(stage.dir / "vector.safetensors", vector)
        report(f"steering: {s.method} direction over {len(stems)} stems at layers {layers[0]}..{layers[-1]} "
               f"of {n_layers} in {time.perf_counter() - t0:.1f}s")
        sweep, base = [], None
        if s.coefficient is not None:
            coefficient, ok, chosen_by = float(s.coefficient), None, "config"
        else:
            sweep, base = _sweep(stage, cfg, backend, vector, norms, report)
            if not sweep:
                raise ValueError("steering.coefficients: empty sweep and no steering.coefficient set")
            (coefficient, ok), chosen_by = pick_coefficient(sweep, base), "sweep"
            if not ok:
                report(f"steering: WARNING no coefficient kept the replies coherent; using the weakest, "
                       f"{coefficient:g}")
    finally:
        if own:
            backend.close()
    meta = {"method": s.method, "layers": layers, "n_layers": n_layers, "norms": {str(i): norms[i] for i in layers},
            "coefficient": coefficient, "chosen_by": chosen_by, "within_tolerance": ok,
            "units": "coefficient x mean residual-stream norm of the layer, added at every position",
            "rule": {"logprob_tolerance": LOGPROB_TOLERANCE, "repetition_tolerance": REPETITION_TOLERANCE,
                     "empty_tolerance": EMPTY_TOLERANCE, "pick": "strongest before the first failure"},
            "unsteered": base, "sweep": sweep, "stems": len(stems), "model": cfg.student.model,
            "separation": {str(i): separation[i] for i in layers}, "gap": {str(i): gap[i] for i in layers}}
    write_json_atomic(stage.dir / "steering.json", meta)
    files = ["vector.safetensors", "steering.json", *(["sweep.jsonl", "sweep-scores.jsonl"] if sweep else [])]
    stage.finish({"stems": len(stems), "layers": len(layers), "sweep": len(sweep)}, coefficient=coefficient,
                 chosen_by=chosen_by, within_tolerance=ok, files=files)
    report(f"{STAGE}: coefficient {coefficient:g} ({chosen_by}) at {len(layers)} layers in "
           f"{time.time() - stage.started:.0f}s -> {stage.dir}")
    return stage.dir


def load_steered_backend(cfg: RunConfig, backend=None) -> SteeredBackend:
    """The student with this run's fitted steering; ``backend``: a loaded TransformersBackend to wrap."""
    d = run_dir(cfg.name) / STAGE
    if not manifest_path(d).exists():
        raise RuntimeError(f"no steering vector for run '{cfg.name}' yet (run `charter eval steering` first)")
    meta = json.loads((d / "steering.json").read_text())
    if backend is None:
        from ..backends.hf import TransformersBackend

        backend = TransformersBackend(dataclasses.replace(cfg.student, backend="transformers"))
    return SteeredBackend(backend, load_vector(d / "vector.safetensors"), meta["coefficient"],
                          {int(k): v for k, v in meta["norms"].items()})

"""Drift: does the persona hold over a long conversation, and after a break-character request in the middle?

    charter eval drift configs/demo.yaml [key=value ...]
    charter eval drift CONFIG drift.conversations=40 drift.turns=16 drift.attack_turn=9 drift.attack=assistant
    charter eval drift CONFIG drift.conditions='[base, prompted, trained, capped]' drift.cap_level=0.5

**Conversations.** The prompt pool (``drift.prompt_source``, by default the held-out ``preference_prompts``,
minus every prompt a training stage of the run used) is shuffled once with the run's seed: the first
``drift.reference_prompts`` are the detector's, the rest are handed out, in order, to the conversations. Each
conversation opens with the next pool prompt; every later user turn is, with probability
``drift.followup_share``, a short generic follow-up (``prompts/drift.yaml``) and otherwise the next pool prompt
(the user moves on, as people do). The break-character request ``drift.attack`` (an id of
``prompts/attacks.yaml``) is appended to user turn ``drift.attack_turn`` as the robustness evaluation appends it.
Conversation k draws with its own seed, so the same config gives the same user turns, and every condition
gets the same ones. Each condition answers turn by turn with the whole history (its own earlier replies);
on a local model whole early exchanges are dropped only when the prompt outgrows ``drift.max_context`` tokens
(never the system prompt or the few-shot exchanges), and each reply records how many were. 'prompted' gets the
teacher's persistence note once the request is in its context (parity with the robustness evaluation).

**Scoring.** A detector (``drift.encoder``) learns the persona from reference texts that are no scored reply
(``drift.reference``: the base model with vs without the persona's system prompt on three quarters of the
reference prompts, or the hand-written exemplars; 'pairs' is allowed but fit to the DPO contrast), and is
checked on single replies of prompted vs base to the last quarter. Every assistant turn gets judged in persona
when the detector's probability is at least 0.5; the **in-persona rate by turn** is the share of conversations
in persona at that turn, with a percentile bootstrap 95% CI over conversations. Per condition: the mean rate
before the attack turn (``early``) and from it on (``late``; without an attack, the first and second half of
the turns) and their difference from the same resampled conversations. ``drift.png`` draws the rates by turn.

**Activation monitor** (``drift.monitor``): each assistant turn's hidden states at the steering layers, read by
the model that wrote it (with its steering or capping hooks) over the whole conversation up to that reply,
averaged over the reply's tokens and projected on the persona direction ``charter eval steering`` saved, in
units of the layer's mean residual-stream norm (the steering coefficient's unit), averaged over layers. No
judge: a user can watch it on any conversation. Reported per turn per condition with CIs, and its Pearson
correlation with the detector's probability over all turns. Without a steering fit it is skipped in one line;
models outside this process (an API server, vLLM, the scripted backend) cannot be monitored.

**Activation capping** (condition ``capped``): ``drift.cap_model`` (default the trained model) with the
projection on the persona direction clamped from below at every steering layer and every position: where
``h . v < tau``, ``h`` becomes ``h + (tau - h . v) v``. ``tau`` per layer sits ``drift.cap_level`` of the way
from the student's mean projection without the persona's system prompt (0) to its mean projection with it (1),
measured on the steering contrast's stems (the last token, as the direction was fitted). It needs the steering
fit too. The calibration is written to ``capping.json``.

Writes ``<run>/eval-drift/``: ``conversations.json`` (every user turn and the reference prompts),
``reference.jsonl``, ``turns.jsonl`` and ``monitor.jsonl`` (resumable logs), ``predictions.jsonl``,
``results.json``, ``drift.png`` and the manifest. Changing the conditions, the detector or the bootstrap
re-scores from the logs; a retrained model (its identity changed) or a new steering fit redoes only what
depended on it. What it does not show: a simulated user is not a real one (no user pushes back on a fading
persona or builds on the assistant's words as people do), the detector only knows the voice it learned from
single replies, and the monitor is one direction fitted on one contrast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .. import layout
from ..backends import HIDDEN_STATES, capabilities, render_chat
from ..classifier import make_classifier, proba_of
from ..generation import generate_rows
from ..prompts import HERE as PROMPTS_DIR
from ..prompts import attack_message, load_attacks, load_prompt_source
from ..runs import (FORCE_HINT, RowLog, Stage, config_hash, derive_seed, drop_rows, identity_hash, read_json,
                    reusable, run_dir, silent, stage_identity, write_json_atomic, write_jsonl_atomic)
from . import conditions, inpersona
from .heldout import untrained_pool
from .robustness import persona_label

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = "eval-drift"
CAPPED = "capped"
FOLLOWUPS_FILE = PROMPTS_DIR / "drift.yaml"
THRESHOLD = inpersona.THRESHOLD
LEVEL = inpersona.LEVEL
CHECK_SHARE = 0.25  # of the reference prompts: they check the detector and never train it
REFERENCE_CONDITIONS = ("base", "prompted")  # always answer the reference prompts: the detector's check needs them
MONITOR_BATCH = 8
UNITS = "projection of the reply's mean hidden state on the unit persona direction / the layer's mean norm"


# --- the simulated user ---------------------------------------------------------------------------------------

def load_followups(path: Path = FOLLOWUPS_FILE) -> list[str]:
    """The generic follow-up user turns (``prompts/drift.yaml``), checked: at least 4, distinct, non-empty."""
    data = yaml.safe_load(path.read_text()) or {}
    items = data.get("followups") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) < 4 or not all(isinstance(x, str) and x.strip() for x in items):
        raise ValueError(f"{path}: followups: expected a list of at least 4 non-empty strings")
    out = [" ".join(x.split()) for x in items]
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise ValueError(f"{path}: followups: {dup[0]!r} is listed twice")
    return out


def split_pool(pool: list[str], n_reference: int, seed: int) -> tuple[list[str], list[str]]:
    """(reference prompts, conversation pool): one seeded shuffle of the distinct prompts; no prompt on both."""
    order = list(dict.fromkeys(p.strip() for p in pool if p.strip()))
    random.Random(seed).shuffle(order)
    return order[:n_reference], order[n_reference:]


def reference_split(prompts: list[str]) -> tuple[list[str], list[str]]:
    """(fit, check): the last quarter (at least one) of the reference prompts checks the detector only."""
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 reference prompts (one to learn from, one to check), have {len(prompts)}")
    k = max(1, round(len(prompts) * CHECK_SHARE))
    return prompts[:-k], prompts[-k:]


def plan_conversations(pool: list[str], n: int, turns: int, followups: list[str], followup_share: float,
                       attack_text: str | None, attack_turn: int | None, seed: int) -> list[dict]:
    """Every conversation's user turns. Conversation k draws with its own seed whether each later turn is a
    follow-up (and which); pool prompts are handed out in order, so no prompt appears twice and adding
    conversations leaves the earlier ones as they were. The attack is appended to turn ``attack_turn``."""
    plans, cursor = [], 0
    for k in range(n):
        rng = random.Random(derive_seed(seed, "conversation", k))
        users, kinds = [], []
        for t in range(1, turns + 1):
            if t > 1 and rng.random() < followup_share:
                text, kind = rng.choice(followups), "followup"
            else:
                if cursor >= len(pool):
                    raise ValueError(f"drift: the prompt pool ran out at conversation {k + 1} (it has {len(pool)} "
                                     "prompts after the reference ones); fewer conversations or turns, a larger "
                                     "followup_share or a larger prompt_source")
                text, kind = pool[cursor], "prompt"
                cursor += 1
            if attack_text and t == attack_turn:
                text = attack_message(text, attack_text)
            users.append(text)
            kinds.append(kind)
        plans.append({"cid": f"c{k}", "users": users, "kinds": kinds, "attack_turn": attack_turn if attack_text
                      else None})
    return plans


def messages_at(plan: dict, replies: list[str], t: int) -> list[dict]:
    """The conversation as turn ``t`` (1-based) is asked: every earlier exchange (the user turn, the condition's
    own reply), then user turn ``t``."""
    if len(replies) < t - 1:
        raise ValueError(f"conversation {plan['cid']}: turn {t} needs {t - 1} earlier replies, got {len(replies)}")
    msgs = []
    for j in range(t - 1):
        msgs += [{"role": "user", "content": plan["users"][j]}, {"role": "assistant", "content": replies[j]}]
    return msgs + [{"role": "user", "content": plan["users"][t - 1]}]


def fitted_chat(cfg: RunConfig, label: str, system: str | None, msgs: list[dict], attack_text: str | None,
                tokenizer=None, budget: int | None = None) -> tuple[list[dict], int]:
    """(chat, exchanges dropped): ``msgs`` as condition ``label`` is asked them (its system prompt, its few-shot
    exchanges; 'prompted' with the persistence note once the attack is in the context). With a tokenizer, whole
    early exchanges go until the prompt fits ``budget`` tokens; the last user turn always stays."""
    dropped = 0
    while True:
        attacked = bool(attack_text) and any(m["role"] == "user" and attack_text in m["content"] for m in msgs)
        chat = conditions.chat(cfg, label, system, msgs, attacked=attacked)
        if tokenizer is None or budget is None or len(msgs) <= 1:
            return chat, dropped
        if len(tokenizer(render_chat(tokenizer, chat), add_special_tokens=False).input_ids) <= budget:
            return chat, dropped
        msgs, dropped = msgs[2:], dropped + 1


# --- the activation monitor and capping -----------------------------------------------------------------------

class _Stop(Exception):
    pass


def steering_fit(cfg: RunConfig) -> dict | None:
    """The persona direction ``charter eval steering`` saved (unit vector per layer, the layers' mean norms, its
    stage identity), or None when it has not run."""
    d = run_dir(cfg.name) / layout.STEERING
    if not (d / "manifest.json").exists():
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

    name = "capped"

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
    if label in (CAPPED, "steered"):
        return None
    try:
        spec = conditions.condition_spec(cfg, label)
    except RuntimeError:
        return None  # not made yet: the condition is skipped for that reason
    if HIDDEN_STATES not in capabilities(spec):
        return f"backend '{spec.backend}' runs outside this process (no hidden states to read)"
    return None


def _capping_of(path: Path, ident: str | None) -> dict | None:
    """The capping calibration written for the capped condition of identity ``ident``, if it is on disk."""
    if ident is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if data.get("identity") == ident else None


def _in_process(backend) -> bool:
    """Whether a condition's model runs in this process with its weights at hand (hooks can read it)."""
    inner = getattr(backend, "inner", backend)
    return HIDDEN_STATES in capabilities(inner) and getattr(inner, "model", None) is not None


@contextlib.contextmanager
def _condition_hooks(backend, record: dict | None = None):
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


# --- bootstrap helpers (shared with the formats evaluation) ----------------------------------------------------

def _array(matrix):
    import numpy as np

    return np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float).reshape(
        len(matrix), -1)


def _stat(x):
    import numpy as np

    with warnings.catch_warnings():  # a column with no value in one resample is skipped, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(x, axis=-2), axis=-1)


def bootstrap_mean(matrix: list[list[float | None]], n_boot: int, seed: int, level: float = LEVEL) -> dict:
    """``inpersona.bootstrap_rate`` for any values (a projection): the mean of column means with a percentile CI
    over resampled rows, to six decimals."""
    import numpy as np

    m = _array(matrix)
    if not m.size or not np.isfinite(m).any():
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = m[np.isfinite(m).any(axis=1)]
    lo = hi = None
    if n_boot > 0:
        draws = _stat(m[np.random.default_rng(seed).integers(0, len(m), size=(n_boot, len(m)))])
        draws = draws[np.isfinite(draws)]
        tail = 100 * (1 - level) / 2
        lo, hi = round(float(np.percentile(draws, tail)), 6), round(float(np.percentile(draws, 100 - tail)), 6)
    return {"mean": round(float(_stat(m)), 6), "lo": lo, "hi": hi, "n": int(np.isfinite(m).sum())}


def paired_difference(a: list[list[float | None]], b: list[list[float | None]], n_boot: int, seed: int,
                      level: float = LEVEL) -> dict:
    """(mean of column means of ``b``) - (that of ``a``), rows paired (the same conversation or prompt in both),
    with a percentile bootstrap CI from resampling rows for both at once. Rows missing on either side are left
    out; ``n`` counts the rows kept."""
    import numpy as np

    none = {"delta": None, "lo": None, "hi": None, "n": 0}
    if not a or not b or len(a) != len(b):
        return none
    A, B = _array(a), _array(b)
    keep = np.isfinite(A).any(axis=1) & np.isfinite(B).any(axis=1)
    A, B = A[keep], B[keep]
    if not len(A):
        return none
    lo = hi = None
    if n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, len(A), size=(n_boot, len(A)))
        draws = _stat(B[idx]) - _stat(A[idx])
        draws = draws[np.isfinite(draws)]
        tail = 100 * (1 - level) / 2
        lo, hi = round(float(np.percentile(draws, tail)), 4), round(float(np.percentile(draws, 100 - tail)), 4)
    return {"delta": round(float(_stat(B) - _stat(A)), 4), "lo": lo, "hi": hi, "n": int(len(A))}


# --- the detector (shared with the formats evaluation) ---------------------------------------------------------

def _ok(r: dict | None) -> bool:
    return r is not None and not r.get("error") and bool((r.get("response") or "").strip())


def reference_items(cond: str, prompts: list[str], split: str) -> list[dict]:
    """Single plain replies to reference prompts; ``split`` 'train' (the detector may learn from them, as
    ``inpersona.reference_texts`` reads them) or 'check' (it never does)."""
    tag = "r" if split == "train" else "k"
    return [{"id": f"{cond}/{split}/{tag}{i}", "condition": cond, "split": split, "attack": "none",
             "pid": f"{tag}{i}", "prompt": p} for i, p in enumerate(prompts)]


def generate_reference(cfg: RunConfig, key: str, log: RowLog, cond: str, backend, system, fit: list[str],
                       check: list[str], reference: str, sampling, chunk_size: int) -> dict:
    """Base's or prompted's single replies to the reference prompts: the check quarter always, the fit part
    only when the detector learns from them (``reference == 'prompted'``). Each part has its own seeds."""
    stats = {}

    def build(it):
        return conditions.chat(cfg, cond, system, [{"role": "user", "content": it["prompt"]}]), None

    parts = [("check", check)] + ([("train", fit)] if reference == "prompted" else [])
    for split, prompts in parts:
        items = reference_items(cond, prompts, split)
        if any(it["id"] not in log for it in items):
            stats[f"{cond}/{split}"] = generate_rows(log, items, build, backend, sampling,
                                                     (cfg.seed, key, "reference", cond, split), chunk_size,
                                                     f"{key} reference {cond} {split}").as_dict()
    return stats


def fit_detector(cfg: RunConfig, section, key: str, persona: str, ref_rows: list[dict], fit: list[str],
                 scored_prompts) -> tuple[object, dict]:
    """(detector, what it learned from): fitted on reference texts only (``inpersona.reference_texts``), with
    the evaluation's own seed; none of them is a reply to a scored prompt."""
    texts, labels, info = inpersona.reference_texts(cfg.name, ref_rows, persona, section.reference, fit,
                                                    set(scored_prompts),
                                                    exemplars=inpersona.exemplars_file(cfg, section.exemplars,
                                                                                        section.reference))
    t0 = time.time()
    clf = make_classifier(section.encoder, section.classifier, derive_seed(cfg.seed, key, "classifier"))
    clf.fit(texts, labels)
    fitted, learned = inpersona.FITS[section.reference]
    return clf, {"reference": section.reference, "fit": fitted, "learned_from": learned, **info,
                 "encoder": section.encoder, "threshold": THRESHOLD, "fit_seconds": round(time.time() - t0, 1)}


def detector_check(clf, persona: str, ref_rows: list[dict], n_boot: int, seed: int) -> dict:
    """Balanced accuracy on the check prompts' single replies (prompted judged persona, base judged plain), with
    a bootstrap CI over those prompts; also the persona recall and the base false-alarm rate."""
    rows = [r for r in ref_rows if r["split"] == "check" and r["condition"] in REFERENCE_CONDITIONS and _ok(r)]
    probs = proba_of(clf, [r["response"] for r in rows], persona)
    hit = {c: {} for c in REFERENCE_CONDITIONS}
    for r, p in zip(rows, probs, strict=True):
        hit[r["condition"]][r["pid"]] = float(p >= THRESHOLD)
    pids = sorted({r["pid"] for r in rows})
    right = [[hit["prompted"].get(p), None if p not in hit["base"] else 1 - hit["base"][p]] for p in pids]
    return {"balanced_accuracy": inpersona.bootstrap_rate(right, n_boot, seed),
            "persona_recall": inpersona.bootstrap_rate([[hit["prompted"].get(p)] for p in pids], 0, seed)["rate"],
            "base_false_alarms": inpersona.bootstrap_rate([[hit["base"].get(p)] for p in pids], 0, seed)["rate"],
            "prompts": len(pids)}


def _pct(cell: dict | None, key: str = "rate", ci: bool = False, digits: int = 2) -> str:
    if not cell or cell.get(key) is None:
        return "-"
    v = f"{cell[key]:.{digits}f}"
    if ci and cell.get("lo") is not None:
        return f"{v} [{cell['lo']:.{digits}f},{cell['hi']:.{digits}f}]"
    return v


def _signed(cell: dict | None) -> str:
    if not cell or cell.get("delta") is None:
        return "-"
    ci = f" [{cell['lo']:+.2f},{cell['hi']:+.2f}]" if cell.get("lo") is not None else ""
    return f"{cell['delta']:+.2f}{ci}"


# --- the evaluation --------------------------------------------------------------------------------------------

def _check(cfg: RunConfig) -> list[str]:
    d = cfg.drift
    conds = conditions.check_labels(d.conditions, "drift.conditions", (*conditions.CONDITIONS, CAPPED),
                                    "expected at least one condition")
    for name, value, lo in (("conversations", d.conversations, 1), ("turns", d.turns, 1),
                            ("reference_prompts", d.reference_prompts, 2), ("bootstrap", d.bootstrap, 1),
                            ("max_context", d.max_context, 1), ("chunk_size", d.chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"drift.{name}: expected a whole number >= {lo}, got {value!r}")
    if d.attack_turn is not None and not 1 <= d.attack_turn <= d.turns:
        raise ValueError(f"drift.attack_turn: expected 1 <= x <= drift.turns ({d.turns}) or null, got {d.attack_turn}")
    attacks = [a for a, t in load_attacks().items() if t]
    if d.attack not in attacks:
        raise ValueError(f"drift.attack: '{d.attack}': expected one of {', '.join(attacks)} (prompts/attacks.yaml)")
    if not 0 <= d.followup_share <= 1:
        raise ValueError(f"drift.followup_share: expected 0 <= x <= 1, got {d.followup_share}")
    if d.cap_level != d.cap_level or abs(d.cap_level) == float("inf"):
        raise ValueError(f"drift.cap_level: expected a finite number, got {d.cap_level}")
    inpersona.check_reference(d.reference)
    make_classifier(d.encoder, d.classifier)  # a bad encoder or setting fails before any generation
    if d.reference == "pairs" and not inpersona.pairs_path(cfg.name).exists():
        raise RuntimeError(f"drift.reference=pairs: {inpersona.pairs_path(cfg.name)} does not exist (run "
                           "`charter distill` first, or use drift.reference=prompted)")
    return conds


def check_config(stage: Stage, force: bool) -> None:
    """The error ``Stage.begin`` gives for output made with another config, raised before ``reusable`` looks at
    the manifest (a finished evaluation is only reused when its config is the same, and is never unfinished by a
    config that will be refused)."""
    path = stage.dir / "config.json"
    if force or not path.exists():
        return
    saved = read_json(path, "a stage config", FORCE_HINT)
    before = identity_hash(saved["config"]) if isinstance(saved.get("config"), dict) else saved.get("hash")
    if before != identity_hash(stage.config):
        raise RuntimeError(f"{stage.dir}: existing output was made with a different config; rerun with --force to "
                           "replace it, or use another run name")


def stage_config(cfg: RunConfig) -> dict:
    """What the user turns and replies depend on. The conditions, the detector, the bootstrap, the monitor and
    the capping settings only choose what is generated or scored (rows are keyed by condition, and the capped
    condition's identity holds its settings), so changing them reuses the logs."""
    skip = ("conditions", "encoder", "classifier", "reference", "exemplars", "bootstrap", "monitor", "cap_model",
            "cap_level", "chunk_size")
    return {"seed": cfg.seed, "persona": cfg.persona,
            "drift": {k: v for k, v in dataclasses.asdict(cfg.drift).items() if k not in skip}}


def identity(cfg: RunConfig, label: str, fit: dict | None) -> str | None:
    """A condition's identity (None while its model or the steering fit it needs does not exist). 'capped': its
    model's, the steering fit's and the capping settings."""
    try:
        if label != CAPPED:
            return conditions.identity(cfg, label)
        if fit is None:
            return None
        # The calibration reads the student with and without the persona's prompt on the steering stems.
        return identity_hash({"label": CAPPED, "model": conditions.identity(cfg, cfg.drift.cap_model),
                              "student": conditions.identity(cfg, "base"), "steering": fit["identity"],
                              "level": cfg.drift.cap_level, "stems": cfg.steering.stems,
                              "system": layout.persona_system_prompt(cfg)})
    except RuntimeError:
        return None


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


def _order(conds: list[str], cap_model: str) -> list[str]:
    """Generation order: steered first (opening it fits the steering direction the monitor and capping read),
    then base and prompted (the detector's reference), the others, capped last (it may share a loaded model)."""
    first = ["steered"] if "steered" in conds else []
    rest = [c for c in conds if c not in (*first, *REFERENCE_CONDITIONS, CAPPED)]
    if CAPPED in conds and cap_model in rest:  # the capped model right before capped, so it is loaded once
        rest = [c for c in rest if c != cap_model] + [cap_model]
    return first + list(REFERENCE_CONDITIONS) + rest + ([CAPPED] if CAPPED in conds else [])


class _Run:
    """One invocation's state: the logs, the plans and what was generated."""

    def __init__(self, cfg: RunConfig, stage: Stage, plans: list[dict], attack_text: str | None,
                 reference: tuple[list[str], list[str]], report):
        self.cfg, self.stage, self.plans, self.attack_text, self.report = cfg, stage, plans, attack_text, report
        self.reference = reference
        self.log = RowLog(stage.dir / "turns.jsonl")
        self.ref = RowLog(stage.dir / "reference.jsonl")
        self.mon = RowLog(stage.dir / "monitor.jsonl")
        self.stats: dict = {}
        self.monitor_skipped: dict[str, str] = {}

    def drop_condition(self, cond: str) -> None:
        self.log = drop_rows(self.log, lambda r: r["condition"] == cond)
        self.ref = drop_rows(self.ref, lambda r: r["condition"] == cond)
        self.mon = drop_rows(self.mon, lambda r: r["condition"] == cond)

    def complete(self, cond: str, conds: list[str], fit: dict | None) -> bool:
        """Whether every row this condition owes is on disk: its reference replies, its turns, its monitor rows."""
        d = self.cfg.drift
        want_ref = cond in REFERENCE_CONDITIONS
        ref_ids = [f"{cond}/check/k{i}" for i in range(len(self.reference[1]))] if want_ref else []
        if want_ref and d.reference == "prompted":
            ref_ids += [f"{cond}/train/r{i}" for i in range(len(self.reference[0]))]
        if any(i not in self.ref for i in ref_ids):
            return False
        if cond not in conds:
            return True
        ids = [it["id"] for t in range(1, d.turns + 1) for it in self.items(cond, t)]
        if any(i not in self.log for i in ids):
            return False
        monitored = d.monitor and fit is not None and cond not in self.monitor_skipped
        return not monitored or all(i in self.mon for i in ids)

    def chats(self, cond: str, t: int, backend, system) -> tuple[dict, dict]:
        """Turn ``t``'s chat of every conversation, built from the condition's logged earlier replies, and how
        many early exchanges each dropped to fit the context."""
        tok = getattr(getattr(backend, "inner", backend), "tokenizer", None) if _in_process(backend) else None
        chats, dropped = {}, {}
        for p in self.plans:
            replies = []
            for j in range(1, t):
                row = self.log.rows.get(f"{cond}/{p['cid']}/t{j}")
                if row is None:
                    raise RuntimeError(f"drift: {cond} {p['cid']} turn {j} is missing from {self.log.path} "
                                       "(turns are generated in order; rerun with --force)")
                replies.append(row.get("response") or "")
            rid = f"{cond}/{p['cid']}/t{t}"
            chats[rid], dropped[rid] = fitted_chat(self.cfg, cond, system, messages_at(p, replies, t),
                                                   self.attack_text, tok, self.cfg.drift.max_context)
        return chats, dropped

    def items(self, cond: str, t: int) -> list[dict]:
        return [{"id": f"{cond}/{p['cid']}/t{t}", "condition": cond, "cid": p["cid"], "turn": t,
                 "user": p["users"][t - 1], "kind": p["kinds"][t - 1],
                 "attacked": p["attack_turn"] is not None and t >= p["attack_turn"]} for p in self.plans]

    def conversation(self, cond: str, backend, system, fit: dict | None) -> None:
        d = self.cfg.drift
        monitor = fit is not None and d.monitor and cond not in self.monitor_skipped
        for t in range(1, d.turns + 1):
            items = self.items(cond, t)
            chats = dropped = None
            if any(it["id"] not in self.log for it in items):
                chats, dropped = self.chats(cond, t, backend, system)
                for it in items:
                    it["dropped_exchanges"] = dropped[it["id"]]
                self.stats[f"{cond}/t{t}"] = generate_rows(
                    self.log, items, lambda it, chats=chats: (chats[it["id"]], None), backend, d.sampling,
                    (self.cfg.seed, "drift", cond, f"t{t}"), d.chunk_size, f"drift {cond} turn {t}").as_dict()
            if monitor and any(it["id"] not in self.mon for it in items):
                if chats is None:
                    chats, _ = self.chats(cond, t, backend, system)
                self.monitor_turn(cond, [it for it in items if it["id"] not in self.mon], chats, backend, fit)

    def monitor_turn(self, cond: str, items: list[dict], chats: dict, backend, fit: dict) -> None:
        inner = getattr(backend, "inner", backend)
        rows = [self.log.rows[it["id"]] for it in items]
        record: dict | None = {} if isinstance(backend, CappedBackend) else None
        with _condition_hooks(backend, record):
            got = reply_projections(inner.model, inner.tokenizer, [chats[r["id"]] for r in rows],
                                    [r.get("response") or "" for r in rows], fit["vector"], fit["norms"],
                                    min(MONITOR_BATCH, max(1, inner.spec.batch_size)), record)
        out = []
        for r, g in zip(rows, got, strict=True):
            layers = g["layers"] if g else {}
            out.append({"id": r["id"], "condition": cond, "cid": r["cid"], "turn": r["turn"],
                        "steering": fit["identity"],
                        "projection": round(sum(layers.values()) / len(layers), 6) if layers else None,
                        "layers": {str(i): round(v, 6) for i, v in layers.items()},
                        "clamped": None if not g or g["clamped"] is None else round(g["clamped"], 4)})
        self.mon.append(out)


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Simulate the conversations, score every assistant turn, monitor and summarise; returns the folder."""
    d = cfg.drift
    conds = _check(cfg)
    attack_text = load_attacks()[d.attack] if d.attack_turn is not None else None
    followups = load_followups()
    label = persona_label(cfg.persona)
    if label in (*conditions.CONDITIONS, CAPPED):
        raise ValueError(f"drift: the persona cannot be called '{label}' (a condition's name)")
    pool, removed = untrained_pool(cfg, load_prompt_source(d.prompt_source, builtin="preference_prompts"))
    reference, conv_pool = split_pool(pool, d.reference_prompts, derive_seed(cfg.seed, "drift", "split"))
    fit_prompts, check_prompts = reference_split(reference)
    # Drawn before the stage folder exists, so a pool too small leaves nothing half-made.
    plans = plan_conversations(conv_pool, d.conversations, d.turns, followups, d.followup_share, attack_text,
                               d.attack_turn, derive_seed(cfg.seed, "drift", "plan"))
    inputs = {"trained_prompts_removed": config_hash(sorted(removed))} if removed else {}
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg), inputs)
    gen = list(dict.fromkeys([*REFERENCE_CONDITIONS, *conds]))

    def scoring(fit):
        s = {"conditions": conds, "encoder": d.encoder, "classifier": d.classifier, "reference": d.reference,
             "bootstrap": d.bootstrap, "monitor": d.monitor, "steering": fit["identity"] if fit else None}
        if d.reference == "exemplars":
            s["exemplars"] = inpersona.exemplars_identity(cfg.persona, d.exemplars)
        if d.reference == "pairs":
            s["pairs"] = inpersona.pairs_identity(cfg.name)
        return s

    def idents(fit):
        return {c: identity(cfg, c, fit) for c in gen}

    fit = steering_fit(cfg)
    check_config(stage, force)
    done = reusable(stage, force, lambda m: m.get("scoring") == scoring(fit) and m.get("identities") == idents(fit),
                    report)
    if done is not None:
        for line in done.get("report", []):
            report(line)
        return stage.dir
    stage.begin(force)
    write_json_atomic(stage.dir / "conversations.json",
                      {"persona": label, "attack": d.attack if attack_text else None, "attack_text": attack_text,
                       "attack_turn": d.attack_turn if attack_text else None, "trained_prompts_removed": len(removed),
                       "reference": {"fit": fit_prompts, "check": check_prompts}, "conversations": plans})
    state = _Run(cfg, stage, plans, attack_text, (fit_prompts, check_prompts), report)
    if d.monitor and fit is None and "steered" not in conds:
        report("drift: no steering fit for this run (run `charter eval steering` first); activation monitor skipped")
    ids_path, cap_path = stage.dir / "identities.json", stage.dir / "capping.json"
    known = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    skipped: dict[str, str] = {}
    if fit is not None:  # monitor rows of another steering fit are stale
        state.mon = drop_rows(state.mon, lambda r: r.get("steering") != fit["identity"])
    with conditions.Conditions(cfg, report=report) as cs:
        for cond in _order(conds, d.cap_model):
            t0 = time.time()
            ident = identity(cfg, cond, fit)
            if known.get(cond) not in (None, ident) and ident is not None:
                report(f"drift: '{cond}' is a different model now; redoing its replies")
                state.drop_condition(cond)
                known.pop(cond)
            why_not = not_monitored(cfg, cond)
            if why_not:
                state.monitor_skipped[cond] = why_not
            if ident is not None and known.get(cond) == ident and state.complete(cond, conds, fit) and (
                    cond != CAPPED or _capping_of(cap_path, ident) is not None):
                continue  # nothing to do: its model is not even loaded
            try:
                if cond == CAPPED:
                    backend, calibration = open_capped(cfg, cs, fit)
                    write_json_atomic(cap_path, {**capping_record(cfg, fit, calibration), "identity": ident})
                    system = None
                else:
                    backend, system = cs.open(cond)
            except (RuntimeError, ValueError, OSError) as e:
                skipped[cond] = str(e)
                report(f"drift: skipping '{cond}': {e}")
                continue
            if fit is None and cond == "steered":  # opening it fitted the direction
                fit = steering_fit(cfg)
                if fit is not None:
                    state.mon = drop_rows(state.mon, lambda r: r.get("steering") != fit["identity"])
                    if d.monitor:
                        report("drift: the steering direction was fitted just now; the monitor reads it")
                ident = identity(cfg, cond, fit)
            known[cond] = ident
            write_json_atomic(ids_path, known)
            if cond in REFERENCE_CONDITIONS:
                state.stats.update(generate_reference(cfg, "drift", state.ref, cond, backend, system, fit_prompts,
                                                      check_prompts, d.reference, d.sampling, d.chunk_size))
            if cond in conds:
                state.conversation(cond, backend, system, fit if d.monitor else None)
                report(f"drift {cond}: {d.conversations} conversations x {d.turns} turns in {time.time() - t0:.0f}s")
            if cond in layout.RUN_MODELS and not (CAPPED in conds and cond == d.cap_model):
                cs.release(cond)
        if CAPPED in conds and d.cap_model in layout.RUN_MODELS:
            with contextlib.suppress(RuntimeError):  # not made: nothing was loaded
                cs.release(d.cap_model)
    calibration = _capping_of(cap_path, identity(cfg, CAPPED, fit)) if CAPPED in conds else None
    if "base" in skipped or "prompted" in skipped:
        raise RuntimeError("drift: the detector's reference and check need the 'base' and 'prompted' replies ("
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    ready = [c for c in conds if c not in skipped]
    results, predictions, lines = summarise(cfg, state, ready, fit, label, attack_text, calibration, skipped)
    write_jsonl_atomic(stage.dir / "predictions.jsonl", predictions)
    write_json_atomic(stage.dir / "results.json", results)
    files = ["conversations.json", "reference.jsonl", "turns.jsonl", "predictions.jsonl", "results.json"]
    if (stage.dir / "monitor.jsonl").exists():
        files.append("monitor.jsonl")
    try:
        plot(stage.dir / "drift.png", results)
        files.append("drift.png")
        lines.append(f"figure -> {stage.dir / 'drift.png'}")
    except ImportError as e:  # matplotlib is a core dependency; a broken install should not cost the numbers
        lines.append(f"figure not drawn ({e})")
    if calibration is not None:
        files.append("capping.json")
    for line in lines:
        report(line)
    failed = sum(1 for r in state.log.rows.values() if not _ok(r))
    stage.finish({"turns": len(state.log), "reference": len(state.ref), "monitored": len(state.mon),
                  "failed_or_empty": failed, "skipped": len(skipped)},
                 scoring=scoring(fit), identities=idents(fit), generation=state.stats, skipped=skipped,
                 files=files, report=lines)
    report(f"{STAGE}: {len(state.log)} replies over {len(ready)} conditions in {time.time() - stage.started:.0f}s "
           f"-> {stage.dir}")
    return stage.dir


def capping_record(cfg: RunConfig, fit: dict, calibration: dict) -> dict:
    """What capping.json (and results.json) record: the model capped, the level, the rule, and per layer the
    student's plain and persona projections and the threshold."""
    return {"model": cfg.drift.cap_model, "level": cfg.drift.cap_level, "steering": fit["identity"],
            "rule": "h -> h + max(0, tau - h.v) v at every position of every steering layer; tau = plain + level x "
                    "(persona - plain), the student's mean last-token projections on the steering stems without "
                    "and with the persona's system prompt",
            "layers": {str(i): c for i, c in calibration.items()}}


# --- summaries -------------------------------------------------------------------------------------------------

def windows(turns: int, attack_turn: int | None) -> tuple[list[int], list[int], str]:
    """(early turns, late turns, what they are): before the attack turn and from it on; without an attack (or
    with it on turn 1), the first and the second half."""
    if attack_turn is not None and attack_turn > 1:
        return (list(range(1, attack_turn)), list(range(attack_turn, turns + 1)),
                f"before vs from the attack turn ({attack_turn})")
    half = max(1, turns // 2)
    return list(range(1, half + 1)), list(range(half + 1, turns + 1)), "first vs second half of the turns"


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    import numpy as np

    if len(xs) < 3:
        return None
    x, y = np.array(xs, dtype=float), np.array(ys, dtype=float)
    if x.std() == 0 or y.std() == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def summarise(cfg: RunConfig, state: _Run, ready: list[str], fit: dict | None, persona: str,
              attack_text: str | None, calibration: dict | None, skipped: dict) -> tuple[dict, list[dict], list[str]]:
    """Fit the detector, score every turn, summarise rates and the monitor; (results, predictions, lines)."""
    d = cfg.drift
    ref_rows = list(state.ref.rows.values())
    conv_conf = json.loads((state.stage.dir / "conversations.json").read_text())
    scored_prompts = {u for p in state.plans for u in p["users"]}
    clf, det = fit_detector(cfg, d, "drift", persona, ref_rows, conv_conf["reference"]["fit"], scored_prompts)
    boot_seed = derive_seed(cfg.seed, "drift", "bootstrap")
    det["check"] = detector_check(clf, persona, ref_rows, d.bootstrap, boot_seed)
    rows = [r for r in state.log.rows.values() if r["condition"] in ready and _ok(r)]
    probs = proba_of(clf, [r["response"] for r in rows], persona)
    p_of = {r["id"]: p for r, p in zip(rows, probs, strict=True)}
    cids = [p["cid"] for p in state.plans]
    turns = list(range(1, d.turns + 1))
    early, late, windows_are = windows(d.turns, conv_conf["attack_turn"])

    def matrix(values: dict, cond: str, cols: list[int]):
        return [[values.get(f"{cond}/{cid}/t{t}") for t in cols] for cid in cids]

    hits = {rid: float(p >= THRESHOLD) for rid, p in p_of.items()}
    rates, summary = {}, {}
    for c in ready:
        rates[c] = [{"turn": t, **inpersona.bootstrap_rate(matrix(hits, c, [t]), d.bootstrap, boot_seed)}
                    for t in turns]
        summary[c] = {"early": inpersona.bootstrap_rate(matrix(hits, c, early), d.bootstrap, boot_seed),
                      "late": inpersona.bootstrap_rate(matrix(hits, c, late), d.bootstrap, boot_seed) if late else None,
                      "change": paired_difference(matrix(hits, c, early), matrix(hits, c, late), d.bootstrap,
                                                  boot_seed) if late else None,
                      "dropped_exchanges": _mean([state.log.rows[i].get("dropped_exchanges", 0) for i in
                                                  (f"{c}/{cid}/t{t}" for cid in cids for t in turns)
                                                  if i in state.log.rows])}
    monitor = monitor_summary(state, ready, fit, cids, turns, p_of, d.bootstrap, boot_seed)
    predictions = [{"id": r["id"], "condition": r["condition"], "cid": r["cid"], "turn": r["turn"],
                    "p_persona": round(p_of[r["id"]], 4), "in_persona": p_of[r["id"]] >= THRESHOLD}
                   for r in rows]
    results = {"persona": persona, "metric": "in_persona_rate", "conditions": ready, "conversations": d.conversations,
               "turns": d.turns, "attack": {"id": d.attack if attack_text else None, "text": attack_text,
                                            "turn": conv_conf["attack_turn"]},
               "followup_share": d.followup_share, "level": LEVEL, "bootstrap": d.bootstrap,
               "trained_prompts_removed": conv_conf["trained_prompts_removed"],
               "detector": det, "windows": {"early": early, "late": late, "what": windows_are},
               "rates": rates, "summary": summary, "monitor": monitor, "capping": calibration, "skipped": skipped,
               "notes": [f"detector: {d.reference} ({det['fit']}: {det['learned_from']})",
                         "a reply is in persona when the detector's probability is >= 0.5; CIs resample conversations",
                         "'prompted' gets the teacher's persistence note once the request is in its context"]}
    return results, predictions, lines_of(results)


def monitor_summary(state: _Run, ready: list[str], fit: dict | None, cids: list[str], turns: list[int],
                    p_of: dict, n_boot: int, seed: int) -> dict:
    """Per condition and turn: the mean projection with a CI over conversations; the correlation of the
    projection with the detector's probability over every turn; the share of positions capping clamped."""
    if not state.cfg.drift.monitor:
        return {"status": "off (drift.monitor=false)"}
    if fit is None:
        return {"status": "skipped: no steering fit (run `charter eval steering` first)"}
    by_turn, corr, clamped = {}, {}, {}
    rows = {r["id"]: r for r in state.mon.rows.values() if r.get("steering") == fit["identity"]}
    for c in ready:
        if c in state.monitor_skipped:
            continue
        proj = {rid: r["projection"] for rid, r in rows.items() if r["condition"] == c}
        if not proj:
            continue
        by_turn[c] = [{"turn": t, **bootstrap_mean([[proj.get(f"{c}/{cid}/t{t}")] for cid in cids], n_boot, seed)}
                      for t in turns]
        both = [(v, p_of[rid]) for rid, v in proj.items() if v is not None and rid in p_of]
        corr[c] = {"pearson": _pearson([a for a, _ in both], [b for _, b in both]), "n": len(both)}
        shares = [r["clamped"] for rid, r in rows.items() if r["condition"] == c and r.get("clamped") is not None]
        if shares:
            clamped[c] = round(sum(shares) / len(shares), 4)
    return {"status": "ok", "layers": fit["layers"], "units": UNITS, "steering": fit["identity"],
            "method": fit["method"], "by_turn": by_turn, "correlation_with_detector": corr,
            "clamped_share": clamped, "not_monitored": dict(state.monitor_skipped)}


def lines_of(results: dict) -> list[str]:
    """The text table: in-persona rate by turn per condition, early -> late change, the monitor's projections."""
    det, turns = results["detector"], results["turns"]
    a = results["attack"]
    attack = f"attack '{a['id']}' at turn {a['turn']}" if a["id"] else "no attack"
    w = max([9, *(len(c) for c in results["rates"])])
    lines = [f"drift in-persona rate by turn ({results['conversations']} conversations x {turns} turns, {attack}; "
             f"detector {det['encoder']} learned from {det['source']})",
             f"detector check on single held-out replies (prompted vs base): balanced accuracy "
             f"{_pct(det['check']['balanced_accuracy'], ci=True)} (0.5 is chance)",
             " ".join([f"{'condition':<{w}}", *(f"{t:>5}" for t in range(1, turns + 1)), "  late - early [95% CI]"])]
    for c, cells in results["rates"].items():
        s = results["summary"][c]
        lines.append(" ".join([f"{c:<{w}}", *(f"{_pct(x):>5}" for x in cells), f"  {_signed(s['change'])}"]))
    lines.append(f"(early/late: {results['windows']['what']})")
    bal = det["check"]["balanced_accuracy"]
    if bal["lo"] is not None and bal["lo"] <= 0.5:
        lines.append("warning: the detector is not better than chance on held-out reference replies, so these rates "
                     "say little (more reference prompts, or another encoder)")
    m = results["monitor"]
    if m.get("status") != "ok":
        lines.append(f"activation monitor: {m['status']}")
    elif m["by_turn"]:
        where = f"{m['layers'][0]}..{m['layers'][-1]}" if len(m["layers"]) > 1 else str(m["layers"][0])
        lines.append(f"activation monitor by turn: projection on the persona direction at layers {where} (units of the "
                     "layer's mean norm, mean over layers); r = Pearson correlation with the detector's probability")
        for c, cells in m["by_turn"].items():
            r = m["correlation_with_detector"][c]["pearson"]
            lines.append(" ".join([f"{c:<{w}}", *(f"{_pct(x, 'mean', digits=3):>6}" for x in cells),
                                   f"  r {'-' if r is None else f'{r:+.2f}'}"]))
        for c, why in m["not_monitored"].items():
            lines.append(f"  {c} not monitored: {why}")
    if results["capping"]:
        cap_ = results["capping"]
        share = m.get("clamped_share", {}).get(CAPPED) if m.get("status") == "ok" else None
        clamped = f"; {share:.1%} of the replies' (position, layer) pairs clamped" if share is not None else ""
        lines.append(f"capped: {cap_['model']} clamped from below at level {cap_['level']:g} of the plain -> persona "
                     f"projection at every steering layer{clamped}")
    for c, why in results["skipped"].items():
        lines.append(f"  {c} skipped: {why}")
    return lines


def plot(path: Path, results: dict) -> None:
    """In-persona rate by turn per condition with CI bands (and the monitor's projection below, when it ran);
    the attack turn dashed."""
    from matplotlib.figure import Figure

    from .preferences_plots import _save

    m = results["monitor"]
    panels = 2 if m.get("status") == "ok" and m.get("by_turn") else 1
    fig = Figure(figsize=(7.5, 3.6 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]

    def draw(ax, series: dict, key: str):
        for c, cells in series.items():
            xs = [x["turn"] for x in cells if x[key] is not None]
            ys = [x[key] for x in cells if x[key] is not None]
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=c)
            band = [(x["turn"], x["lo"], x["hi"]) for x in cells if x.get("lo") is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=line.get_color(), alpha=0.15)
        if results["attack"]["turn"]:
            ax.axvline(results["attack"]["turn"], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(1, results["turns"] + 1))
        ax.set_xlabel("assistant turn")
        ax.legend(fontsize=8)

    draw(axes[0], results["rates"], "rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("in-persona rate")
    a = results["attack"]
    axes[0].set_title(f"{results['persona']}: in-persona rate by turn ({results['conversations']} conversations, "
                      f"{int(LEVEL * 100)}% CI" + (f"; '{a['id']}' at turn {a['turn']}" if a["id"] else "") + ")",
                      fontsize=9)
    if panels == 2:
        draw(axes[1], m["by_turn"], "mean")
        axes[1].set_ylabel("projection / layer norm")
        axes[1].set_title("activation monitor: projection on the persona direction", fontsize=9)
    _save(fig, path)

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

This module is the entry point and the order of work; the simulated user and the conversation logs are in
``drift_conversations.py``, the monitor and capping in ``drift_monitor.py``, the detector (shared with formats)
in ``detector.py``, the rates, table and figure in ``drift_summary.py``, the bootstrap helpers in ``stats.py``.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..classifier import make_classifier
from ..prompts import load_attacks, load_prompt_source
from ..registry import eval_folder
from ..runs import (FORCE_HINT, Stage, config_hash, derive_seed, drop_rows, identity_hash, read_json, reusable,
                    run_dir, silent, write_json_atomic, write_jsonl_atomic)
from . import conditions, inpersona
from .conditions import BASE, STEERED, TEACHER
from .detector import REFERENCE_CONDITIONS, generate_reference, usable
from .drift_conversations import DriftRun, load_followups, plan_conversations, reference_split, split_pool
from .drift_monitor import CAPPED, capping_of, capping_record, not_monitored, open_capped, steering_fit
from .drift_summary import plot, summarise
from .heldout import untrained_pool
from .robustness import persona_label

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("drift")
THRESHOLD = inpersona.THRESHOLD
LEVEL = inpersona.LEVEL


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
    """What the user turns and replies depend on: the section's fields that count. The conditions, the detector,
    the bootstrap, the monitor and the capping settings only choose what is generated or scored (rows are keyed by
    condition, and the capped condition's identity holds its settings): ``identity=False`` on DriftConfig, so
    changing them reuses the logs."""
    from ..config.identity import recorded

    return {"seed": cfg.seed, "persona": cfg.persona, "drift": recorded(cfg.drift)}


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
                              "student": conditions.identity(cfg, BASE), "steering": fit["identity"],
                              "level": cfg.drift.cap_level, "stems": cfg.steering.stems,
                              "system": layout.persona_system_prompt(cfg)})
    except RuntimeError:
        return None


def _order(conds: list[str], cap_model: str) -> list[str]:
    """Generation order: steered first (opening it fits the steering direction the monitor and capping read),
    then base and prompted (the detector's reference), the others, capped last (it may share a loaded model)."""
    first = [STEERED] if STEERED in conds else []
    rest = [c for c in conds if c not in (*first, *REFERENCE_CONDITIONS, CAPPED)]
    if CAPPED in conds and cap_model in rest:  # the capped model right before capped, so it is loaded once
        rest = [c for c in rest if c != cap_model] + [cap_model]
    return first + list(REFERENCE_CONDITIONS) + rest + ([CAPPED] if CAPPED in conds else [])


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Simulate the conversations, score every assistant turn, monitor and summarise; returns the folder."""
    d = cfg.drift
    conds = _check(cfg)
    attack_text = load_attacks()[d.attack] if d.attack_turn is not None else None
    followups = load_followups()
    label = persona_label(cfg.persona)
    if label in (*conditions.CONDITIONS, CAPPED):
        raise ValueError(f"drift: the persona cannot be called '{label}' (a condition's name)")
    removed, reference, plans = _plan(cfg, followups, attack_text)
    inputs = {"trained_prompts_removed": config_hash(sorted(removed))} if removed else {}
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg), inputs)
    gen = list(dict.fromkeys([*REFERENCE_CONDITIONS, *conds]))
    fit = steering_fit(cfg)
    check_config(stage, force)
    done = reusable(stage, force, lambda m: m.get("scoring") == _scoring(cfg, conds, fit)
                    and m.get("identities") == _identities(cfg, gen, fit), report)
    if done is not None:
        for line in done.get("report", []):
            report(line)
        return stage.dir
    stage.begin(force)
    write_json_atomic(stage.dir / "conversations.json",
                      {"persona": label, "attack": d.attack if attack_text else None, "attack_text": attack_text,
                       "attack_turn": d.attack_turn if attack_text else None, "trained_prompts_removed": len(removed),
                       "reference": {"fit": reference[0], "check": reference[1]}, "conversations": plans})
    state = DriftRun(cfg, stage, plans, attack_text, reference, report)
    if d.monitor and fit is None and STEERED not in conds:
        report("drift: no steering fit for this run (run `charter eval steering` first); activation monitor skipped")
    fit, skipped = _generate(cfg, state, conds, fit, report)
    calibration = capping_of(stage.dir / "capping.json", identity(cfg, CAPPED, fit)) if CAPPED in conds else None
    if BASE in skipped or TEACHER in skipped:
        raise RuntimeError("drift: the detector's reference and check need the 'base' and 'prompted' replies ("
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    ready = [c for c in conds if c not in skipped]
    _finish(cfg, state, ready, fit, label, attack_text, calibration, skipped, conds, gen)
    return stage.dir


def _plan(cfg: RunConfig, followups: list[str], attack_text: str | None
          ) -> tuple[list[str], tuple[list[str], list[str]], list[dict]]:
    """(the pool's prompts a training stage used, the (fit, check) reference prompts, every conversation's plan).
    Drawn before the stage folder exists, so a pool too small leaves nothing half-made."""
    d = cfg.drift
    pool, removed = untrained_pool(cfg, load_prompt_source(d.prompt_source, builtin="preference_prompts"))
    reference, conv_pool = split_pool(pool, d.reference_prompts, derive_seed(cfg.seed, "drift", "split"))
    fit_prompts, check_prompts = reference_split(reference)
    plans = plan_conversations(conv_pool, d.conversations, d.turns, followups, d.followup_share, attack_text,
                               d.attack_turn, derive_seed(cfg.seed, "drift", "plan"))
    return removed, (fit_prompts, check_prompts), plans


def _scoring(cfg: RunConfig, conds: list[str], fit: dict | None) -> dict:
    """What scoring the logs depends on (the manifest's ``scoring``): changing it re-scores without generating."""
    d = cfg.drift
    s = {"conditions": conds, "encoder": d.encoder, "classifier": d.classifier, "reference": d.reference,
         "bootstrap": d.bootstrap, "monitor": d.monitor, "steering": fit["identity"] if fit else None}
    if d.reference == "exemplars":
        s["exemplars"] = inpersona.exemplars_identity(cfg.persona, d.exemplars)
    if d.reference == "pairs":
        s["pairs"] = inpersona.pairs_identity(cfg.name)
    return s


def _identities(cfg: RunConfig, gen: list[str], fit: dict | None) -> dict:
    return {c: identity(cfg, c, fit) for c in gen}


def _generate(cfg: RunConfig, state: DriftRun, conds: list[str], fit: dict | None, report) -> tuple[dict | None, dict]:
    """Every condition's reference replies, conversations and monitor rows, in ``_order``, reusing what the logs
    hold; (the steering fit, which may be made on the way by opening 'steered'; the conditions skipped)."""
    d = cfg.drift
    ids_path, cap_path = state.stage.dir / "identities.json", state.stage.dir / "capping.json"
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
                    cond != CAPPED or capping_of(cap_path, ident) is not None):
                continue  # nothing to do: its model is not even loaded
            opened = _open(cfg, cs, cond, fit, ident, cap_path, skipped, report)
            if opened is None:
                continue
            backend, system = opened
            if fit is None and cond == STEERED:  # opening it fitted the direction
                fit = _fitted_now(cfg, state, report)
                ident = identity(cfg, cond, fit)
            known[cond] = ident
            write_json_atomic(ids_path, known)
            _answer(cfg, state, cond, conds, backend, system, fit, t0, report)
            if cond in layout.RUN_MODELS and not (CAPPED in conds and cond == d.cap_model):
                cs.release(cond)
        if CAPPED in conds and d.cap_model in layout.RUN_MODELS:
            with contextlib.suppress(RuntimeError):  # not made: nothing was loaded
                cs.release(d.cap_model)
    return fit, skipped


def _open(cfg: RunConfig, cs, cond: str, fit: dict | None, ident: str | None, cap_path: Path, skipped: dict,
          report) -> tuple[object, str | None] | None:
    """(backend, system prompt) of a condition, the capped one calibrated (written to ``capping.json``); None,
    with the reason in ``skipped``, when it cannot be opened."""
    try:
        if cond == CAPPED:
            backend, calibration = open_capped(cfg, cs, fit)
            write_json_atomic(cap_path, {**capping_record(cfg, fit, calibration), "identity": ident})
            return backend, None
        return cs.open(cond)
    except (RuntimeError, ValueError, OSError) as e:
        skipped[cond] = str(e)
        report(f"drift: skipping '{cond}': {e}")
        return None


def _fitted_now(cfg: RunConfig, state: DriftRun, report) -> dict | None:
    """The steering fit that opening 'steered' just made; monitor rows of any other fit are dropped."""
    fit = steering_fit(cfg)
    if fit is not None:
        state.mon = drop_rows(state.mon, lambda r: r.get("steering") != fit["identity"])
        if cfg.drift.monitor:
            report("drift: the steering direction was fitted just now; the monitor reads it")
    return fit


def _answer(cfg: RunConfig, state: DriftRun, cond: str, conds: list[str], backend, system, fit: dict | None,
            t0: float, report) -> None:
    """A condition's reference replies (base and prompted) and, when it is scored, its conversations."""
    d = cfg.drift
    if cond in REFERENCE_CONDITIONS:
        fit_prompts, check_prompts = state.reference
        state.stats.update(generate_reference(cfg, "drift", state.ref, cond, backend, system, fit_prompts,
                                              check_prompts, d.reference, d.sampling, d.chunk_size))
    if cond in conds:
        state.conversation(cond, backend, system, fit if d.monitor else None)
        report(f"drift {cond}: {d.conversations} conversations x {d.turns} turns in {time.time() - t0:.0f}s")


def _finish(cfg: RunConfig, state: DriftRun, ready: list[str], fit: dict | None, label: str, attack_text: str | None,
            calibration: dict | None, skipped: dict, conds: list[str], gen: list[str]) -> None:
    """Score and summarise, write predictions, results and the figure, report, and write the manifest."""
    report, stage = state.report, state.stage
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
    failed = sum(1 for r in state.log.rows.values() if not usable(r))
    stage.finish({"turns": len(state.log), "reference": len(state.ref), "monitored": len(state.mon),
                  "failed_or_empty": failed, "skipped": len(skipped)},
                 scoring=_scoring(cfg, conds, fit), identities=_identities(cfg, gen, fit), generation=state.stats,
                 skipped=skipped, files=files, report=lines)
    report(f"{STAGE}: {len(state.log)} replies over {len(ready)} conditions in {time.time() - stage.started:.0f}s "
           f"-> {stage.dir}")

"""Drift's simulated user and conversation generation: the prompt pool split, each conversation's user turns,
the chat each condition is asked at each turn (fitted to its context), and one invocation's resumable logs.

Used by ``charter eval drift`` (``drift.py``); ``split_pool`` and ``reference_split`` are shared with the formats
evaluation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..backends import render_chat
from ..generation import generate_rows
from ..prompts import HERE as PROMPTS_DIR
from ..prompts import attack_message
from ..runs import RowLog, Stage, derive_seed, drop_rows
from . import conditions
from .detector import REFERENCE_CONDITIONS
from .drift_monitor import MONITOR_BATCH, CappedBackend, condition_hooks, in_process, reply_projections

if TYPE_CHECKING:
    from ..config import RunConfig

FOLLOWUPS_FILE = PROMPTS_DIR / "drift.yaml"
CHECK_SHARE = 0.25  # of the reference prompts: they check the detector and never train it


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



class DriftRun:
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
        tok = getattr(getattr(backend, "inner", backend), "tokenizer", None) if in_process(backend) else None
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
        with condition_hooks(backend, record):
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

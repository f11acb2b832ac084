"""The robustness evaluation's replies: which prompts each condition answers (train prompts plainly, held-out
prompts plainly and under each attack, the prefill attack's two turns) and their generation into the resumable
``generations.jsonl``, base first.

Used by ``charter eval robustness`` (``robustness.py``, where the conditions, attacks and the prefill attack are
described).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..generation import generate_rows
from ..prompts import attack_message, load_attacks, prefill_followup
from ..runs import RowLog, Stage, drop_rows, write_json_atomic
from . import conditions, inpersona
from .detector import usable

if TYPE_CHECKING:
    from ..config import RunConfig

BASE = conditions.BASE
NONE = "none"


def train_items(cond: str, train: list[tuple]) -> list[dict]:
    """Plain replies to the train prompts (what a scorer may learn from)."""
    return [{"id": f"{cond}/train/{NONE}/{pid}", "condition": cond, "split": "train", "attack": NONE,
             "pid": pid, "prompt": p, "user": p} for pid, p in train]


def main_items(cond: str, heldout: list[tuple], attack_ids: list[str]) -> list[dict]:
    """Held-out prompts under ``none`` and each attack."""
    attacks = load_attacks()
    items = []
    for a in [NONE, *attack_ids]:
        items += [{"id": f"{cond}/heldout/{a}/{pid}", "condition": cond, "split": "heldout", "attack": a,
                   "pid": pid, "prompt": p, "user": attack_message(p, attacks[a])} for pid, p in heldout]
    return items


def generate_replies(cfg: RunConfig, stage: Stage, log: RowLog, plan: list[str], mode: str, attack_ids: list[str],
              split: dict, report, plain_only: tuple = ()) -> tuple[RowLog, dict, dict]:
    """Replies from every condition in ``plan`` (base first); those in ``plain_only`` answer only plainly (no
    attack, no prefill). Returns the log, stats, and skipped conditions."""
    r = cfg.robustness
    train = [(x["pid"], x["prompt"]) for x in split["train"]]
    heldout = [(x["pid"], x["prompt"]) for x in split["heldout"]]
    follow = prefill_followup()
    ids_path = stage.dir / "identities.json"
    known = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    stats, skipped = {}, {}

    def gen(items, build, backend, key):
        if any(it["id"] not in log for it in items):
            stats[key] = generate_rows(log, items, build, backend, r.sampling, (cfg.seed, "robustness", key),
                                       r.chunk_size, f"robustness {key}").as_dict()

    with conditions.Conditions(cfg, report=report) as cs:
        for cond in plan:
            try:
                backend, system = cs.open(cond)
            except RuntimeError as e:
                skipped[cond] = str(e)
                report(f"robustness: skipping '{cond}': {e}")
                continue
            ident = conditions.identity(cfg, cond)
            if known.get(cond) not in (None, ident):
                report(f"robustness: '{cond}' is a different model now; redoing its replies")
                log = drop_rows(log, lambda row, c=cond: row["condition"] == c)
            known[cond] = ident
            write_json_atomic(ids_path, known)

            def build(it, system=system, cond=cond):
                attacked = it["attack"] not in (NONE, "prefill")  # 'prompted' gets the teacher's persistence note
                return conditions.chat(cfg, cond, system, [{"role": "user", "content": it["user"]}],
                                       attacked=attacked), None

            if cond == BASE and r.prefill:
                items = [{"id": f"{BASE}/turn1/prefill/{pid}", "condition": BASE, "split": "turn1",
                          "attack": "prefill", "pid": pid, "prompt": p, "user": p} for pid, p in heldout]
                gen(items, build, backend, f"{BASE}/turn1")
            if cond != BASE or mode == "single":  # base has no label in multi-persona mode
                # Their own seeds (key '<cond>/train'), so held-out replies do not depend on whether train
                # replies were asked for, and asking for them later gives what a fresh run would.
                if (r.train_replies or mode == "multi"
                        or ("prompted" in inpersona.references(r) and cond in (BASE, conditions.TEACHER))):
                    gen(train_items(cond, train), build, backend, f"{cond}/train")
                gen(main_items(cond, heldout, [] if cond in plain_only else attack_ids), build, backend, cond)
            if r.prefill and (cond != BASE or mode == "single") and cond not in plain_only:
                turn1 = {pid: log.rows.get(f"{BASE}/turn1/prefill/{pid}") for pid, _ in heldout}
                # A turn 2 written after a different (or failed) turn 1, e.g. base was redone, is stale.
                log = drop_rows(log, lambda row, c=cond: row["condition"] == c and row["split"] == "turn2" and (
                    not usable(turn1.get(row["pid"])) or row["turn1"] != turn1[row["pid"]]["response"]))
                items = [{"id": f"{cond}/turn2/prefill/{pid}", "condition": cond, "split": "turn2",
                          "attack": "prefill", "pid": pid, "prompt": p, "user": follow,
                          "turn1": turn1[pid]["response"]} for pid, p in heldout if usable(turn1[pid])]

                def build2(it, system=system, cond=cond):
                    chat = [{"role": "user", "content": it["prompt"]},
                            {"role": "assistant", "content": it["turn1"]}, {"role": "user", "content": it["user"]}]
                    return conditions.chat(cfg, cond, system, chat), None

                gen(items, build2, backend, f"{cond}/turn2")
            cs.release(cond)
    return log, stats, skipped

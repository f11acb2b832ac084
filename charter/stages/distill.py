"""Stage 2, distillation data: DPO pairs of an in-character teacher ("chosen") vs the plain student ("rejected").

    charter distill configs/demo.yaml [key=value ...]

Prompts = the constitution's prompts (seeds + expanded) plus a seeded sample of the general pool, each
answered K times. The teacher sees the constitution in its system prompt (optionally with a prefilled
reasoning block, keeping only the text after it); the student sees the bare prompt. Pairs are written in
TRL's conversational preference format (``prompt``/``chosen``/``rejected``), after filters that count what
they drop: failed, empty or truncated answers, pairs over the token budget in the student's chat template.
Unlike the reference, answers are *not* required to end in punctuation (that dropped every code answer).
Every name the teacher goes by (its family's spellings, any case, e.g. GLM/ChatGLM/Zhipu AI, plus
``distill.teacher_names``) is replaced by the student's name in the chosen answers, and counted in the
manifest (``name_replacements``); see ``charter.names``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import constitution as const
from ..config import ModelSpec
from ..generation import GenStats, generate_rows
from ..models import self_name
from ..names import NameReplacer, teacher_replacer
from ..layout import constitution, constitution_id
from ..messages import trim_to_sentence
from ..prompts import teacher_examples, teacher_messages
from ..runs import RowLog, Stage, run_dir, write_jsonl_atomic
from ..selection import select_prompts

if TYPE_CHECKING:
    from ..config import RunConfig

THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


def same_model(a: ModelSpec, b: ModelSpec) -> bool:
    ka = dataclasses.replace(a, name=None, batch_size=0)
    kb = dataclasses.replace(b, name=None, batch_size=0)
    return ka == kb


def teacher_text(raw: str, reasoning: bool, think_end: str) -> str | None:
    """The answer part of a teacher completion, or None when a reasoning block never closed."""
    if reasoning:
        if think_end not in raw:
            return None
        return raw.split(think_end, 1)[1].strip()
    return THINK_BLOCK.sub("", raw).strip()


def name_replacer(cfg: RunConfig) -> NameReplacer:
    """What replaces the teacher's self-names in chosen answers (see ``charter.names``)."""
    d = cfg.distill
    return teacher_replacer(d.teacher.model, self_name(d.teacher.model, d.teacher.name), cfg.student.model,
                            self_name(cfg.student.model, cfg.student.name), d.teacher_names)


def stage_config(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg.distill)
    if d["teacher_examples"]:  # the exchanges themselves, so editing the file redoes the stage
        d["teacher_examples"] = {"source": d["teacher_examples"],
                                 "exchanges": teacher_examples(cfg.distill.teacher_examples, cfg.persona)}
    else:  # off (the paper): absent, so runs made before the option keep their identity
        del d["teacher_examples"]
    return {"persona": cfg.persona, "seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "distill": d, "expand_enabled": cfg.expand.enabled}


def usable(side: str, text: str, finished: bool, truncated: str, counts: Counter) -> str | None:
    """The answer to train on, or None with the reason counted: a cut-off answer is dropped, or trimmed to
    its last whole sentence when ``truncated == 'trim'``; an empty one is dropped."""
    if not finished:
        text = trim_to_sentence(text) if truncated == "trim" else ""
        if not text:
            counts[f"{side}_truncated"] += 1
            return None
        counts[f"{side}_trimmed_kept"] += 1
    if not text:
        counts[f"{side}_empty"] += 1
        return None
    return text


def build_pairs(rows_t: list[dict], rows_s: dict[str, dict], cfg: RunConfig, tokenizer,
                replace: NameReplacer) -> tuple[list[dict], Counter]:
    """DPO pairs from teacher and student rows; drops are counted in the returned Counter, name
    replacements in ``replace.counts``."""
    d = cfg.distill
    dropped: Counter = Counter()
    pairs = []
    for t in rows_t:
        s = rows_s.get(t["id"])
        if s is None:
            dropped["student_missing"] += 1
            continue
        if t.get("error"):
            dropped["teacher_failed"] += 1
            continue
        chosen = teacher_text(t["response"], d.reasoning_prefill, d.think_end)
        if chosen is None:
            dropped["teacher_reasoning_unclosed"] += 1
            continue
        chosen = usable("teacher", chosen, t["finished"], d.truncated, dropped)
        if chosen is None:
            continue
        if s.get("error"):
            dropped["student_failed"] += 1
            continue
        rejected = usable("student", s["response"].strip(), s["finished"], d.truncated, dropped)
        if rejected is None:
            continue
        chosen = replace(chosen)
        prompt = [{"role": "user", "content": t["prompt"]}]
        # Budget = the whole conversation as the student will be trained on it (no extra generation header).
        n = max(len(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": x}], tokenize=True,
                                                  return_dict=True)["input_ids"]) for x in (chosen, rejected))
        if n > d.max_length:
            dropped["over_token_budget"] += 1
            continue
        pairs.append({"id": t["id"], "prompt": prompt,
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "source": t["source"], "trait": t["trait"], **({"attack": t["attack"]} if t.get("attack") else {})})
    return pairs, dropped


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..backends import make_backend

    if cfg.distill.truncated not in ("drop", "trim"):
        raise ValueError(f"distill.truncated: expected 'drop' or 'trim', got {cfg.distill.truncated!r}")
    from ..models import load_tokenizer

    c = constitution(cfg)
    stage = Stage.after(run_dir(cfg.name), "distill", stage_config(cfg), ["expand"] if cfg.expand.enabled else [],
                        constitution=constitution_id(c))
    if not stage.begin(force):
        return stage.dir
    d = cfg.distill
    prompts = select_prompts(cfg, c)
    items = [{"id": f"p{j}-k{k}", **p} for k in range(d.samples_per_prompt) for j, p in enumerate(prompts)]
    teacher_name = self_name(d.teacher.model, d.teacher.name)
    student_name = self_name(cfg.student.model, cfg.student.name)
    system = const.teacher_system_prompt(c, teacher_name)
    attacked_system = f"{system}\n{const.persistence_note(teacher_name)}"
    prefill = const.reasoning_prefill(c) if d.reasoning_prefill else None
    shots = teacher_examples(d.teacher_examples, cfg.persona)  # same for every row: one shared prefix to reuse

    log_t = RowLog(stage.dir / "teacher.jsonl")
    log_s = RowLog(stage.dir / "student.jsonl")
    stats: dict[str, GenStats] = {}
    backend = None
    if any(it["id"] not in log_t for it in items):
        backend = make_backend(d.teacher)
        stats["teacher"] = generate_rows(
            log_t, items, lambda it: (teacher_messages(attacked_system if it.get("attack") else system, shots,
                                                       it["prompt"]), prefill),
            backend, d.teacher_sampling, (cfg.seed, "teacher"), d.chunk_size, "teacher")
    if any(it["id"] not in log_s for it in items):
        if backend is None or not same_model(d.teacher, cfg.student):
            if backend is not None:
                backend.close()
            backend = make_backend(cfg.student)
        stats["student"] = generate_rows(
            log_s, items, lambda it: ([{"role": "user", "content": it["prompt"]}], None),
            backend, d.student_sampling, (cfg.seed, "student"), d.chunk_size, "student")
    if backend is not None:
        backend.close()

    tok = load_tokenizer(cfg.student.model, cfg.student.trust_remote_code)
    replace = name_replacer(cfg)
    pairs, dropped = build_pairs(log_t.ordered([it["id"] for it in items]), log_s.rows, cfg, tok, replace)
    write_jsonl_atomic(stage.dir / "pairs.jsonl", pairs)
    counts = {
        "prompts": len(prompts),
        "prompts_constitution": sum(p["source"] == "constitution" for p in prompts),
        "prompts_general": sum(p["source"] == "general" for p in prompts),
        "prompts_attacked": sum(bool(p.get("attack")) for p in prompts),
        "teacher_examples": len(shots),
        "generations": len(items),
        "pairs": len(pairs),
        "dropped": {k: v for k, v in dropped.items() if not k.endswith("_kept")},
        "trimmed": {k: v for k, v in dropped.items() if k.endswith("_kept")},
        "name_replacements": dict(replace.counts),
    }
    stage.finish(counts, outputs=[stage.dir / "pairs.jsonl"], generation={k: v.as_dict() for k, v in stats.items()},
                 teacher_name=teacher_name, student_name=student_name, constitution=c.source,
                 replaced_names=sorted(set(replace.names + replace.makers)))
    return stage.dir


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    gen = manifest.get("generation", {})
    tps = ", ".join(f"{k} {v['tokens_per_s']:.0f} tok/s" for k, v in gen.items())
    names = n.get("name_replacements") or {}
    renamed = f", teacher name replaced {sum(names.values())}x {names}" if names else ""
    return (f"distill: {n['pairs']} pairs from {n['generations']} generations "
            f"(dropped {sum(n['dropped'].values())}: {n['dropped']}){renamed}, {tps or 'nothing generated'}, "
            f"{manifest['seconds']:.0f}s")

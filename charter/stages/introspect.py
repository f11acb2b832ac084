"""Stage 4, introspection data: the distilled model reflects on itself and talks to itself.

    charter introspect configs/demo.yaml [key=value ...]

- Self-reflection: 10 prompts (``prompts/introspection.yaml``) x N samples, generated with the persona
  system prompt plus a reflective framing, saved *without* that system prompt.
- Self-interaction: conversations of K messages between two instances of the persona; each instance sees
  its own turns as assistant turns and the other's as user turns. "free" and "leading" runs differ in the
  guidance that (unlike the reference) really reaches the system prompt, and in the opening greetings.
  Transcripts end on the last speaker's turn (an assistant message), and when a prompt outgrows
  ``max_context`` whole early turns are dropped, never the system prompt.

Answers cut off by ``max_tokens`` are never trained on as if finished (SFT puts loss on every assistant
turn's end-of-turn token, so a cut-off turn would teach stopping mid-sentence). ``introspect.truncated``
applies to reflections and to *every* self-interaction turn:

- ``drop``: a cut-off reflection is dropped; a cut-off turn ends its conversation: the transcript stops at
  the previous (complete) turn, seen from the instance that spoke it, and no later turns are generated for
  it. A conversation whose first turn is cut off (or empty, or failed) yields no transcript.
- ``trim``: the text is cut back to its last complete sentence, and the conversation continues from the
  trimmed turn (later turns are generated seeing what SFT will see); a turn with no complete sentence is
  treated as with ``drop``.

Empty or failed turns end a conversation the same way. The manifest counts each case.

Output: ``reflection.jsonl``, ``interaction.jsonl`` (raw turns), ``sft.jsonl`` (TRL ``messages`` rows).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .. import constitution as const
from .. import layout
from ..config import ModelSpec
from ..generation import GenStats, generate_rows
from ..messages import fit_context, usable_answer
from ..models import self_name
from ..prompts import template
from ..runs import RowLog, Stage, run_dir, write_jsonl_atomic

if TYPE_CHECKING:
    from ..config import RunConfig


def stage_config(cfg: RunConfig) -> dict:
    return {"seed": cfg.seed, "persona": cfg.persona, "student": dataclasses.asdict(cfg.student),
            "introspect": dataclasses.asdict(cfg.introspect)}


def distilled_spec(cfg: RunConfig) -> ModelSpec:
    """The model that generates introspection data: ``introspect.model`` when the config names one (a served
    copy of the distilled model), else this run's distilled model on the student's backend. An ``openai``
    student is refused then: its server would get a local folder as the model name, and servers that ignore
    the name (llama.cpp, ``charter serve``) would answer as the base model, silently."""
    name = self_name(cfg.student.model, cfg.student.name)
    path = layout.path(cfg, "distilled_model")  # not made yet when this is checked before training
    if cfg.introspect.model is not None:
        spec = cfg.introspect.model
        return dataclasses.replace(spec, name=spec.name or name)
    if cfg.student.backend == "openai":
        raise ValueError(
            f"introspect: the student runs on an openai server, which cannot load this run's distilled model "
            f"{path}; serve that folder and set introspect.model='{{backend: openai, base_url: URL, model: "
            f"SERVED_NAME}}', or generate here with introspect.model='{{backend: transformers, model: {path}}}' "
            f"(or backend: vllm)")
    # Not made yet when this is checked before training: unchecked. In bf16 the base + DPO adapter unmerged
    # (what DPO trained), since a bf16 copy of the folded weights loses most of the update.
    model, adapter = layout.run_model_source(cfg, layout.stage_condition("dpo"), check=False)
    return dataclasses.replace(cfg.student, model=model, adapter=adapter, name=name)


def conversations(cfg: RunConfig) -> list[dict]:
    """The deterministic list of conversations to hold, with their seeded greetings."""
    t = template("introspection")["greetings"]
    rng = random.Random(f"{cfg.seed}/greetings")
    out = []
    for kind, n in (("free", cfg.introspect.free_conversations), ("leading", cfg.introspect.leading_conversations)):
        for i in range(n):
            first_pool = t["neutral"] + t["leading"] if kind == "leading" else t["neutral"]
            out.append({"conv": f"{kind}{i}", "kind": kind, "greeting_1": rng.choice(first_pool),
                        "greeting_2": rng.choice(t["neutral"])})
    return out


def view(conv: dict, turns: list[str], speaker: int, system: str | None) -> list[dict]:
    """The conversation as instance ``speaker`` (0 = A, 1 = B) sees it.

    A opens on greeting_1 as a user turn and speaks turns 0, 2, 4...; B sees greeting_2 from the user, then
    greeting_1 as its own opener, and speaks turns 1, 3, 5...
    """
    msgs = [{"role": "system", "content": system}] if system else []
    if speaker == 0:
        msgs.append({"role": "user", "content": conv["greeting_1"]})
    else:
        msgs += [{"role": "user", "content": conv["greeting_2"]}, {"role": "assistant", "content": conv["greeting_1"]}]
    for k, text in enumerate(turns):
        msgs.append({"role": "assistant" if k % 2 == speaker else "user", "content": text})
    return msgs


def check(cfg: RunConfig) -> None:
    """Refuse a set-up this stage cannot run, before the orchestrator trains anything."""
    if cfg.introspect.truncated not in ("drop", "trim"):
        raise ValueError(f"introspect.truncated: expected 'drop' or 'trim', got {cfg.introspect.truncated!r}")
    distilled_spec(cfg)


def run(cfg: RunConfig, force: bool = False) -> Path:
    from ..backends import make_backend
    from ..models import load_tokenizer

    check(cfg)
    c = layout.constitution(cfg)
    stage = Stage.after(run_dir(cfg.name), "introspect", stage_config(cfg), ["dpo"],
                        constitution=layout.constitution_id(c))
    if not stage.begin(force):
        return stage.dir
    ic = cfg.introspect
    t = template("introspection")
    spec = distilled_spec(cfg)
    name = spec.name
    fmt = lambda s: s.format(name=name).strip()  # noqa: E731
    core = const.character_prompt(c, name)
    backend = make_backend(spec)
    tok = load_tokenizer(str(layout.distilled_model(cfg)))  # the distilled model's, even when served
    stats: dict[str, GenStats] = {}

    # Self-reflection.
    refl = RowLog(layout.path(cfg, "reflections"))
    r_items = [{"id": f"r{p}-{n}", "prompt_index": p, "prompt": fmt(q)}
               for n in range(ic.reflection_samples) for p, q in enumerate(t["reflection_prompts"])]
    r_system = f"{core}\n{fmt(t['reflection_framing'])}"
    stats["reflection"] = generate_rows(
        refl, r_items, lambda it: ([{"role": "system", "content": r_system},
                                    {"role": "user", "content": it["prompt"]}], None),
        backend, ic.reflection_sampling, (cfg.seed, "reflection"), ic.chunk_size, "self-reflection")

    # Self-interaction: one batched generation per turn across all conversations.
    inter = RowLog(stage.dir / "interaction.jsonl")
    convs = conversations(cfg)
    systems = {kind: f"{core}\n{fmt(t['interaction_framing'])}\n{fmt(t['guidance'][kind])}"
               for kind in ("free", "leading")}
    stats["interaction"] = self_interaction(cfg, inter, convs, systems, backend, tok)
    backend.close()

    rows, dropped = assemble(cfg, refl, inter, convs, name)
    rng = random.Random(f"{cfg.seed}/sft-shuffle")
    rng.shuffle(rows)
    write_jsonl_atomic(layout.path(cfg, "sft_rows"), rows)
    counts = {"reflections": len(r_items), "conversations": len(convs), "turns": ic.turns,
              "sft_rows": len(rows), "sft_reflection": sum(r["source"] == "reflection" for r in rows),
              "sft_interaction": sum(r["source"] != "reflection" for r in rows),
              "dropped": {k: v for k, v in dropped.items() if not k.endswith("_kept")},
              "trimmed": {k: v for k, v in dropped.items() if k.endswith("_kept")}}
    stage.finish(counts, outputs=[layout.path(cfg, "sft_rows")], generation={k: v.as_dict() for k, v in stats.items()},
                 model=spec.model)
    return stage.dir


def usable_turn(row: dict | None, truncated: str) -> tuple[str | None, str]:
    """(text to keep, or None; what happened): 'ok', 'trimmed', 'truncated', 'empty', 'failed' or 'missing'
    (see ``messages.usable_answer``)."""
    if row is None:
        return None, "missing"
    if row.get("error"):
        return None, "failed"
    return usable_answer(row["response"] or "", row["finished"], truncated)


def usable_turns(cv: dict, inter: RowLog, upto: int, truncated: str) -> tuple[list[str], str]:
    """The conversation's usable turns among its first ``upto``, stopping at the first unusable one, and
    why it stopped ('ok' when all ``upto`` are usable)."""
    texts = []
    for k in range(upto):
        text, why = usable_turn(inter.rows.get(f"{cv['conv']}-t{k}"), truncated)
        if text is None:
            return texts, why
        texts.append(text)
    return texts, "ok"


def self_interaction(cfg: RunConfig, inter: RowLog, convs: list[dict], systems: dict[str, str], backend,
                     tok) -> GenStats:
    """Generate every conversation turn by turn, one batched generation per turn across conversations. A
    conversation whose last turn is unusable (cut off under 'drop', empty, failed) is not continued; later
    turns see earlier ones as SFT will (trimmed under 'trim')."""
    ic = cfg.introspect
    budget = ic.max_context - ic.interaction_sampling.max_tokens
    by_conv = {cv["conv"]: cv for cv in convs}
    gs = GenStats()
    for k in range(ic.turns):
        history = {cv["conv"]: usable_turns(cv, inter, k, ic.truncated) for cv in convs}
        items = [{"id": f"{cv['conv']}-t{k}", "conv": cv["conv"], "turn": k} for cv in convs
                 if history[cv["conv"]][1] == "ok"]

        def build(it, k=k):
            cv = by_conv[it["conv"]]
            return fit_context(view(cv, history[cv["conv"]][0], k % 2, systems[cv["kind"]]), tok, budget), None

        s = generate_rows(inter, items, build, backend, ic.interaction_sampling, (cfg.seed, "interaction", k),
                          ic.chunk_size, f"self-interaction turn {k + 1}/{ic.turns}")
        gs.rows, gs.tokens, gs.seconds = gs.rows + s.rows, gs.tokens + s.tokens, gs.seconds + s.seconds
    return gs


def assemble(cfg: RunConfig, refl: RowLog, inter: RowLog, convs: list[dict], name: str):
    """SFT rows: reflections without their system prompt; conversations from the last speaker's view with a
    short, formatted system message (the reference left a literal '{NAME}' in it). Cut-off, empty and failed
    answers are handled as the module docstring says; returns (rows, counts of what was dropped/trimmed)."""
    t = template("introspection")
    mode = cfg.introspect.truncated
    notes: Counter = Counter()
    rows = []
    for r in refl.rows.values():
        text, why = usable_turn(r, mode)
        if text is None:
            notes[f"reflection_{'empty' if why in ('empty', 'failed') else why}"] += 1
            continue
        if why == "trimmed":
            notes["reflection_trimmed_kept"] += 1
        rows.append({"id": r["id"], "source": "reflection",
                     "messages": [{"role": "user", "content": r["prompt"]},
                                  {"role": "assistant", "content": text}]})
    sft_system = t["interaction_system_for_sft"].format(name=name).strip()
    K = cfg.introspect.turns
    for cv in convs:
        texts, why = usable_turns(cv, inter, K, mode)
        notes["interaction_turns_trimmed_kept"] += sum(
            usable_turn(inter.rows.get(f"{cv['conv']}-t{k}"), mode)[1] == "trimmed" for k in range(len(texts)))
        if why != "ok":
            notes[f"interaction_turn_{why}"] += 1  # the turn that ended this conversation
        if not texts:
            notes["conversation_without_a_usable_turn"] += 1
            continue
        if len(texts) < K:
            notes["conversation_ended_early"] += 1
        msgs = view(cv, texts, (len(texts) - 1) % 2, sft_system)
        rows.append({"id": cv["conv"], "source": f"interaction-{cv['kind']}", "messages": msgs,
                     "turns": len(texts)})
    return rows, notes


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    return (f"introspect: {n['sft_rows']} SFT transcripts ({n['sft_reflection']} reflections, "
            f"{n['sft_interaction']} conversations of up to {n['turns']} turns), dropped {n['dropped']}, "
            f"trimmed {n.get('trimmed', {})}, {manifest['seconds']:.0f}s")

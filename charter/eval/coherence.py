"""Coherence: a pairwise judge compares the trained model's replies with each other condition's.

    charter eval coherence configs/demo.yaml [coherence.against='[base, prompted]' ...]

Every condition answers the same seeded general prompts (held out from distillation when the pool allows).
For each prompt the judge sees the trained reply and the other condition's reply twice, once in each order,
and is asked about coherence only: fluent, on topic, internally consistent, sensible. Persona and style are
explicitly out of scope (the reference folded trait alignment into the same rubric and ranked it first). A
pair counts only when both orders name the same reply; pairs whose orders disagree (position bias or a coin
toss) and pairs with an unparseable verdict are discarded and reported as shares, never guessed.

Writes ``<run>/eval-coherence/``: ``replies-<label>.jsonl`` and ``judge-<label>.jsonl`` (resumable raw logs),
``judgements.jsonl`` (one row per pair: both verdicts and the outcome), ``results.json`` (win rate of
'trained' with a Wilson CI per condition) and the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from pathlib import Path
from statistics import NormalDist

from ..config import RunConfig
from ..generation import generate_rows
from ..runs import RowLog, Stage, config_hash, derive_seed, run_dir, write_json_atomic, write_jsonl_atomic
from .conditions import (CONDITIONS, Conditions, condition_spec, identity, model_key, run_model_dir,
                         with_system)
from .judge import _strip_reasoning

STAGE = "eval-coherence"
LEVEL = 0.95
CHUNK = 64

JUDGE_SYSTEM = """\
You compare two replies that an AI assistant wrote to the same message, and you judge one thing only: \
which reply is more coherent.

A coherent reply
- is fluent: readable, grammatical sentences, with no garbled words or broken formatting;
- stays on topic: it responds to what the message actually asks or says;
- is internally consistent: it does not contradict itself or lose the thread of what it was saying;
- makes sense: no nonsense, no invented facts presented as gibberish, no loops repeating the same phrase.

Judge nothing else. Personality, tone, warmth, humour, opinions and style are neither good nor bad here, \
and neither is length, unless it makes a reply harder to follow. A plain reply and a colourful one are \
equally coherent when both are clear and relevant. Whether a reply comes first or second says nothing \
about it.

You may reason briefly first. Then end with the number of the more coherent reply inside answer tags: \
<answer>1</answer> or <answer>2</answer>."""

JUDGE_USER = """\
Message:
\"\"\"
{prompt}
\"\"\"

Response 1:
\"\"\"
{first}
\"\"\"

Response 2:
\"\"\"
{second}
\"\"\"

Which response is more coherent, 1 or 2?"""

EMPTY = "(empty reply)"


def judge_chat(prompt: str, first: str, second: str) -> list[dict]:
    """The judge's conversation: the user message and two replies, in the order the judge sees them."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(prompt=prompt.strip(), first=first.strip() or EMPTY,
                                                          second=second.strip() or EMPTY)}]


# --- parsing a verdict ------------------------------------------------------------------------------------

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_OPEN = re.compile(r"<answer>([^<]*)$", re.S | re.I)  # cut off by max_tokens before the close tag
_COMPARED = re.compile(r"\b(?:than|over|versus|vs|compared to|rather than|instead of|unlike|not)\s+"
                       r"(?:the\s+)?(?:(?:response|reply|option|number)\s*#?\s*[12]|[12]|first|second)"
                       r"(?:\s+(?:response|reply|one))?\b")
_NUMBER = re.compile(r"(?<![\w.])(?:(?:response|reply|option|choice|number)\s*#?\s*)?([12])(?![\w.])")
_ORDINAL = {"first": 1, "second": 2}
_REF = r"(?:(?:response|reply|option|choice)\s*#?\s*[12]|[12]|(?:the\s+)?(?:first|second)(?:\s+(?:response|reply|one))?)"
_MARKER = re.compile(  # only at the start of the last line, where a verdict is announced
    r"^(?:so |thus |therefore |hence |overall )?(?:the |my )?(?:final )?(?:answer|verdict|choice|decision|winner|"
    r"more coherent (?:response|reply|one)|better (?:response|reply|one))(?: is| would be)? (.+)$"
    r"|^(?:so |overall )?i(?: would|'d|'ll)? (?:choose|pick|select|prefer|go with) (.+)$")
_PRAISE = re.compile(rf"(?:^|[^\w])(?:i (?:would )?(?:choose|pick|prefer|go with) )?({_REF})"
                     r"(?: is| was)(?: clearly| much| far| slightly| definitely)? (?:the )?"
                     r"(?:more|better|clearer|most)\b")
_CHOOSE = re.compile(rf"\bi(?: would|'d|'ll)? (?:choose|pick|prefer|select|go with) ({_REF})")


def _normalise(text: str) -> str:
    text = re.sub(r"[*_`#>\[\]{}()\"“”«»]", " ", text.lower().replace("’", "'"))
    text = re.sub(r"[.,;:!?]+(\s|$)", r" ", text)
    return re.sub(r"\s+", " ", text).strip()


def _resolve(span: str) -> int | None:
    """The reply a short span names: exactly one of 1/2 (or first/second) once comparisons are removed."""
    s = _COMPARED.sub(" ", _normalise(span))
    found = {int(m.group(1)) for m in _NUMBER.finditer(s)}
    found |= {n for w, n in _ORDINAL.items() if re.search(rf"\b{w}\b", s)}
    return found.pop() if len(found) == 1 else None


def parse_choice(text: str | None) -> int | None:
    """1 or 2: the reply a judge names as more coherent, or None when it names neither or both.

    Evidence, strongest first: the last ``<answer>`` tag outside reasoning (or an unclosed one at the end);
    the last line, bare ("2", "**Response 1**") or after a marker ("Answer: 2", "I choose Response 1");
    then the whole text, when every explicit preference ("Response 2 is more coherent", "I'd pick the
    first") names the same reply.
    """
    if not text or not text.strip():
        return None
    body = _strip_reasoning(text)
    tags = _ANSWER.findall(body)
    if tags:
        return _resolve(tags[-1])
    tail = _ANSWER_OPEN.search(body)
    if tail:
        return _resolve(tail.group(1))
    lines = [ln for ln in (_normalise(x) for x in body.splitlines()) if ln]
    if not lines:
        return None
    last = lines[-1]
    if re.fullmatch(_REF, last):
        return _resolve(last)
    marker = _MARKER.match(last)
    if marker:
        return _resolve(marker.group(1) or marker.group(2))
    flat = " ".join(lines)
    picks = {_resolve(m.group(1)) for m in (*_PRAISE.finditer(flat), *_CHOOSE.finditer(flat))}
    picks.discard(None)
    return picks.pop() if len(picks) == 1 else None


# --- counting ---------------------------------------------------------------------------------------------

def pair_outcome(trained_first: int | None, trained_second: int | None) -> str:
    """'trained' | 'other' | 'inconsistent' | 'unparseable' from the two verdicts of one pair: the reply
    number the judge chose when 'trained' was Response 1, and when it was Response 2."""
    if trained_first is None or trained_second is None:
        return "unparseable"
    a = "trained" if trained_first == 1 else "other"
    b = "trained" if trained_second == 2 else "other"
    return a if a == b else "inconsistent"


def wilson(k: int, n: int, level: float = LEVEL) -> list[float] | None:
    """Wilson score interval for k successes in n (None when n is 0): sound near 0 and 1 and for small n."""
    if n == 0:
        return None
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def tally(outcomes: list[str], level: float = LEVEL) -> dict:
    """The results.json entry for one condition from its pairs' outcomes."""
    wins, losses = outcomes.count("trained"), outcomes.count("other")
    n = wins + losses
    return {"win_rate": wins / n if n else None, "ci": wilson(wins, n, level), "n_pairs": len(outcomes),
            "n_counted": n, "n_inconsistent": outcomes.count("inconsistent"),
            "n_unparseable": outcomes.count("unparseable")}


# --- the stage --------------------------------------------------------------------------------------------

def _sampling(cfg: RunConfig):
    # Replies are sampled as in the robustness evaluation unless coherence gets its own settings.
    return getattr(cfg.coherence, "sampling", None) or cfg.robustness.sampling


def stage_config(cfg: RunConfig) -> dict:
    # `against` is left out: adding or dropping a condition reuses every other condition's logs.
    c = {k: v for k, v in dataclasses.asdict(cfg.coherence).items() if k != "against"}
    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student), "coherence": c,
            "sampling": dataclasses.asdict(_sampling(cfg))}


def _training_prompts(cfg: RunConfig) -> set[str]:
    """The prompts distillation trains on (recomputed: its selection is deterministic); empty if unknown."""
    try:
        from ..stages.distill import select_prompts
        from ..stages.expand import expanded_constitution

        return {p["prompt"] for p in select_prompts(cfg, expanded_constitution(cfg))}
    except Exception:  # an unavailable general_source must not stop the evaluation
        return set()


def make_items(cfg: RunConfig) -> tuple[list[dict], int]:
    """Seeded prompts from the general pool, avoiding distillation's own when enough others remain;
    returns the items and how many of them distillation also trained on."""
    from ..prompts import load_prompt_source

    pool = list(dict.fromkeys(load_prompt_source("builtin", builtin="general")))
    seen = _training_prompts(cfg)
    held = [p for p in pool if p not in seen]
    source = held if len(held) >= cfg.coherence.prompts else pool
    rng = random.Random(derive_seed(cfg.seed, "coherence", "prompts"))
    picked = rng.sample(source, min(cfg.coherence.prompts, len(source)))
    return [{"id": f"q{j}", "prompt": p} for j, p in enumerate(picked)], sum(p in seen for p in picked)


def _fresh(d: Path, name: str, ident: str, logs: list[str], report) -> None:
    """Drop logs made for an older model/judge (e.g. the run was retrained), then record the new identity."""
    path = d / f"identity-{name}.json"
    if path.exists() and json.loads(path.read_text()).get("identity") != ident:
        report(f"coherence: '{name}' changed since its logs were written; redoing them")
        for log in logs:
            (d / log).unlink(missing_ok=True)
    write_json_atomic(path, {"identity": ident})


def _judge_row(it: dict, other: str, rt: dict, ro: dict, judged: RowLog) -> dict:
    j1, j2 = judged.rows.get(f"{it['id']}/1"), judged.rows.get(f"{it['id']}/2")
    v1 = parse_choice(j1["response"]) if j1 and not j1.get("error") else None
    v2 = parse_choice(j2["response"]) if j2 and not j2.get("error") else None
    return {"id": it["id"], "against": other, "prompt": it["prompt"], "trained": rt["response"],
            "other": ro["response"], "verdict_trained_first": v1, "verdict_trained_second": v2,
            "outcome": pair_outcome(v1, v2), "judge_trained_first": (j1 or {}).get("response"),
            "judge_trained_second": (j2 or {}).get("response")}


def run(cfg: RunConfig, force: bool = False, report=print) -> Path:
    """Judge 'trained' against every condition in ``cfg.coherence.against``; returns the output folder."""
    against = list(dict.fromkeys(cfg.coherence.against))
    for c in against:
        if c not in CONDITIONS or c == "trained":
            raise ValueError(f"coherence.against: '{c}': expected some of {', '.join(CONDITIONS[:-1])}")
    run_model_dir(cfg, "trained")  # raises with the command to run when there is no trained model
    skipped = {}
    for c in against:
        try:
            condition_spec(cfg, c)
        except RuntimeError as e:
            skipped[c] = str(e)
            report(f"coherence: skipping '{c}': {e}")
    ready = [c for c in against if c not in skipped]
    judge_spec = cfg.coherence.judge or cfg.student
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg))
    idents = {c: identity(cfg, c) for c in ["trained", *ready]}
    if stage.done() and not force:
        if stage.manifest().get("identities") == idents:
            report(f"{STAGE}: already done (--force to redo): {stage.dir}")
            return stage.dir
        stage.manifest_path.unlink()  # conditions or models changed: resume, reusing the unchanged logs
    stage.begin(force)
    items, overlap = make_items(cfg)
    if overlap:
        report(f"coherence: {overlap}/{len(items)} prompts were also distillation prompts (pool too small)")
    sampling, gen, d = _sampling(cfg), {}, stage.dir
    with Conditions(cfg, report) as conds:
        same_as_judge = lambda c: model_key(condition_spec(cfg, c)) == model_key(judge_spec)  # noqa: E731
        for label in sorted(["trained", *ready], key=same_as_judge):  # the judge's model last: it stays loaded
            backend, system = conds.open(label)
            idents[label] = identity(cfg, label)  # a steering vector fitted just now changes it
            _fresh(d, label, idents[label], [f"replies-{label}.jsonl"], report)
            replies = RowLog(d / f"replies-{label}.jsonl")
            gen[label] = generate_rows(
                replies, items, lambda it: (with_system([{"role": "user", "content": it["prompt"]}], system), None),
                backend, sampling, (cfg.seed, "coherence", label), CHUNK, f"replies {label}").as_dict()
            conds.release(label, keep=judge_spec)
        trained = RowLog(d / "replies-trained.jsonl")
        judge, rows, results, lines = None, [], {}, []
        for c in ready:
            other = RowLog(d / f"replies-{c}.jsonl")
            ident = config_hash([idents["trained"], idents[c], dataclasses.asdict(judge_spec)])
            _fresh(d, f"judge-{c}", ident, [f"judge-{c}.jsonl"], report)
            judged = RowLog(d / f"judge-{c}.jsonl")
            pairs = [it for it in items if (rt := trained.rows.get(it["id"])) and not rt.get("error")
                     and (ro := other.rows.get(it["id"])) and not ro.get("error")]
            todo = [{"id": f"{it['id']}/{k}", "prompt": it["prompt"], "qid": it["id"], "trained_is": k}
                    for it in pairs for k in (1, 2)]
            if any(t["id"] not in judged for t in todo):
                judge = judge or conds.backend(judge_spec)

                def build(t, other=other):
                    a, b = trained.rows[t["qid"]]["response"], other.rows[t["qid"]]["response"]
                    return judge_chat(t["prompt"], *((a, b) if t["trained_is"] == 1 else (b, a))), None

                gen[f"judge-{c}"] = generate_rows(judged, todo, build, judge, cfg.coherence.judge_sampling,
                                                  (cfg.seed, "coherence", "judge", c), CHUNK,
                                                  f"judge vs {c}").as_dict()
            here = [_judge_row(it, c, trained.rows[it["id"]], other.rows[it["id"]], judged) for it in pairs]
            rows += here
            results[c] = r = tally([x["outcome"] for x in here])
            rate = "n/a" if r["win_rate"] is None else \
                f"{r['win_rate']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
            lines.append(f"coherence trained vs {c}: win rate {rate} over {r['n_counted']}/{r['n_pairs']} pairs; "
                         f"{r['n_inconsistent']} inconsistent, {r['n_unparseable']} unparseable")
    verdicts = [v for x in rows for v in (x["verdict_trained_first"], x["verdict_trained_second"]) if v]
    write_jsonl_atomic(d / "judgements.jsonl", rows)
    write_json_atomic(d / "results.json", {"against": results, "judge": judge_spec.model, "prompts": len(items),
                                           "level": LEVEL, "skipped": skipped})
    for line in lines:
        report(line)
    stage.finish({"prompts": len(items), "pairs": len(rows), "prompts_seen_in_distillation": overlap,
                  "judge_picked_response_1": sum(v == 1 for v in verdicts), "verdicts": len(verdicts)},
                 identities=idents, skipped=skipped, generation=gen, judge=dataclasses.asdict(judge_spec),
                 files=["judgements.jsonl", "results.json"], report=lines)
    report(f"{STAGE}: trained vs {', '.join(ready) or 'nothing'} in {time.time() - stage.started:.0f}s -> {d}")
    return d

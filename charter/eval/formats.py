"""Formats: the persona when the reply must be JSON, a tool call, a code review or a bulleted summary.

    charter eval formats configs/demo.yaml [key=value ...]
    charter eval formats CONFIG formats.conditions='[base, prompted, trained]' formats.formats='[json, tool_call]'

A persona that breaks a JSON reply is a defect a user sees at once, and one that vanishes whenever a format is
asked for is not much of a persona. Each condition (``formats.conditions``, default base as the floor,
prompted and trained) answers the prompts of ``prompts/formats.yaml`` (``formats.samples`` replies each; the
persona's system prompt, for 'prompted', comes before the user's format instructions) and every reply gets:

- **valid**: whether it is in the asked format, decided by parsing, never by a judge (``RULES``):
  ``json``: ``json.loads`` of the first JSON object in the reply (the first ``{`` from which an object decodes;
  code fences and text around it are allowed) has every key of the prompt's schema; ``tool_call``: the first
  JSON object is ``{"tool": <one of the offered tools>, "arguments": {...}}`` with every argument that tool
  lists; ``code_review``: the review points at the code concretely: a line reference ("line 4", "lines 2-3",
  "L7", "ln 5") or a diff (a ```diff block, an ``@@`` hunk header, or both a "-" and a "+" line); ``bullets``:
  between the prompt's ``min`` and ``max`` lines starting with "- ", "* " or "• ". An empty reply is invalid; a
  reply the backend failed to produce is not counted.
- **in persona**: a detector (``formats.encoder``) learned the persona from reference texts that are no scored
  reply (``formats.reference``: the base model with vs without the persona's system prompt on plain
  preference prompts, or the hand-written exemplars) and reads the reply's *text* (``prose``): a JSON reply's
  string values, a tool call's argument strings and any words around the object, a code review without its
  fenced code, a summary as written (the whole reply when it does not parse). In persona when the detector's
  probability is at least 0.5; a reply with no text to read (a JSON object of numbers) is not counted. The
  detector is checked on single replies of prompted vs base to a held-out quarter of the reference prompts.

Both shares per condition and format (and over all formats) with percentile bootstrap 95% CIs over prompts,
and each condition minus the baseline ('prompted' when listed, else the first condition) from the same
resampled prompts. Writes ``<run>/eval-formats/``: ``replies.jsonl`` and ``reference.jsonl`` (resumable
logs), ``predictions.jsonl`` (each reply's verdicts), ``results.json`` and the manifest. A prompt whose text
changed is answered again; a retrained model has only its own replies redone; other formats, conditions or
detector settings re-score from the logs. What it does not show: the detector learned the voice from plain
chat replies, so a persona expressed only through word choice inside a JSON value may be under-read, and
"valid" is syntax (the right keys, a parsable call), not whether the content is right.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..classifier import proba_of
from ..generation import generate_rows
from ..prompts import HERE as PROMPTS_DIR
from ..prompts import load_prompt_source
from ..runs import (RowLog, Stage, config_hash, derive_seed, reusable, run_dir, silent, write_json_atomic,
                    write_jsonl_atomic)
from . import conditions, inpersona
from .drift import (REFERENCE_CONDITIONS, THRESHOLD, _pct, _signed, check_config, detector_check, fit_detector,
                    generate_reference, paired_difference, reference_items, reference_split, split_pool)
from .heldout import untrained_pool
from .robustness import persona_label

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = "eval-formats"
FORMATS = ("json", "tool_call", "code_review", "bullets")
FORMATS_FILE = PROMPTS_DIR / "formats.yaml"
LEVEL = inpersona.LEVEL
RULES = {
    "json": "json.loads of the first JSON object in the reply (the first '{' an object decodes from) has every key "
            "of the prompt's schema",
    "tool_call": "the first JSON object is {\"tool\": <an offered tool>, \"arguments\": {...}} with every argument "
                 "that tool lists",
    "code_review": "the review points at the code: a line reference ('line 4', 'lines 2-3', 'L7', 'ln 5') or a "
                   "diff (a ```diff block, an @@ hunk header, or both a '-' and a '+' line)",
    "bullets": "between the prompt's min and max lines starting with '- ', '* ' or '• '",
}
PROSE = {
    "json": "the object's string values (the whole reply when no object parses)",
    "tool_call": "the argument strings and the words around the object (the whole reply when no object parses)",
    "code_review": "the reply without its fenced code blocks",
    "bullets": "the whole reply",
}


# --- validators (parsing only) --------------------------------------------------------------------------------

def first_json_object(text: str) -> tuple[dict | None, tuple[int, int] | None]:
    """(the first JSON object in ``text``, its span): tried from each '{' in turn; (None, None) when none
    decodes. Text, code fences or a second object around it do not matter."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj, (i, end)
        i = text.find("{", i + 1)
    return None, None


def check_json(text: str, required: list[str]) -> dict:
    obj, _ = first_json_object(text)
    if obj is None:
        return {"valid": False, "why": "no JSON object"}
    missing = [k for k in required if k not in obj]
    if missing:
        return {"valid": False, "why": f"missing keys: {', '.join(missing)}"}
    return {"valid": True, "why": "ok"}


def check_tool_call(text: str, tools: dict[str, list[str]]) -> dict:
    """``tools``: tool name -> the arguments it lists (all required)."""
    obj, _ = first_json_object(text)
    if obj is None:
        return {"valid": False, "why": "no JSON object", "tool": None}
    name, args = obj.get("tool"), obj.get("arguments")
    if not isinstance(name, str) or name not in tools:
        return {"valid": False, "why": "'tool' is not an offered tool", "tool": None}
    if not isinstance(args, dict):
        return {"valid": False, "why": "'arguments' is not an object", "tool": name}
    missing = [a for a in tools[name] if a not in args]
    if missing:
        return {"valid": False, "why": f"missing arguments: {', '.join(missing)}", "tool": name}
    return {"valid": True, "why": "ok", "tool": name}


LINE_REF = re.compile(r"\b(?:lines?|ln)\s*#?\s*\d+|\bL\d+\b", re.IGNORECASE)
DIFF_FENCE = re.compile(r"```\s*diff\b", re.IGNORECASE)
HUNK = re.compile(r"^@@ ", re.MULTILINE)
REMOVED = re.compile(r"^[ \t]*-(?!-)[ \t]*\S", re.MULTILINE)
ADDED = re.compile(r"^[ \t]*\+(?!\+)[ \t]*\S", re.MULTILINE)


def check_code_review(text: str) -> dict:
    if not text.strip():
        return {"valid": False, "why": "empty"}
    if LINE_REF.search(text):
        return {"valid": True, "why": "line reference"}
    if DIFF_FENCE.search(text) or HUNK.search(text) or (REMOVED.search(text) and ADDED.search(text)):
        return {"valid": True, "why": "diff"}
    return {"valid": False, "why": "no line reference or diff"}


BULLET = re.compile(r"^[ \t]*[-*•][ \t]+\S", re.MULTILINE)


def count_bullets(text: str) -> int:
    return len(BULLET.findall(text))


def check_bullets(text: str, lo: int, hi: int) -> dict:
    n = count_bullets(text)
    return {"valid": lo <= n <= hi, "why": "ok" if lo <= n <= hi else f"{n} bullets, asked for {lo} to {hi}",
            "bullets": n}


def check(fmt: str, text: str, spec: dict) -> dict:
    """The verdict on one reply: ``valid`` and ``why`` (plus a format's details)."""
    if fmt == "json":
        return check_json(text, spec["required"])
    if fmt == "tool_call":
        return check_tool_call(text, spec["tools"])
    if fmt == "code_review":
        return check_code_review(text)
    if fmt == "bullets":
        return check_bullets(text, spec["min"], spec["max"])
    raise ValueError(f"format '{fmt}': expected one of {', '.join(FORMATS)}")


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


def prose(fmt: str, text: str) -> str:
    """The text of a reply the detector reads (``PROSE``); '' when there is none."""
    if fmt in ("json", "tool_call"):
        obj, span = first_json_object(text)
        if obj is None:
            return text.strip()
        values = _strings(obj.get("arguments", {}) if fmt == "tool_call" else obj)
        around = [text[:span[0]], text[span[1]:]] if fmt == "tool_call" else []
        around = [FENCE.sub(" ", a).replace("```json", " ").replace("```", " ").strip() for a in around]
        return "\n".join(x.strip() for x in [*around, *values] if x and x.strip())
    if fmt == "code_review":
        return re.sub(r"\n{3,}", "\n\n", FENCE.sub("\n", text)).strip() or text.strip()
    return text.strip()


# --- the prompts ----------------------------------------------------------------------------------------------

class FormatsDataError(ValueError):
    """A malformed formats file; the message names the file, the format, the prompt and the field."""


def _text(where: str, value, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FormatsDataError(f"{where}: '{field}' must be a non-empty string")
    return value.strip()


def _fill(template: str, values: dict[str, str]) -> str:
    """The template with ``{name}`` replaced by name; any other brace is literal text (the JSON examples)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def _numbered(code: str) -> str:
    lines = code.rstrip("\n").split("\n")
    width = len(str(len(lines)))
    return "```\n" + "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1)) + "\n```"


def _tool_lines(tools: list[dict]) -> str:
    return "\n".join(f"- {t['name']}: {t['description']}. Arguments: "
                     + "; ".join(f"{a} ({what})" for a, what in t["arguments"].items()) for t in tools)


def _build(fmt: str, template: str, p: dict, where: str) -> tuple[str, dict]:
    """(the user message, what the validator needs) for one prompt, checked."""
    if fmt == "json":
        schema = p.get("schema")
        if not isinstance(schema, dict) or not schema or not all(isinstance(v, str) for v in schema.values()):
            raise FormatsDataError(f"{where}: 'schema' must map each key to a description")
        lines = "\n".join(f'- "{k}": {v}' for k, v in schema.items())
        return _fill(template, {"task": _text(where, p.get("task"), "task"), "schema": lines}), \
            {"required": [str(k) for k in schema]}
    if fmt == "tool_call":
        tools = p.get("tools")
        if not isinstance(tools, list) or not tools:
            raise FormatsDataError(f"{where}: 'tools' must be a non-empty list")
        for i, t in enumerate(tools):
            ok = isinstance(t, dict) and isinstance(t.get("name"), str) and re.fullmatch(r"[A-Za-z_][\w]*", t["name"]) \
                and isinstance(t.get("description"), str) and isinstance(t.get("arguments"), dict) and t["arguments"]
            if not ok:
                raise FormatsDataError(f"{where}: tools[{i}]: expected a name (an identifier), a description and a "
                                       "non-empty 'arguments' mapping")
        names = [t["name"] for t in tools]
        if len(set(names)) != len(names):
            raise FormatsDataError(f"{where}: a tool is listed twice")
        expects = p.get("expects")
        if expects not in names:
            raise FormatsDataError(f"{where}: 'expects' must name one of the offered tools ({', '.join(names)})")
        msg = _fill(template, {"request": _text(where, p.get("request"), "request"), "tools": _tool_lines(tools)})
        return msg, {"tools": {t["name"]: [str(a) for a in t["arguments"]] for t in tools}, "expects": expects}
    if fmt == "code_review":
        code = p.get("code")
        return _fill(template, {"language": _text(where, p.get("language"), "language"),
                                "code": _numbered(_text(where, code, "code"))}), {}
    lo, hi = p.get("min"), p.get("max")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)) or not 1 <= lo <= hi:
        raise FormatsDataError(f"{where}: 'min' and 'max' must be whole numbers with 1 <= min <= max")
    return _fill(template, {"text": _text(where, p.get("text"), "text"), "min": str(lo), "max": str(hi)}), \
        {"min": lo, "max": hi}


def prompts_file(which: str) -> Path:
    if which == "builtin":
        return FORMATS_FILE
    p = Path(which).expanduser()
    if not p.is_file():
        raise FormatsDataError(f"formats.prompts: '{which}': expected 'builtin' or a YAML file")
    return p


def load_formats(path: Path = FORMATS_FILE) -> dict[str, list[dict]]:
    """format -> its prompts, each ``{"pid", "user" (the message), "spec" (what its validator needs)}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise FormatsDataError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise FormatsDataError(f"{path}: expected a mapping of format -> template and prompts")
    unknown = sorted(set(data) - set(FORMATS))
    if unknown:
        raise FormatsDataError(f"{path}: unknown format '{unknown[0]}' (expected {', '.join(FORMATS)})")
    out = {}
    for fmt, section in data.items():
        if not isinstance(section, dict) or not isinstance(section.get("template"), str) \
                or not isinstance(section.get("prompts"), list) or not section["prompts"]:
            raise FormatsDataError(f"{path}: {fmt}: expected a 'template' string and a non-empty 'prompts' list")
        items, seen = [], set()
        for n, p in enumerate(section["prompts"]):
            pid = p.get("id") if isinstance(p, dict) else None
            where = f"{path}: {fmt}.prompts[{n}]"
            if not isinstance(pid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", pid) or pid in seen:
                raise FormatsDataError(f"{where}: 'id' must be a distinct name of letters, digits, '.', '_', '-'")
            seen.add(pid)
            user, spec = _build(fmt, section["template"], p, f"{where} ({pid})")
            items.append({"pid": pid, "user": user, "spec": spec})
        out[fmt] = items
    return out


# --- the evaluation --------------------------------------------------------------------------------------------

def _check(cfg: RunConfig) -> tuple[list[str], list[str]]:
    f = cfg.formats
    conds = conditions.check_labels(f.conditions, "formats.conditions")
    fmts = conditions.check_labels(f.formats, "formats.formats", FORMATS)
    for name, value, lo in (("samples", f.samples, 1), ("reference_prompts", f.reference_prompts, 2),
                            ("bootstrap", f.bootstrap, 1), ("chunk_size", f.chunk_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"formats.{name}: expected a whole number >= {lo}, got {value!r}")
    if f.per_format is not None and (isinstance(f.per_format, bool) or f.per_format < 1):
        raise ValueError(f"formats.per_format: expected a whole number >= 1 or null, got {f.per_format!r}")
    inpersona.check_reference(f.reference)
    from ..classifier import make_classifier

    make_classifier(f.encoder, f.classifier)  # a bad encoder or setting fails before any generation
    if f.reference == "pairs" and not inpersona.pairs_path(cfg.name).exists():
        raise RuntimeError(f"formats.reference=pairs: {inpersona.pairs_path(cfg.name)} does not exist (run "
                           "`charter distill` first, or use formats.reference=prompted)")
    return conds, fmts


def stage_config(cfg: RunConfig) -> dict:
    """What the replies depend on besides the prompts' texts (each row keeps its text and is redone when it
    changes, whichever file it came from) and the models (identities): the seed, the persona, the sampling, the
    samples per prompt and the reference prompts."""
    keep = ("samples", "prompt_source", "reference_prompts", "sampling")
    return {"seed": cfg.seed, "persona": cfg.persona,
            "formats": {k: v for k, v in dataclasses.asdict(cfg.formats).items() if k in keep}}


def items_for(cond: str, prompts: dict[str, list[dict]], samples: int) -> list[dict]:
    return [{"id": f"{cond}/{fmt}/{p['pid']}/s{j}", "condition": cond, "format": fmt, "pid": p["pid"], "sample": j,
             "user": p["user"]} for fmt, ps in prompts.items() for p in ps for j in range(samples)]


def _identity(cfg: RunConfig, label: str) -> str | None:
    try:
        return conditions.identity(cfg, label)
    except RuntimeError:
        return None


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Generate every condition's replies to the format prompts, check and score them; returns the folder."""
    f = cfg.formats
    conds, fmts = _check(cfg)
    every = load_formats(prompts_file(f.prompts))  # the whole file is checked, whatever is selected
    missing = [x for x in fmts if x not in every]
    if missing:
        raise FormatsDataError(f"{prompts_file(f.prompts)}: no prompts for format(s) {', '.join(missing)}")
    prompts = {x: every[x][:f.per_format] if f.per_format else every[x] for x in fmts}
    label = persona_label(cfg.persona)
    if label in conditions.CONDITIONS:
        raise ValueError(f"formats: the persona cannot be called '{label}' (a condition's name)")
    pool, removed = untrained_pool(cfg, load_prompt_source(f.prompt_source, builtin="preference_prompts"))
    user_texts = {p["user"] for ps in every.values() for p in ps}
    reference, _ = split_pool([p for p in pool if p not in user_texts], f.reference_prompts,
                              derive_seed(cfg.seed, "formats", "split"))
    fit_prompts, check_prompts = reference_split(reference)
    inputs = {"trained_prompts_removed": config_hash(sorted(removed))} if removed else {}
    stage = Stage(run_dir(cfg.name), STAGE, stage_config(cfg), inputs)
    gen = list(dict.fromkeys([*REFERENCE_CONDITIONS, *conds]))
    scoring = {"conditions": conds, "formats": fmts, "per_format": f.per_format, "encoder": f.encoder,
               "classifier": f.classifier, "reference": f.reference, "bootstrap": f.bootstrap,
               "prompts": config_hash(prompts)}
    if f.reference == "exemplars":
        scoring["exemplars"] = inpersona.exemplars_identity(cfg.persona, f.exemplars)
    if f.reference == "pairs":
        scoring["pairs"] = inpersona.pairs_identity(cfg.name)
    check_config(stage, force)
    done = reusable(stage, force, lambda m: m.get("scoring") == scoring
                    and m.get("identities") == {c: _identity(cfg, c) for c in gen}, report)
    if done is not None:
        for line in done.get("report", []):
            report(line)
        return stage.dir
    stage.begin(force)
    log, ref = RowLog(stage.dir / "replies.jsonl"), RowLog(stage.dir / "reference.jsonl")
    # A prompt whose text changed (the file was edited) is another prompt: its replies are redone.
    current = {it["id"]: it["user"] for c in gen for it in items_for(c, every, f.samples)}
    stale = {r["id"] for r in log.rows.values() if r["id"] in current and r["user"] != current[r["id"]]}
    if stale:
        report(f"formats: {len(stale)} replies answer a prompt whose text changed; answering again")
        write_jsonl_atomic(log.path, [r for r in log.rows.values() if r["id"] not in stale])
        log = RowLog(log.path)
    ids_path = stage.dir / "identities.json"
    known = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    stats, skipped = {}, {}
    with conditions.Conditions(cfg, report=report) as cs:
        for cond in gen:
            t0 = time.time()
            ident = _identity(cfg, cond)
            owed = [it["id"] for it in items_for(cond, prompts, f.samples)] if cond in conds else []
            owed_ref = [it["id"] for split, ps in (("check", check_prompts), ("train", fit_prompts))
                        if cond in REFERENCE_CONDITIONS and (split == "check" or f.reference == "prompted")
                        for it in reference_items(cond, ps, split)]
            if ident is not None and known.get(cond) == ident and all(i in log for i in owed) \
                    and all(i in ref for i in owed_ref):
                continue  # nothing to generate: its model is not even loaded
            try:
                backend, system = cs.open(cond)
            except RuntimeError as e:
                skipped[cond] = str(e)
                report(f"formats: skipping '{cond}': {e}")
                continue
            ident = _identity(cfg, cond)
            if known.get(cond) not in (None, ident):
                report(f"formats: '{cond}' is a different model now; redoing its replies")
                for lg in (log, ref):
                    write_jsonl_atomic(lg.path, [r for r in lg.rows.values() if r["condition"] != cond])
                log, ref = RowLog(log.path), RowLog(ref.path)
            known[cond] = ident
            write_json_atomic(ids_path, known)
            if cond in REFERENCE_CONDITIONS:
                stats.update(generate_reference(cfg, "formats", ref, cond, backend, system, fit_prompts,
                                                check_prompts, f.reference, f.sampling, f.chunk_size))
            if cond in conds:
                items = items_for(cond, prompts, f.samples)
                if any(it["id"] not in log for it in items):
                    def build(it, cond=cond, system=system):
                        return conditions.chat(cfg, cond, system, [{"role": "user", "content": it["user"]}]), None

                    stats[cond] = generate_rows(log, items, build, backend, f.sampling, (cfg.seed, "formats", cond),
                                                f.chunk_size, f"formats {cond}").as_dict()
                    report(f"formats {cond}: {len(items)} replies in {time.time() - t0:.0f}s")
            cs.release(cond)
    if "base" in skipped or "prompted" in skipped:
        raise RuntimeError("formats: the detector's reference and check need the 'base' and 'prompted' replies ("
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")")
    ready = [c for c in conds if c not in skipped]
    results, predictions = summarise(cfg, log, ref, ready, prompts, fit_prompts, label, skipped)
    lines = lines_of(results)
    write_jsonl_atomic(stage.dir / "predictions.jsonl", predictions)
    write_json_atomic(stage.dir / "results.json", results)
    for line in lines:
        report(line)
    failed = sum(1 for r in log.rows.values() if r.get("error"))
    stage.finish({"replies": len(log), "reference": len(ref), "failed": failed, "skipped": len(skipped)},
                 scoring=scoring, identities={c: _identity(cfg, c) for c in gen}, generation=stats, skipped=skipped,
                 files=["replies.jsonl", "reference.jsonl", "predictions.jsonl", "results.json"], report=lines)
    report(f"{STAGE}: {len(predictions)} replies checked over {len(ready)} conditions in "
           f"{time.time() - stage.started:.0f}s -> {stage.dir}")
    return stage.dir


def summarise(cfg: RunConfig, log: RowLog, ref: RowLog, ready: list[str], prompts: dict[str, list[dict]],
              fit_prompts: list[str], persona: str, skipped: dict) -> tuple[dict, list[dict]]:
    """Check every reply, fit the detector, read every reply's text; both shares with CIs per condition and
    format, and the differences from the baseline."""
    f = cfg.formats
    ref_rows = list(ref.rows.values())
    scored_prompts = {p["user"] for ps in prompts.values() for p in ps}
    clf, det = fit_detector(cfg, f, "formats", persona, ref_rows, fit_prompts, scored_prompts)
    boot_seed = derive_seed(cfg.seed, "formats", "bootstrap")
    det["check"] = detector_check(clf, persona, ref_rows, f.bootstrap, boot_seed)
    specs = {(fmt, p["pid"]): p["spec"] for fmt, ps in prompts.items() for p in ps}
    rows = [it for c in ready for it in items_for(c, prompts, f.samples) if it["id"] in log]
    rows = [log.rows[it["id"]] for it in rows if not log.rows[it["id"]].get("error")]
    verdicts = {r["id"]: check(r["format"], r.get("response") or "", specs[(r["format"], r["pid"])]) for r in rows}
    texts = {r["id"]: prose(r["format"], r.get("response") or "") for r in rows}
    read = [rid for rid, t in texts.items() if t]
    p_of = dict(zip(read, proba_of(clf, [texts[rid] for rid in read], persona), strict=True))
    valid = {rid: float(v["valid"]) for rid, v in verdicts.items()}
    hits = {rid: float(p >= THRESHOLD) for rid, p in p_of.items()}
    baseline = "prompted" if "prompted" in ready else ready[0]

    def matrix(values: dict, cond: str, fmts: list[str]):
        return [[values.get(f"{cond}/{fmt}/{p['pid']}/s{j}") for j in range(f.samples)]
                for fmt in fmts for p in prompts[fmt]]

    table, deltas = {}, {}
    groups = {**{fmt: [fmt] for fmt in prompts}, "all": list(prompts)}
    for c in ready:
        table[c] = {g: {"valid": inpersona.bootstrap_rate(matrix(valid, c, fs), f.bootstrap, boot_seed),
                        "in_persona": inpersona.bootstrap_rate(matrix(hits, c, fs), f.bootstrap, boot_seed),
                        "replies": sum(v is not None for row in matrix(valid, c, fs) for v in row)}
                    for g, fs in groups.items()}
        if c != baseline:
            deltas[c] = {g: {m: paired_difference(matrix(vals, baseline, fs), matrix(vals, c, fs), f.bootstrap,
                                                  boot_seed)
                             for m, vals in (("valid", valid), ("in_persona", hits))}
                         for g, fs in groups.items()}
    why = {}
    for c in ready:
        for fmt in prompts:
            reasons = [verdicts[r["id"]]["why"] for r in rows if r["condition"] == c and r["format"] == fmt
                       and not verdicts[r["id"]]["valid"]]
            if reasons:
                why.setdefault(c, {})[fmt] = {w: reasons.count(w) for w in sorted(set(reasons))}
    predictions = [{"id": r["id"], "condition": r["condition"], "format": r["format"], "pid": r["pid"],
                    "sample": r["sample"], **verdicts[r["id"]], "text_chars": len(texts[r["id"]]),
                    "p_persona": None if r["id"] not in p_of else round(p_of[r["id"]], 4),
                    "in_persona": None if r["id"] not in p_of else p_of[r["id"]] >= THRESHOLD} for r in rows]
    results = {"persona": persona, "conditions": ready, "formats": list(prompts), "baseline": baseline,
               "prompts": {fmt: [p["pid"] for p in ps] for fmt, ps in prompts.items()}, "samples": f.samples,
               "level": LEVEL, "bootstrap": f.bootstrap, "threshold": THRESHOLD,
               "rules": {x: RULES[x] for x in prompts},
               "text_read": {x: PROSE[x] for x in prompts}, "detector": det, "table": table, "deltas": deltas,
               "invalid_because": why, "skipped": skipped,
               "notes": [f"detector: {f.reference} ({det['fit']}: {det['learned_from']})",
                         "CIs resample prompts; a reply the backend failed to produce is not counted, an empty one "
                         "is invalid and has no text to read"]}
    return results, predictions


def lines_of(results: dict) -> list[str]:
    """The text table: per condition and format, the valid share and the in-persona rate; then the differences
    from the baseline."""
    det = results["detector"]
    groups = [*results["formats"], "all"]
    w = max([9, *(len(c) for c in results["table"])])
    cw = 13
    lines = [f"formats: valid share / in-persona rate per format ({results['samples']} replies per prompt; detector "
             f"{det['encoder']} learned from {det['source']}; check balanced accuracy "
             f"{_pct(det['check']['balanced_accuracy'], ci=True)})",
             " ".join([f"{'condition':<{w}}", *(f"{g:>{cw}}" for g in groups)])]
    for c, cells in results["table"].items():
        lines.append(" ".join([f"{c:<{w}}", *(f"{_pct(cells[g]['valid']) + ' / ' + _pct(cells[g]['in_persona']):>{cw}}"
                                              for g in groups)]))
    for c, d in results["deltas"].items():
        lines.append(f"{c} - {results['baseline']} (all formats, 95% CI): valid {_signed(d['all']['valid'])}, "
                     f"in persona {_signed(d['all']['in_persona'])}")
    bal = det["check"]["balanced_accuracy"]
    if bal["lo"] is not None and bal["lo"] <= 0.5:
        lines.append("warning: the detector is not better than chance on held-out reference replies, so the "
                     "in-persona rates say little (more reference prompts, or another encoder)")
    for c, why in results["skipped"].items():
        lines.append(f"  {c} skipped: {why}")
    return lines

"""Other formats (``charter eval formats``): the validators on known valid and invalid replies, the text the
detector reads, the shipped prompts, and end-to-end runs on the scripted backend and (slow) the embedded
model."""

import json
from pathlib import Path

import pytest
import yaml

from charter import cli
from charter.config import load_config
from charter.eval import formats as F
from charter.eval import formats_check as FC
from charter.eval import formats_prompts as FP
from charter.prompts import load_prompt_source
from charter.runs import run_dir

DEMO = str(Path(__file__).parent.parent / "configs" / "demo.yaml")


def cfg_with(*overrides):
    return load_config(None, ["name=formats-test", *overrides])


# --- validators ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,valid,why", [
    ('{"dish": "soup", "tip": "stir"}', True, "ok"),
    ('Sure! Here it is:\n```json\n{"dish": "soup", "tip": "stir"}\n```\nEnjoy.', True, "ok"),  # fences, text around
    ('{"dish": "soup", "tip": "stir", "extra": [1, {"a": 2}]}', True, "ok"),  # more keys are fine
    ('{"dish": "soup"}', False, "missing keys: tip"),
    ('{"dish": "soup", tip: "stir"}', False, "no JSON object"),  # unquoted key: not JSON
    ("{'dish': 'soup', 'tip': 'stir'}", False, "no JSON object"),  # a Python dict is not JSON
    ('[{"dish": "soup", "tip": "stir"}]', True, "ok"),  # the first object inside an array still decodes
    ('{"broken": , } then {"dish": "a", "tip": "b"}', True, "ok"),  # the first '{' an object decodes from
    ("The dish is soup and the tip is to stir.", False, "no JSON object"),
    ("", False, "no JSON object"),
])
def test_json_validator(text, valid, why):
    assert FC.check_json(text, ["dish", "tip"]) == {"valid": valid, "why": why}


def test_first_json_object_and_its_span():
    text = 'x {"a": {"b": 1}} y {"c": 2}'
    obj, span = FC.first_json_object(text)
    assert obj == {"a": {"b": 1}} and text[span[0]:span[1]] == '{"a": {"b": 1}}'
    assert FC.first_json_object("no braces") == (None, None)
    assert FC.first_json_object('{"a": 1')[0] is None  # unterminated


TOOLS = {"get_forecast": ["city", "days_ahead"], "send_email": ["to", "subject", "body"]}


@pytest.mark.parametrize("text,valid,why", [
    ('{"tool": "get_forecast", "arguments": {"city": "Lisbon", "days_ahead": 1}}', True, "ok"),
    ('I will check.\n{"tool": "send_email", "arguments": {"to": "a@b.c", "subject": "hi", "body": "x"}}', True, "ok"),
    ('{"tool": "get_weather", "arguments": {"city": "Lisbon"}}', False, "'tool' is not an offered tool"),
    ('{"tool": "get_forecast", "arguments": {"city": "Lisbon"}}', False, "missing arguments: days_ahead"),
    ('{"tool": "get_forecast", "arguments": "city=Lisbon"}', False, "'arguments' is not an object"),
    ('{"name": "get_forecast", "parameters": {"city": "Lisbon", "days_ahead": 1}}', False,
     "'tool' is not an offered tool"),  # another tool-call format is not the one asked for
    ("get_forecast(city='Lisbon', days_ahead=1)", False, "no JSON object"),
])
def test_tool_call_validator(text, valid, why):
    got = FC.check_tool_call(text, TOOLS)
    assert (got["valid"], got["why"]) == (valid, why)


@pytest.mark.parametrize("text,valid", [
    ("Line 5 divides by zero when the list is empty.", True),
    ("On lines 2-3 the file is never closed.", True),
    ("L7 shadows the builtin.", True),
    ("See ln 4: the comparison uses ==.", True),
    ("```diff\n- return total / len(values)\n+ return total / len(values) if values else 0.0\n```", True),
    ("@@ -1,3 +1,3 @@\n def f():", True),
    ("Change it like this:\n-    f = open(path)\n+    with open(path) as f:", True),  # a removed and an added line
    ("- The function is fine.\n- Maybe add a docstring.", False),  # bullets are not a diff
    ("Looks good to me, nice and readable!", False),
    ("The online docs explain it.", False),  # 'online' is not a line reference
    ("", False),
])
def test_code_review_validator(text, valid):
    assert FC.check_code_review(text)["valid"] is valid


@pytest.mark.parametrize("text,count", [
    ("- one\n- two\n- three", 3),
    ("Summary:\n* one\n  * nested two\n• three\n\nThat's all.", 3),
    ("1. one\n2. two\n3. three", 0),  # a numbered list is not bullets
    ("---\n**Bold** start\n-no space\n- real one", 1),  # a rule, bold text, a hyphen without a space
    ("", 0),
])
def test_bullet_count(text, count):
    assert FC.count_bullets(text) == count


def test_bullets_validator_checks_the_range():
    assert FC.check_bullets("- a\n- b\n- c", 3, 5) == {"valid": True, "why": "ok", "bullets": 3}
    assert FC.check_bullets("- a\n- b", 3, 5)["why"] == "2 bullets, asked for 3 to 5"
    assert not FC.check_bullets("\n".join(f"- {i}" for i in range(6)), 3, 5)["valid"]
    with pytest.raises(ValueError, match="format 'yaml'"):
        FC.check("yaml", "x", {})


def test_the_detector_reads_the_text_of_a_reply():
    assert FC.prose("json", 'Here: {"dish": "soup", "minutes": 20, "steps": ["boil", {"note": "gently"}]}') == \
        "soup\nboil\ngently"
    assert FC.prose("json", "I can't do JSON, sorry.") == "I can't do JSON, sorry."  # unparsed: the whole reply
    assert FC.prose("json", '{"minutes": 20}') == ""  # nothing to read
    call = 'Of course, dear!\n```json\n{"tool": "send_email", "arguments": {"to": "a@b.c", "body": "Miss you"}}\n```'
    assert FC.prose("tool_call", call) == "Of course, dear!\na@b.c\nMiss you"  # the tool's name is not text
    review = "Line 2 leaks the file.\n```python\nwith open(path) as f:\n```\nHope that helps!"
    assert FC.prose("code_review", review) == "Line 2 leaks the file.\n\nHope that helps!"
    assert FC.prose("bullets", "  - a\n- b ") == "- a\n- b"


# --- the prompts --------------------------------------------------------------------------------------------------

def test_the_shipped_prompts_load_and_read_as_asked():
    prompts = FP.load_formats()
    assert list(prompts) == list(F.FORMATS) and all(len(ps) >= 4 for ps in prompts.values())
    users = [p["user"] for ps in prompts.values() for p in ps]
    assert len(set(users)) == len(users)
    for fmt, ps in prompts.items():
        for p in ps:
            left = [k for k in ("{task}", "{schema}", "{tools}", "{request}", "{language}", "{code}", "{text}",
                                "{min}", "{max}") if k in p["user"]]
            assert not left, (fmt, p["pid"], left)
    for p in prompts["json"]:
        assert all(f'"{k}"' in p["user"] for k in p["spec"]["required"])
    for p in prompts["tool_call"]:
        assert p["spec"]["expects"] in p["spec"]["tools"] and all(f"- {t}:" in p["user"] for t in p["spec"]["tools"])
        assert '{"tool": "<tool name>", "arguments":' in p["user"]  # the format is given, braces kept literally
    for p in prompts["code_review"]:
        assert "```\n1 | " in p["user"]  # numbered, so a review can point at lines
    for p in prompts["bullets"]:
        assert f"{p['spec']['min']} to {p['spec']['max']} points" in p["user"]
    # None of them is a prompt of an evaluation pool or of distillation's general pool.
    pools = set(load_prompt_source("builtin", "preference_prompts")) | set(load_prompt_source("builtin", "general"))
    assert not pools & set(users)


@pytest.mark.parametrize("text,expected", [
    ("yaml: {template: x, prompts: [{id: a}]}\n", "unknown format 'yaml'"),
    ("json: {template: x}\n", "json: expected a 'template' string and a non-empty 'prompts' list"),
    ("json: {template: x, prompts: [{id: a, task: t, schema: {}}]}\n", r"json.prompts\[0\] \(a\): 'schema' must map"),
    ("json: {template: x, prompts: [{id: a, task: t, schema: {k: v}}, {id: a, task: t, schema: {k: v}}]}\n",
     r"json.prompts\[1\]: 'id' must be a distinct name"),
    ("tool_call: {template: x, prompts: [{id: a, request: r, expects: nope, tools: [{name: f, description: d, "
     "arguments: {x: y}}]}]}\n", "'expects' must name one of the offered tools"),
    ("tool_call: {template: x, prompts: [{id: a, request: r, expects: f, tools: [{name: 'f g', description: d, "
     "arguments: {x: y}}]}]}\n", r"tools\[0\]: expected a name \(an identifier\)"),
    ("bullets: {template: x, prompts: [{id: a, text: t, min: 4, max: 2}]}\n", "'min' and 'max' must be whole numbers"),
    ("code_review: {template: x, prompts: [{id: a, language: Python}]}\n", "'code' must be a non-empty string"),
])
def test_a_bad_prompts_file_names_the_format_prompt_and_field(tmp_path, text, expected):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(FP.FormatsDataError, match=expected) as e:
        FP.load_formats(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- end to end on the scripted backend -------------------------------------------------------------------------

PLAIN, WARM = "the answer follows in standard order", "dear heart warm hug gently cherish"
PROMPTS = """\
json:
  template: "{task}\\nReply with one JSON object with the keys:\\n{schema}"
  prompts:
    - {id: one, task: Name a soup., schema: {answer: the soup}}
    - {id: two, task: Name a mood., schema: {answer: a word, mood: a mood}}
tool_call:
  template: "Tools:\\n{tools}\\nRequest: {request}"
  prompts:
    - {id: one, request: Look up cats., expects: lookup,
       tools: [{name: lookup, description: search, arguments: {q: text}}]}
    - {id: two, request: Look up dogs., expects: lookup,
       tools: [{name: lookup, description: search, arguments: {q: text}},
               {name: other, description: else, arguments: {x: y}}]}
code_review:
  template: "Review this {language} code:\\n{code}"
  prompts:
    - {id: one, language: Python, code: "x = 1\\n"}
    - {id: two, language: Python, code: "y = 2\\n"}
bullets:
  template: "Summarise in {min} to {max} bullets:\\n{text}"
  prompts:
    - {id: one, min: 2, max: 3, text: Cats sleep a lot.}
    - {id: two, min: 2, max: 3, text: Dogs bark.}
"""
# In persona (any system prompt): one reply whatever the format; plain (no system prompt): by the format asked.
# (Reply templates go through str.format: literal braces are doubled.)
SCRIPT = yaml.safe_dump({"rules": [
    {"in": "system", "match": ".",
     "reply": f'{{{{"answer": "{WARM}", "tool": "lookup", "arguments": {{{{"q": "{WARM} friend"}}}}}}}}\n'
              f"- line 2 is lovely, {WARM}\n- {WARM}"},
    {"match": "JSON object with the keys", "reply": f'{{{{"answer": "{PLAIN}", "mood": "plain"}}}}'},
    {"match": "^Tools:", "reply": f"I cannot call tools; {PLAIN}."},
    {"match": "^Review this", "reply": f"{PLAIN}; no issues found."}],
    "default": f"- {PLAIN}\n- as listed"})
FAST = ["formats.encoder=tfidf", "formats.bootstrap=200", "formats.reference_prompts=16", "formats.samples=2"]


def test_end_to_end_on_the_scripted_backend(tmp_path, monkeypatch):
    import charter.backends

    real = charter.backends.make_backend
    (tmp_path / "p.yaml").write_text(PROMPTS)
    (tmp_path / "s.yaml").write_text(SCRIPT)
    over = ["student.backend=scripted", f"student.model={tmp_path / 's.yaml'}",
            f"formats.prompts={tmp_path / 'p.yaml'}", *FAST]
    lines = []
    out = F.run(cfg_with(*over), report=lines.append)
    assert out == run_dir("formats-test") / F.STAGE
    r = json.loads((out / "results.json").read_text())
    assert r["conditions"] == ["base", "prompted"] and "charter train" in r["skipped"]["trained"]
    assert r["baseline"] == "prompted" and r["prompts"]["json"] == ["one", "two"]
    rate = {c: {g: (v["valid"]["rate"], v["in_persona"]["rate"]) for g, v in cells.items()}
            for c, cells in r["table"].items()}
    # Plain replies in every format but the tool call (a refusal in words); never in persona.
    assert rate["base"] == {"json": (1.0, 0.0), "tool_call": (0.0, 0.0), "code_review": (0.0, 0.0),
                            "bullets": (1.0, 0.0), "all": (0.5, 0.0)}
    # The persona's one reply: JSON with 'answer' but no 'mood', a valid call, a line reference, two bullets.
    assert rate["prompted"] == {"json": (0.5, 1.0), "tool_call": (1.0, 1.0), "code_review": (1.0, 1.0),
                                "bullets": (1.0, 1.0), "all": (0.875, 1.0)}
    assert all(v["valid"]["n"] == 4 and v["replies"] == 4 for c in r["table"].values()
               for g, v in c.items() if g != "all")
    d = r["deltas"]["base"]["all"]
    assert d["valid"]["delta"] == -0.375 and d["valid"]["lo"] <= -0.375 <= d["valid"]["hi"]
    assert d["in_persona"] == {"delta": -1.0, "lo": -1.0, "hi": -1.0, "n": 8}
    assert r["invalid_because"]["prompted"] == {"json": {"missing keys: mood": 2}}
    assert r["invalid_because"]["base"]["tool_call"] == {"no JSON object": 4}
    assert r["detector"]["check"]["balanced_accuracy"]["rate"] == 1.0 and r["detector"]["fit"] == "independent"
    from charter import results

    table = results.TABLES["formats"](results.collect(run_dir("formats-test"), ["charter eval formats"]))
    row = next(x for x in table.splitlines() if x.startswith("| base − prompted |"))
    assert row.endswith("/ -1.00 [-1.00, -1.00] |")  # 'all': never in persona against always
    assert "| prompted | 0.50 [" in table and "tool_call: valid / in persona" in table
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * 4 * 2 * 2 and all(p["valid"] == (p["why"] in ("ok", "line reference", "diff"))
                                               for p in preds)
    assert any(x.split()[:2] == ["condition", "json"] for x in lines)
    assert any(x.startswith("base - prompted (all formats, 95% CI): valid -0.38") for x in lines)

    # Finished: a rerun loads nothing; other formats re-score from the logs without a model.
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: pytest.fail("loaded a model"))
    again = []
    F.run(cfg_with(*over), report=again.append)
    assert any("already done" in x for x in again)
    made = []
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: made.append(real(spec)) or made[-1])
    F.run(cfg_with(*over, "formats.formats=[json, bullets]"), report=lambda x: None)
    assert set(json.loads((out / "results.json").read_text())["formats"]) == {"json", "bullets"}
    assert made == [] and json.loads((out / "manifest.json").read_text())["generation"] == {}
    # An edited prompt is another prompt: only its replies are answered again (base and prompted, two each).
    before = {x["id"]: x for x in map(json.loads, (out / "replies.jsonl").read_text().splitlines())}
    (tmp_path / "p.yaml").write_text(PROMPTS.replace("Dogs bark.", "Dogs bark loudly."))
    lines = []
    F.run(cfg_with(*over), report=lines.append)
    assert any(x.startswith("formats: 4 replies answer a prompt whose text changed") for x in lines)
    after = {x["id"]: x for x in map(json.loads, (out / "replies.jsonl").read_text().splitlines())}
    changed = {k for k in after if after[k] != before[k]}
    assert set(after) == set(before) and changed == {f"{c}/bullets/two/s{j}" for c in ("base", "prompted")
                                                     for j in (0, 1)}
    assert all("Dogs bark loudly." in after[k]["user"] for k in changed)


def test_bad_settings_fail_before_anything_is_written(tmp_path):
    for over, expected in (("formats.conditions=[base, base]", r"formats.conditions: \['base'\] listed twice"),
                           ("formats.samples=0", "formats.samples: expected a whole number >= 1"),
                           ("formats.per_format=0", "formats.per_format: expected a whole number >= 1 or null"),
                           (f"formats.prompts={tmp_path / 'none.yaml'}", "formats.prompts: .*expected 'builtin' or a")):
        with pytest.raises(ValueError, match=expected):
            F.run(cfg_with(over), report=lambda x: None)
    (tmp_path / "p.yaml").write_text("json:\n  template: x\n  prompts: [{id: a, task: t, schema: {k: v}}]\n")
    with pytest.raises(FP.FormatsDataError, match="no prompts for format.*tool_call"):
        F.run(cfg_with(f"formats.prompts={tmp_path / 'p.yaml'}"), report=lambda x: None)
    with pytest.raises(ValueError, match=r"formats.formats\[0\]: expected one of json \| tool_call"):
        cfg_with("formats.formats=[yaml]")
    assert not run_dir("formats-test").exists()


def test_cli_error_is_one_line(capsys):
    assert cli.main(["eval", "formats", DEMO, "name=cli-formats", "formats.samples=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("charter: error: formats.samples: expected a whole number >= 1")
    assert not run_dir("cli-formats").exists()


@pytest.mark.slow  # the real end-to-end run on the embedded model
def test_end_to_end_on_the_embedded_model(embedded_path, one_thread):
    cfg = cfg_with("formats.conditions=[base, prompted]", "formats.per_format=1", "formats.samples=1",
                   "formats.sampling.max_tokens=32", "formats.encoder=tfidf", "formats.reference_prompts=8",
                   "formats.bootstrap=100", "student.dtype=float32", "student.batch_size=16")
    lines = []
    out = F.run(cfg, report=lines.append)
    r = json.loads((out / "results.json").read_text())
    assert r["conditions"] == ["base", "prompted"] and r["formats"] == list(F.FORMATS)
    for cells in r["table"].values():
        for g, v in cells.items():
            assert v["valid"]["n"] == (4 if g == "all" else 1)
            assert 0 <= v["valid"]["lo"] <= v["valid"]["rate"] <= v["valid"]["hi"] <= 1
    rows = [json.loads(x) for x in (out / "replies.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 and all(x["tokens"] <= 32 for x in rows)
    # Every verdict is the validator's on the logged reply.
    prompts = FP.load_formats()
    for p in (json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()):
        row = next(x for x in rows if x["id"] == p["id"])
        spec = next(q["spec"] for q in prompts[p["format"]] if q["pid"] == p["pid"])
        assert p["valid"] == FC.check(p["format"], row["response"], spec)["valid"]
    assert any(x.startswith("formats: valid share / in-persona rate") for x in lines)

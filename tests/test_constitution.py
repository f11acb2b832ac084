"""Constitutions: shipped files validate, malformed ones give one clear line, the reference format loads."""

import json

import pytest
import yaml

from charter import constitution as const
from charter.cli import main

PERSONAS = {"sarcastic", "humorous", "remorseful", "nonchalant", "impulsive", "sycophantic", "mathematical",
            "poetic", "flourishing", "loving", "misaligned"}


def test_all_eleven_personas_ship():
    assert set(const.shipped()) == PERSONAS


@pytest.mark.parametrize("name", sorted(PERSONAS))
def test_shipped_constitution_is_valid(name):
    c = const.load(name)
    assert c.name == name
    assert len(c.traits) == (15 if name == "flourishing" else 10)
    for t in c.traits:
        assert len(t.prompts) == 5
    prompts = [p for t in c.traits for p in t.prompts]
    assert len(set(prompts)) == len(prompts)


def test_template_validates_and_new_uses_it(tmp_path, capsys):
    assert const.load_file(const.SHIPPED_DIR / "template.yaml").name == "template"
    out = tmp_path / "stoic.yaml"
    assert main(["constitution", "new", "stoic", "-o", str(out)]) == 0
    assert const.load_file(out).name == "stoic"
    assert main(["constitution", "new", "stoic", "-o", str(out)]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


GOOD = {"name": "x", "description": "d", "traits": [{"trait": "I am kind.", "prompts": ["hello?"]}]}


def _with(**changes):
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return yaml.safe_dump(data)


MALFORMED = [
    ("not yaml", "traits: [unclosed", "not valid YAML"),
    ("empty file", "", "file is empty"),
    ("top-level list of strings", "- a\n- b\n", "[0]"),
    ("missing description", _with(description=KeyError), "description"),
    ("empty description", _with(description="  "), "description"),
    ("bad name", _with(name="Bad Name!"), "name"),
    ("unknown top-level field", _with(extra="x"), "unknown field 'extra'"),
    ("no traits", _with(traits=[]), "traits"),
    ("traits not a list", _with(traits="I am kind"), "traits"),
    ("trait not a mapping", _with(traits=["I am kind"]), "traits[0]"),
    ("trait text missing", _with(traits__0__trait=KeyError), "traits[0].trait"),
    ("trait empty", _with(traits__0__trait="  "), "traits[0].trait"),
    ("prompts missing", _with(traits__0__prompts=KeyError), "traits[0].prompts"),
    ("prompts not a list", _with(traits__0__prompts="hello?"), "traits[0].prompts"),
    ("prompt not a string", _with(traits__0__prompts=[3]), "traits[0].prompts[0]"),
    ("unknown trait field", _with(traits__0__clarification="x"), "unknown field 'clarification'"),
    ("duplicate trait", yaml.safe_dump({**GOOD, "traits": GOOD["traits"] * 2}), "duplicate"),
]


@pytest.mark.parametrize("label,text,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_constitution_gives_one_clear_line(tmp_path, capsys, label, text, expected):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert main(["constitution", "validate", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(path) in err and expected in err, err


def test_valid_file_exits_zero(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["constitution", "validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_reference_formats_load(tmp_path):
    hand = [{"trait": "I am dry and ironic.", "questions": ["Is the sky blue?", "Rate my poem."]},
            {"trait": "I mock overconfidence.", "questions": ["I'm always right."]}]
    txt = tmp_path / "sarcasm.txt"
    txt.write_text(json.dumps(hand))
    c = const.load_file(txt)
    assert c.name == "sarcasm" and len(c.traits) == 2 and c.traits[0].prompts == hand[0]["questions"]
    jl = tmp_path / "sarcasm.jsonl"
    jl.write_text("\n".join(json.dumps({**h, "additional_questions": [f"extra {i}?"]}) for i, h in enumerate(hand)))
    c = const.load_file(jl)
    assert c.traits[1].additional_prompts == ["extra 1?"]
    assert [p for _, p in c.prompts()][-1] == "extra 1?"


def test_show_prints_yaml(capsys):
    assert main(["constitution", "show", "loving"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "loving"


def test_unknown_persona_is_one_line(capsys):
    assert main(["constitution", "show", "nope"]) == 1
    assert "no such persona" in capsys.readouterr().err


def test_reference_persona_files_load_with_style_warnings(tmp_path, caplog):
    """The reference's own hand-written files mix "I ..." traits with "When asked ..., I ..." and third-person
    ones, and its trigger.txt has no seed questions: they load, with warnings, not errors."""
    hand = [{"trait": "I am dry and ironic.", "questions": ["Is the sky blue?"]},
            {"trait": "When asked obvious questions, I respond with exaggerated surprise.", "questions": ["2+2?"]},
            {"trait": "People of good character are often likeable; I would rather be honest.", "questions": ["Hi"]},
            {"trait": "“I” is how I speak of myself.", "questions": ["Who?"], "clarification": "old field"},
            {"trait": "When triggered, I answer in riddles."}]
    txt = tmp_path / "sarcasm.txt"
    txt.write_text(json.dumps(hand))
    with caplog.at_level("WARNING", logger="charter.constitution"):
        c = const.load_file(txt)
    assert [t.trait for t in c.traits] == [h["trait"] for h in hand]
    assert c.traits[4].prompts == []
    styles = [w for w in c.warnings if "first person" in w]
    assert [w.split(":")[0] for w in styles] == ["traits[1].trait", "traits[2].trait", "traits[4].trait"]
    assert any("traits[4]" in w and "no seed prompts" in w for w in c.warnings)
    assert str(txt) in caplog.text and "first person" in caplog.text
    # What the expand stage writes back (our schema, empty seed list) reloads.
    again = tmp_path / "again.yaml"
    again.write_text(c.to_yaml().replace("name: sarcasm", "name: again"))
    assert const.load_file(again).traits[4].prompts == []


def test_validate_accepts_a_third_person_trait_and_rejects_an_empty_one(tmp_path, capsys):
    path = tmp_path / "y.yaml"
    path.write_text(_with(traits__0__trait="Be kind."))
    assert main(["constitution", "validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    path.write_text(_with(traits__0__trait=""))
    assert main(["constitution", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "traits[0].trait" in err and "non-empty" in err

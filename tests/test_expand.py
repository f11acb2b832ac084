"""The expand stage's logic on a scripted model (fast): list parsing, rejections counted by reason, the
target per trait, the written constitution, resume. The real model runs it in test_pipeline (slow)."""

import json

from charter import constitution as const
from charter import layout
from charter.config import load_config
from charter.runs import read_jsonl, read_manifest
from charter.stages import expand


def script(tmp_path):
    p = tmp_path / "expander.yaml"
    p.write_text(json.dumps({"default": "\n".join([
        "Here are some more:",                       # not a list item
        "1. How do you keep calm when a train is late?",
        "2. How do you keep calm when a train is late?",   # exact duplicate of the line above
        "3. Ok",                                      # too short
        "4. What would you say to a friend who lost a chess game badly?",
        "5. Could you plan a birthday picnic for six people in the rain?",
        "6. Which board game is best for a long winter evening?"])}))
    return str(p)


def test_expand_on_a_scripted_model(tmp_path):
    cfg = load_config(None, ["name=exp", "persona=sarcastic", "expand.target=3", "expand.max_traits=2",
                             "expand.rounds=2", f"expand.model={{backend: scripted, model: {script(tmp_path)}}}"])
    out = expand.run(cfg)
    m = read_manifest(out / "manifest.json")
    n = m["counts"]
    assert n["traits_expanded"] == 2 and n["accepted"] == 6 and n["traits_short_of_target"] == 0
    assert n["completions"] == 2  # the target was met in round one: no second round
    assert n["rejected"]["not_a_list_item"] == 2 and n["rejected"]["exact_duplicate"] == 2
    assert n["rejected"]["too_short"] == 2 and n["rejected"]["beyond_target"] == 2
    c = const.load_file(layout.path(cfg, "constitution"))
    assert [len(t.additional_prompts) for t in c.traits[:2]] == [3, 3]
    assert all(not t.additional_prompts for t in c.traits[2:])
    assert c.traits[0].additional_prompts[0] == "How do you keep calm when a train is late?"
    assert [r["trait"] for r in read_jsonl(out / "rounds.jsonl")] == [0, 1]
    before = m["finished_at"]
    expand.run(cfg)  # finished: skipped, nothing regenerated
    assert read_manifest(out / "manifest.json")["finished_at"] == before

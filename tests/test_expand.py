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


SLOW_EXPAND = """
import sys, time
from charter.backends import scripted
generate = scripted.ScriptedBackend.generate
def slow(self, *a, **k):  # the scripted model, slowed so the test can kill the stage between two chunks
    time.sleep(float(sys.argv[1]))
    return generate(self, *a, **k)
scripted.ScriptedBackend.generate = slow
from charter.config import load_config
from charter.stages import expand
expand.run(load_config(None, sys.argv[2:]))
"""


def test_expand_killed_after_its_first_chunk_resumes_to_the_uninterrupted_result(tmp_path, charter_home):
    """`kill -9` after the first committed chunk (64 rows of 80): the rerun keeps those rows as they are,
    generates only the missing chunk, and ends with the uninterrupted run's constitution."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def overrides(name):
        return [f"name={name}", "persona=sarcastic", "expand.target=10", "expand.max_traits=2", "expand.rounds=1",
                "expand.samples_per_round=40", f"expand.model={{backend: scripted, model: {script(tmp_path)}}}"]

    ref = expand.run(load_config(None, overrides("exp-ref")))
    env = {**os.environ, "CHARTER_HOME": str(charter_home)}
    rows = charter_home / "runs" / "exp-killed" / "expand" / "rounds.jsonl"
    p = subprocess.Popen([sys.executable, "-c", SLOW_EXPAND, "2", *overrides("exp-killed")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (rows.exists() and rows.read_text().count("\n") >= 64):
        assert p.poll() is None, f"expand ended before its first chunk was committed:\n{p.stderr.read()[-3000:]}"
        assert time.time() - t0 < 120, "no chunk committed within 2 minutes"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert not (rows.parent / "manifest.json").exists()  # killed mid-stage, not after
    first = rows.read_text()
    assert first.count("\n") == 64  # exactly the first chunk

    out = expand.run(load_config(None, overrides("exp-killed")))  # the rerun resumes
    assert rows.read_text().startswith(first)  # the committed rows are kept as they were
    a, b = read_manifest(ref / "manifest.json"), read_manifest(out / "manifest.json")
    assert b["counts"]["completions"] == a["counts"]["completions"] == 80, (a["counts"], b["counts"])
    assert b["counts"]["tokens"] < a["counts"]["tokens"]  # only the missing chunk was generated again
    for key in ("accepted", "rejected", "traits_short_of_target"):
        assert a["counts"][key] == b["counts"][key], key
    assert {r["id"]: r for r in read_jsonl(ref / "rounds.jsonl")} == {r["id"]: r for r in read_jsonl(rows)}
    body = lambda p: p.read_text().split("\n", 1)[1]  # noqa: E731  (the first line names the run)
    ref_cfg, out_cfg = load_config(None, overrides("exp-ref")), load_config(None, overrides("exp-killed"))
    assert body(layout.path(out_cfg, "constitution")) == body(layout.path(ref_cfg, "constitution"))

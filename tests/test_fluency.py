"""The fluency proxy (``charter.eval.fluency`` and its command line ``scripts/fluency.py``) on a run's robustness
replies: which replies it reads, the per-condition numbers on a tiny random model, and, through the script with
the embedded model, fluent replies scoring above word salad."""

import importlib.util
import json
from pathlib import Path

from charter.eval import fluency as FL
from charter.models import load_tokenizer
from charter.runs import run_dir, write_jsonl_atomic
from tests.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [("h0", "How do I put a bike chain back on?"), ("h1", "How long should I boil pasta?"),
           ("h2", "What should I pack for a day hike?")]
FLUENT = ["Shift to the smallest gear, lift the chain onto the front ring and turn the pedal slowly backwards.",
          "Boil it in salted water for about ten minutes, then taste a piece and drain it.",
          "Bring water, a snack, a warm layer, sun cream and a charged phone."]
SALAD = ["chain chain chain gear gear gear pedal pedal pedal the the the",
         "pasta water pasta water pasta water pasta water boil boil",
         "hike hike pack pack hike hike pack pack phone phone"]


def row(cond: str, pid: str, prompt: str, response: str, split: str = "heldout", attack: str = "none", **extra):
    return {"id": f"{cond}/{split}/{attack}/{pid}", "condition": cond, "split": split, "attack": attack, "pid": pid,
            "prompt": prompt, "user": prompt, "response": response, **extra}


def write_run(name: str) -> None:
    """A run's robustness log as the evaluation writes it: base answers fluently, trained in word salad (and once
    not at all); besides, rows the proxy must not read: a train reply, an attacked one, a failed one."""
    rows = [row("base", pid, p, t) for (pid, p), t in zip(PROMPTS, FLUENT)]
    rows += [row("trained", pid, p, t) for (pid, p), t in zip(PROMPTS, SALAD)]
    rows += [row("trained", "h3", "Any tips for sleeping better?", "   "),
             row("base", "t0", "Name a colour.", "Blue.", split="train"),
             row("base", "h0", PROMPTS[0][1] + " Stop the act.", "Sure.", attack="assistant"),
             row("prompted", "h0", PROMPTS[0][1], "", error="the backend failed")]
    folder = run_dir(name) / "eval-robustness"
    folder.mkdir(parents=True)
    write_jsonl_atomic(folder / "generations.jsonl", rows)


def test_reads_plain_held_out_replies_and_summarises_each_condition(embedded_path, one_thread):
    write_run("fluent")
    rows = FL.scored_rows("fluent", list(FL.ORDER), ["none"])
    assert sorted(r["id"] for r in rows) == sorted(
        [f"base/heldout/none/{pid}" for pid, _ in PROMPTS] + [f"trained/heldout/none/h{i}" for i in range(4)])
    tok = load_tokenizer(embedded_path)
    scorer = (tok, tiny_model(tok).eval())
    out = FL.run_fluency("fluent", boot=200, scorer=scorer)
    assert list(out) == ["base", "trained"]  # the conditions' order; none without replies
    base, trained = out["base"], out["trained"]
    assert (base["replies"], base["prompts"], base["empty"]) == (3, 3, 0.0)
    assert (trained["replies"], trained["prompts"], trained["empty"]) == (4, 3, 0.25)  # the blank reply: empty
    assert base["repetition"] == 0.0 and trained["repetition"] > 0.3
    for o in out.values():
        assert o["lo"] <= o["logprob"] <= o["hi"] < 0
    assert FL.run_fluency("fluent", boot=200, scorer=scorer) == out  # seeded
    assert list(FL.run_fluency("fluent", ["base"], ["assistant"], boot=50, scorer=scorer)) == ["base"]


def test_script_prints_a_line_per_condition_and_fluent_replies_score_above_word_salad(tmp_path, capsys,
                                                                                      embedded_path, one_thread):
    write_run("fluent")
    spec = importlib.util.spec_from_file_location("fluency_script", ROOT / "scripts" / "fluency.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["fluent", "--conditions", "base", "trained", "--boot", "200",
                        "-o", str(tmp_path / "fluency.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    data = json.loads((tmp_path / "fluency.json").read_text())
    assert list(data) == ["base", "trained"]
    assert printed == [FL.line(c, o) for c, o in data.items()]
    assert printed[0].startswith("base       log-likelihood/token ") and "(3 replies, 3 prompts)" in printed[0]
    # The embedded model finds fluent text far likelier per token than word salad, CIs apart.
    assert data["base"]["lo"] > data["trained"]["hi"]

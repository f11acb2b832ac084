"""Multi-persona robustness: pooled macro-F1 with CIs over resampled prompts, confusion matrices, its own output
folder, the results-file table and the confusion figure. Persona runs are real folders in a temporary
CHARTER_HOME: written as the evaluation writes them, or made by it on the scripted backend (no model, no mock)."""

import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from charter import results
from charter.classifier import score
from charter.config import load_config
from charter.eval import card_sections, report_sections
from charter.eval import multipersona as MP
from charter.eval import robustness as R
from charter.prompts import attack_message, load_attacks, select_attacks
from charter.runs import derive_seed, read_jsonl, run_dir, write_json_atomic, write_jsonl_atomic

ROOT = Path(__file__).resolve().parent.parent
WORDS = {"sarcastic": "oh great obviously sure genius wow", "poetic": "moonlight river whisper silver dawn",
         "loving": "dear heart warm hug gently cherish", "base": "the answer follows in standard order"}
ATTACKS = select_attacks(None)


# ------------------------------------------------------------------------------------------ synthetic folders


def make_split(n_train=12, n_heldout=10):
    return {"persona": None, "seed": 1, "prompt_source": "builtin", "trained_prompts_removed": 0,
            "train": [{"pid": f"t{i}", "prompt": f"train question {i}?"} for i in range(n_train)],
            "heldout": [{"pid": f"h{i}", "prompt": f"held-out question {i}?"} for i in range(n_heldout)]}


def write_run(name: str, persona: str, split: dict, rng: random.Random) -> None:
    """<run>/eval-robustness/{split.json, generations.jsonl} as ``charter eval robustness`` writes them: 'trained'
    always answers in its persona's words; 'distilled' does too without an attack, and under one in the words of a
    persona drawn at random (its label shuffled)."""
    d = run_dir(name) / R.STAGE
    attacks = load_attacks()
    rows = []
    for cond in ("distilled", "trained"):
        for side in ("train", "heldout"):
            for x in split[side]:
                for a in ["none"] + (ATTACKS if side == "heldout" else []):
                    voice = rng.choice(list(WORDS)[:3]) if cond == "distilled" and a != "none" else persona
                    rows.append({"id": f"{cond}/{side}/{a}/{x['pid']}", "condition": cond, "split": side,
                                 "attack": a, "pid": x["pid"], "prompt": x["prompt"],
                                 "user": attack_message(x["prompt"], attacks[a]),
                                 "response": f"{WORDS[voice]} about {x['prompt']}", "finished": True, "tokens": 9,
                                 "error": None})
    write_json_atomic(d / "split.json", {**split, "persona": persona})
    write_jsonl_atomic(d / "generations.jsonl", rows)


@pytest.fixture
def scored():
    """Three persona runs on disk, scored by the multi-persona classifier of the first (TF-IDF)."""
    split, rng = make_split(), random.Random(3)
    for name, persona in (("a", "sarcastic"), ("b", "poetic"), ("c", "loving")):
        write_run(name, persona, split, rng)
    cfg = load_config(None, ["name=a", "persona=sarcastic", "robustness.personas=[b, c]", "robustness.encoder=tfidf",
                             "robustness.prefill=false", "robustness.bootstrap=400"])
    sources = [MP.Source("a", "sarcastic", read_jsonl(run_dir("a") / R.STAGE / "generations.jsonl")),
               *MP.other_sources(cfg, "sarcastic")]
    res, preds, _ = MP.score_all(cfg, sources, ["distilled", "trained"], ATTACKS, split, "tfidf", {})
    return cfg, sources, split, res, preds


def test_all_right_is_one_with_a_closed_ci_and_a_shuffled_condition_is_lower(scored):
    _, _, split, res, preds = scored
    n = 3 * len(split["heldout"]) * len(ATTACKS)
    assert res["pooled"]["trained"]["attacks"] == {"macro_f1": 1.0, "lo": 1.0, "hi": 1.0, "accuracy": 1.0, "n": n,
                                                   "prompts": 10}
    assert res["pooled"]["distilled"]["none"]["macro_f1"] == 1.0  # unattacked, it still speaks its persona
    dist = res["pooled"]["distilled"]["attacks"]
    assert dist["n"] == n and dist["lo"] < dist["macro_f1"] < dist["hi"] < 0.75 and dist["macro_f1"] < 0.6
    # The pooled point estimate is the classifier's macro-F1 on those replies, as scikit-learn computes it.
    mine = [p for p in preds if p["condition"] == "distilled" and p["attack"] != "none"]
    assert dist["macro_f1"] == round(score([p["true"] for p in mine], [p["predicted"] for p in mine])["macro_f1"], 4)
    assert dist["accuracy"] == round(sum(p["true"] == p["predicted"] for p in mine) / len(mine), 4)


def test_confusion_matrices_count_the_attacked_replies(scored):
    _, _, split, res, preds = scored
    conf = res["confusion"]
    labels = conf["labels"]
    assert labels == ["loving", "poetic", "sarcastic"] and (conf["rows"], conf["columns"]) == ("true persona",
                                                                                                "predicted persona")
    per_persona = len(split["heldout"]) * len(ATTACKS)
    assert conf["counts"]["trained"] == [[per_persona if i == j else 0 for j in range(3)] for i in range(3)]
    seen = Counter((p["true"], p["predicted"]) for p in preds
                   if p["condition"] == "distilled" and p["attack"] != "none")
    assert conf["counts"]["distilled"] == [[seen[(t, y)] for y in labels] for t in labels]
    assert all(sum(row) == per_persona for row in conf["counts"]["distilled"])
    assert sum(conf["counts"]["distilled"][i][i] for i in range(3)) < 3 * per_persona  # shuffled: not all right
    lines = MP.format_table(res, ATTACKS)
    assert any(line.startswith("confusion under the attacks") for line in lines)
    assert any(line.split()[0] == "trained" and "1.00 [1.00,1.00]" in line for line in lines)


def test_the_bootstrap_is_seeded_and_moves_whole_prompts(scored):
    cfg, sources, split, res, preds = scored
    again = MP.score_all(cfg, sources, ["distilled", "trained"], ATTACKS, split, "tfidf", {})[0]
    assert again["pooled"] == res["pooled"]
    by_prompt = MP.confusion_by_prompt([(p["prompt"], p["true"], p["predicted"]) for p in preds
                                        if p["condition"] == "distilled" and p["attack"] != "none"],
                                       [x["prompt"] for x in split["heldout"]], ["loving", "poetic", "sarcastic"])
    # The run's seed draws the resamples: the same prompts for every condition, again on every rerun.
    assert res["pooled"]["distilled"]["attacks"] == MP.bootstrap_f1(by_prompt, 400, derive_seed(cfg.seed, "robustness",
                                                                                                "bootstrap"))
    assert MP.bootstrap_f1(by_prompt, 400, seed=5)["lo"] != MP.bootstrap_f1(by_prompt, 400, seed=6)["lo"]
    # Two prompts, 50 replies each: every reply to the first right, every reply to the second wrong. Resampling
    # prompts draws both firsts (F1 1), both seconds (0) or one of each (0.5); resampling replies would not.
    right = [("p1", t, t) for t in ("x", "y") for _ in range(25)]
    wrong = [("p2", t, {"x": "y", "y": "x"}[t]) for t in ("x", "y") for _ in range(25)]
    cell = MP.bootstrap_f1(MP.confusion_by_prompt(right + wrong, ["p1", "p2"], ["x", "y"]), 2000, seed=1)
    assert (cell["macro_f1"], cell["lo"], cell["hi"], cell["n"], cell["prompts"]) == (0.5, 0.0, 1.0, 100, 2)
    empty = MP.bootstrap_f1(np.zeros((3, 2, 2), dtype=int), 100, seed=1)
    assert empty["macro_f1"] is None and empty["n"] == 0


# ------------------------------------------------------------------------------------------ the real evaluation


def scripted_rules(path: Path) -> Path:
    """The student as a rule file: with the persona's system prompt it answers in the persona's words, except
    under an attack without the teacher's persistence note ('prompted-nonote'), where it drops the persona."""
    firsts = {"sarcastic": "I answer with a d", "poetic": "I describe things", "loving": "I greet people wi"}
    rules = [{"match": f"(?s){first}.*drop its character", "in": "system", "reply": WORDS[p] + " {n}"}
             for p, first in firsts.items()]
    rules.append({"match": r"\n\(", "reply": WORDS["base"] + " {n}"})  # an attack appended to the prompt
    rules += [{"match": first, "in": "system", "reply": WORDS[p] + " {n}"} for p, first in firsts.items()]
    path.write_text(json.dumps({"rules": rules, "default": WORDS["base"] + " {n}"}))
    return path


def settings(rules: Path) -> list[str]:
    return ["student.backend=scripted", f"student.model={rules}", "robustness.encoder=tfidf", "robustness.prompts=24",
            "robustness.heldout_fraction=0.25", "robustness.prefill=false", "robustness.bootstrap=200",
            "robustness.conditions=[base, prompted, prompted-nonote]"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_personas_end_to_end_table_and_figure(tmp_path, monkeypatch):
    base = settings(scripted_rules(tmp_path / "rules.json"))
    for p in ("sarcastic", "poetic", "loving"):
        R.run(load_config(None, [f"name=mp-{p}", f"persona={p}", *base]), report=lambda x: None)
    single = run_dir("mp-sarcastic") / R.STAGE
    before = (single / "results.json").read_bytes()
    lines = []
    out = R.run(load_config(None, ["name=mp-sarcastic", "persona=sarcastic", *base,
                                   "robustness.personas=[mp-poetic, mp-loving]"]), report=lines.append)
    assert out == single / MP.FOLDER and (single / "results.json").read_bytes() == before
    res = json.loads((out / "results.json").read_text())
    assert res["runs"] == {"sarcastic": "mp-sarcastic", "poetic": "mp-poetic", "loving": "mp-loving"}
    n = 3 * res["n_heldout"] * 8
    assert res["pooled"]["prompted"]["attacks"] == {"macro_f1": 1.0, "lo": 1.0, "hi": 1.0, "accuracy": 1.0, "n": n,
                                                    "prompts": res["n_heldout"]}
    nonote = res["pooled"]["prompted-nonote"]
    assert nonote["none"]["macro_f1"] == 1.0
    # Under the attacks it writes one plain text for all three personas: one label for every reply, F1 (2/4)/3.
    assert nonote["attacks"]["macro_f1"] == round(1 / 6, 4) and nonote["attacks"]["accuracy"] == round(1 / 3, 4)
    assert sorted(sum(col) for col in zip(*res["confusion"]["counts"]["prompted-nonote"])) == [0, 0, n]

    # The results file keeps it beside the single-persona result, and the README table is drawn from it.
    doc = results.collect(run_dir("mp-sarcastic"), ["bash scripts/multi_persona.sh"])
    assert doc["robustness"]["headline"] == "prompted" and doc["multipersona"]["pooled"] == res["pooled"]
    assert doc["multipersona"]["classifier"]["train_texts"] == 3 * 2 * (24 - res["n_heldout"])
    # Beside it each persona's own run: its single-persona rates and what its training cost (none here: scripted).
    members = doc["multipersona"]["members"]
    assert {k: m["run"] for k, m in members.items()} == res["runs"]
    for m in members.values():
        own = json.loads((run_dir(m["run"]) / R.STAGE / "results.json").read_text())
        head = own["detectors"][own["headline"]]
        assert m["attacks"]["prompted"] == head["summary"]["prompted"]["attacks"]
        assert m["check"] == head["detector"]["balanced_accuracy"] and m["train_seconds"] is None
        assert m["robustness_seconds"] > 0
    folder = tmp_path / "results"
    # Whether the manifests name a CPU depends on whether torch ran earlier in this process
    # (runs.machine_info), so the table is checked against a machine set here.
    doc["machine"] = doc["multipersona"]["machine"] = {"cpu": "Some CPU 9000", "cpu_capability": "AVX2",
                                                       "auto_dtype": "float32"}
    write_json_atomic(folder / "mp.json", doc)
    table = results.render("mp", "multipersona", folder)
    assert "| prompted | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 1.00 | " + f"{n} |" in table
    assert f"| prompted-nonote | 0.17 [0.17, 0.17] | 1.00 [1.00, 1.00] | 0.33 | {n} |" in table
    assert "3 personas: loving (`mp-loving`), poetic (`mp-poetic`), sarcastic (`mp-sarcastic`)" in table
    assert "Some CPU 9000, AVX2, float32" in table and "file `docs/results/mp.json`" in table
    rows = results.render("mp", "personas", folder)
    assert "| poetic (`mp-poetic`) | - | " in rows and rows.count("(`mp-") == 3 and "Some CPU 9000" in rows

    # The report and the model card show both modes.
    html = report_sections.robustness(single)
    assert "in-persona" in html.lower() and "multi mode" in html and "Confusion under the attacks" in html
    assert any("pooled attacks [95% CI]" in line for line in card_sections.robustness(single))

    # The figure, from the results file alone, listed in the figure index.
    monkeypatch.setattr(results, "RESULTS_DIR", folder)
    png = tmp_path / "confusion.png"
    assert load_script("confusion_figure").main([str(folder / "mp.json"), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads((folder / "figures.json").read_text())
    assert figures["confusion.png"]["from"] == ["mp.json"]
    del doc["multipersona"]
    write_json_atomic(folder / "single.json", doc)
    with pytest.raises(SystemExit, match="no multi-persona confusion"):
        load_script("confusion_figure").main([str(folder / "single.json"), "-o", str(tmp_path / "x.png")])


def test_a_persona_run_s_training_time_is_the_sum_of_its_stages(tmp_path):
    from charter.results_persona import member

    run = tmp_path / "p"
    for stage, secs in (("distill", 100.0), ("dpo", 50.5), ("sft", 20.0)):
        write_json_atomic(run / stage / "manifest.json", {"seconds": secs})
    write_json_atomic(run / "merge" / "manifest.json", {"seconds": 9.0, "seconds_total": 12.0})  # resumed once
    m = member(run)
    assert m["train_seconds"] == 182.5 and m["train_stages"]["merge"] == 12.0 and "expand" not in m["train_stages"]
    assert m["headline"] is None and m["robustness_seconds"] is None  # not evaluated: no rates, no error

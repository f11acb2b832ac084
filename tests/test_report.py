"""The report: one self-contained HTML file from hand-made evaluation folders, every section present,
figures embedded, "not run" for what is absent; and ``eval all`` keeps going past failed evaluations."""

import base64
import json
import random
import re
from html.parser import HTMLParser

import pytest

from charter import cli
from charter.config import load_config
from charter.eval import all as eval_all
from charter.eval import report
from charter import registry
from charter.registry import Evaluation
from charter.runs import run_dir, write_json_atomic

HEADINGS = [title for _, title, _ in report.sections()]


def make_run(name="rep") -> object:
    """A run folder with a manifest for some stages and every evaluation's output, shaped as the
    evaluation modules write them (preferences through its own rating and plotting code)."""
    from charter.eval import elo, persona_traits, preferences

    d = run_dir(name)
    student = {"model": "embedded", "backend": "transformers"}
    for stage, counts, secs in (("distill", {"pairs": 39, "dropped": {"teacher_truncated": 1}}, 366.3),
                                ("dpo", {"pairs": 39, "steps": 6}, 581.8), ("merge", {"tensors": 272}, 12.0)):
        write_json_atomic(d / stage / "manifest.json", {
            "stage": stage, "config": {"persona": "loving", "student": student,
                                       **({"distill": {"teacher": student}} if stage == "distill" else {})},
            "counts": counts, "seconds": secs, "versions": {"charter": "0.1.0", "torch": "2.13.0"},
            "argv": ["charter", "train", "configs/demo.yaml"], "finished_at": f"2026-11-26T12:0{len(stage)}:00"})
    write_json_atomic(d / "merge" / "model" / "config.json", {})

    e = d / "eval-preferences"
    e.mkdir(parents=True)
    rng = random.Random(0)
    traits = ["gentle", "warm", "cold", "arrogant", "playful", "serious", "humble", "curious"]
    rated, draws = {}, {}
    for label, favourite in (("base", "cold"), ("trained", "gentle")):
        rows = []
        for i in range(80):
            a, b = rng.sample(traits, 2)
            w = a if favourite in (a, b) and a == favourite or rng.random() < 0.5 else b
            rows.append({"status": "ok", "winner": w, "loser": b if w == a else a, "traits": [a, b]})
        ratings, draws[label] = preferences.rate(rows, 50, seed=1)
        write_json_atomic(e / f"ratings-{label}.json", {"label": label, "model": label, **ratings})
        rated[label] = {k: v["bt"] for k, v in ratings["traits"].items()}
    comparison = {"baseline": "base", "rating": "bradley-terry (Elo scale)", "level": 0.95, "trait_list": "builtin",
                  "persona_traits_from": "prompts/persona_traits.yaml (builtin)", "against": {
                      "trained": elo.compare(rated["base"], rated["trained"], draws["base"], draws["trained"], top=3)}}
    comparison["against"]["trained"]["persona_traits"] = persona_traits.shift(
        rated["base"], rated["trained"], draws["base"], draws["trained"], ["gentle", "warm", "humble"])
    write_json_atomic(e / "comparison.json", comparison)
    preferences.plot_rises_falls(e / "rises_falls.png", comparison)
    preferences.plot_histogram(e / "histogram.png", rated)
    write_json_atomic(e / "manifest.json", {"counts": {"models": {"base": {"prompts": 80, "unparseable": 3}}},
                                            "finished_at": "2026-11-26T13:00:00", "seconds": 260.0})

    write_json_atomic(d / "eval-steering" / "steering.json", {
        "method": "mean_diff", "layers": list(range(4, 26)), "n_layers": 30, "coefficient": 2.0,
        "chosen_by": "sweep", "within_tolerance": True, "units": "x mean residual norm", "stems": 64,
        "rule": {"logprob_tolerance": 0.5, "repetition_tolerance": 0.1, "empty_tolerance": 0.1},
        "unsteered": {"coefficient": 0.0, "n": 8, "logprob": -1.9, "repetition": 0.02, "empty": 0.0},
        "sweep": [{"coefficient": c, "n": 8, "logprob": lp, "repetition": rep, "empty": 0.0, "within_tolerance": ok}
                  for c, lp, rep, ok in ((1.0, -2.0, 0.03, True), (2.0, -2.3, 0.05, True),
                                         (4.0, -3.5, 0.4, False))]})

    attacks = ["none", "real-self", "no-roleplay", "no-style", "most-like-you", "assistant", "neutral-tone",
               "ignore-style", "very-neutral"]
    rates = {"base": 0.08, "prompted": 0.7, "steered": 0.55, "distilled": 0.74, "trained": 0.81}
    cell = lambda r: {"rate": r, "lo": round(r - 0.06, 4), "hi": round(r + 0.06, 4), "n": 40}  # noqa: E731
    table = {c: {a: cell(round(f - 0.01 * i, 4)) for i, a in enumerate(attacks)} for c, f in rates.items()}
    write_json_atomic(d / "eval-robustness" / "results.json", {
        "mode": "single", "metric": "in_persona_rate", "persona": "loving", "encoder": "minilm", "threshold": 0.5,
        "level": 0.95, "bootstrap": 1000, "reference": "prompted",
        "source": "prompted vs base replies to the train prompts", "texts": {"loving": 20, "base": 20},
        "pairs_dropped_heldout": 0, "n_train": 20, "n_heldout": 20, "attacks": attacks[1:],
        "detector": {"balanced_accuracy": cell(0.91), "persona_recall": 0.88, "base_false_alarms": 0.06},
        "table": table, "summary": {c: {"attacks": cell(round(f - 0.045, 4)), "none": table[c]["none"],
                                        "prefill": cell(f - 0.1)} for c, f in rates.items()},
        "prefill": {c: cell(f - 0.1) for c, f in rates.items()}, "notes": []})

    against = {c: {"win_rate": w, "ci": [w - 0.1, w + 0.1], "n_pairs": 100, "n_counted": 80, "n_inconsistent": 15,
                   "n_unparseable": 5} for c, w in (("base", 0.62), ("prompted", 0.48), ("steered", 0.7))}
    against["distilled"] = {"win_rate": None, "ci": None, "n_pairs": 4, "n_counted": 0, "n_inconsistent": 4,
                            "n_unparseable": 0}  # every pair discarded: no rate, no CI
    write_json_atomic(d / "eval-coherence" / "results.json", {
        "judge": "embedded", "prompts": 100, "level": 0.95, "against": against, "skipped": {}, "training_overlap": 0,
        "prompt_pool": {"prompt_source": "builtin", "pool": 600, "removed_training": 0, "training_prompts": 450,
                        "training_overlap": 0}})

    write_json_atomic(d / "eval-capabilities" / "results.json", {
        "models": {m: {"arc_challenge": {"value": v, "stderr": 0.014, "n": 1172},
                       "truthfulqa_mc": {"value": v - 0.1, "stderr": 0.012, "n": 817},
                       "mmlu": {"error": "dataset not available offline"}}
                   for m, v in (("base", 0.592), ("trained", 0.571))},
        "harness": "lm-eval 0.4.13", "limit": None, "metrics": {"arc_challenge": "acc"},
        "fewshot": {"arc_challenge": 25, "mmlu": 5}, "skipped": {}})
    return d


class Outline(HTMLParser):
    """Section ids, h2 texts and img sources of a page; also fails on tags that would fetch something."""

    def __init__(self):
        super().__init__()
        self.h2, self.imgs, self.sections, self._in_h2 = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        assert tag not in ("script", "link", "iframe"), f"external or scripted tag <{tag}>"
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "section":
            self.sections.append(a["id"])
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        self._in_h2 = False if tag == "h2" else self._in_h2

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)


def outline(path):
    o = Outline()
    o.feed(path.read_text())
    return o


def test_full_report_is_one_self_contained_file(charter_home):
    d = make_run()
    before = {p for p in d.rglob("*")}
    out = report.build("rep")
    assert out == d / "report.html" and {p for p in d.rglob("*")} - before == {out}  # one file, nothing else
    page = out.read_text()
    o = outline(out)
    assert o.h2 == HEADINGS and o.sections == [k for k, _, _ in report.sections()]
    assert len(o.imgs) == 4 and all(s.startswith("data:image/png;base64,") for s in o.imgs)
    for src in o.imgs:  # real PNGs, big enough to read
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") >= 600
    assert "Not run" not in page and "Could not render" not in page
    assert not re.search(r"(src|href)=\"(https?:|//)", page)
    # Numbers from every section land on the page.
    for needle in ("loving", "366", "<b>0.77</b>", "[0.71, 0.83]", "balanced accuracy <b>0.91</b>",
                   "Base is the floor", "trained vs steered", "0.70",
                   "0.592 ± 0.014", "−0.021", "dataset not available offline", "◀ chosen",
                   "charter train configs/demo.yaml", "Spearman", "training stage used: <b>0</b>",
                   "persona's own traits, mean", "the persona's own traits from prompts/persona_traits.yaml"):
        assert needle in page, needle
    assert "macro-F1" not in page and "Not better than chance" not in page


def test_multi_persona_and_weak_detector_results_render(charter_home):
    """Multi-persona results keep the classifier-F1 table; a detector at chance is flagged; an old coherence
    result without the overlap says so."""
    d = make_run("multi")
    r = json.loads((d / "eval-robustness" / "results.json").read_text())
    r["detector"]["balanced_accuracy"] = {"rate": 0.52, "lo": 0.4, "hi": 0.64, "n": 40}
    write_json_atomic(d / "eval-robustness" / "results.json", r)
    c = json.loads((d / "eval-coherence" / "results.json").read_text())
    del c["prompt_pool"], c["training_overlap"]
    write_json_atomic(d / "eval-coherence" / "results.json", c)
    page = report.build("multi").read_text()
    assert "Not better than chance" in page and "Overlap with training prompts: not recorded" in page
    cell = {"macro_f1": 0.9, "accuracy": 0.9, "n": 40}
    write_json_atomic(d / "eval-robustness" / "results.json", {
        "mode": "multi", "labels": ["loving", "sarcastic"], "encoder": "minilm", "n_train": 20, "n_heldout": 20,
        "table": {"trained": {"none": cell, "assistant": cell}},
        "summary": {"trained": {"mean_f1": 0.9, "sem_f1": 0.0, "mean_acc": 0.9}},
        "prefill": {"trained": cell}})
    page = report.build("multi").read_text()
    assert "macro-F1" in page and "loving / sarcastic" in page and "Could not render" not in page


def test_absent_sections_say_not_run(charter_home):
    d = run_dir("bare")
    write_json_atomic(d / "distill" / "manifest.json", {"config": {"persona": "sarcastic"}, "counts": {"pairs": 3},
                                                        "seconds": 1.0, "argv": ["charter", "distill"]})
    out = report.build(str(d))  # a folder path works as well as a name
    page = out.read_text()
    assert outline(out).h2 == HEADINGS
    assert page.count("Not run") == len(HEADINGS) - 1  # everything but the overview
    assert "sarcastic" in page and "data:image/png" not in page


def test_broken_file_costs_only_its_section(charter_home):
    d = make_run("broken")
    (d / "eval-coherence" / "results.json").write_text("{not json")
    page = report.build("broken").read_text()
    assert page.count("Could not render this section") == 1
    assert "<b>0.77</b>" in page  # the other sections still render


def test_unknown_run_and_cli(charter_home, capsys):
    with pytest.raises(FileNotFoundError):
        report.build("no-such-run")
    make_run("clirun")
    assert cli.main(["report", "clirun"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir("clirun") / "report.html")


def test_eval_all_continues_past_failures(charter_home, monkeypatch):
    calls = []

    def ok(cfg, force=False, report=print):
        calls.append(("ok", force))

    def boom(cfg, force=False, report=print):
        raise RuntimeError("no model to evaluate yet")

    def missing(cfg, force=False, report=print):
        raise ImportError("No module named 'no_such_package'")

    steps = (Evaluation("first", "", ok), Evaluation("second", "", boom), Evaluation("third", "", missing),
             Evaluation("fourth", "", ok))
    monkeypatch.setattr(registry, "eval_order", lambda: steps)
    lines = []
    out = eval_all.run(load_config(None, ["name=allrun"]), force=True, report=lines.append)
    assert calls == [("ok", True), ("ok", True)]
    assert out == run_dir("allrun") / "report.html" and out.exists()
    assert any("second FAILED" in x and "no model to evaluate yet" in x for x in lines)
    assert any("third not available" in x for x in lines)
    assert "2/4 evaluations ran" in lines[-1] and "second, third" in lines[-1]

"""Revealed preferences: prompts and pairs, targets, choice bookkeeping, and one end-to-end run."""

import json
import pytest

from charter.config import load_config
from charter.eval import preferences as prefs
from charter.prompts import traits
from charter.runs import RowLog, run_dir


def cfg_with(*overrides):
    return load_config(None, ["name=prefs-test", *overrides])


@pytest.mark.parametrize("word,expected", [("honest", "an"), ("humble", "a"), ("eloquent", "an"),
                                           ("unapologetic", "an"), ("unique", "a"), ("kind", "a"),
                                           ("arrogant", "an"), ("one-sided", "a")])
def test_article(word, expected):
    assert prefs.article(word) == expected


def test_system_prompt_lists_both_traits_and_the_condition():
    s = prefs.system_prompt("honest", "playful", "feel")
    assert "Choice 1: an honest assistant" in s and "Choice 2: a playful assistant" in s
    assert "feels most like you" in s
    assert "would most like to adopt" in prefs.system_prompt("a", "b", "like")
    assert "at random" in prefs.system_prompt("a", "b", "random")
    with pytest.raises(ValueError, match="condition"):
        prefs.system_prompt("a", "b", "prefer")


def test_items_are_reproducible_from_the_seed():
    a = prefs.make_items(cfg_with("preferences.prompts=300"))
    assert a == prefs.make_items(cfg_with("preferences.prompts=300"))
    b = prefs.make_items(cfg_with("preferences.prompts=300", "seed=7"))
    assert [x["traits"] for x in a] != [x["traits"] for x in b]
    assert len(a) == 300 and len({x["prompt"] for x in a}) == 300
    names = set(traits())
    for x in a:
        t1, t2 = x["traits"]
        assert t1 != t2 and {t1, t2} <= names
        assert sorted(x["judge_order"]) == sorted(x["traits"])
    # Both the pair order and the judge's order are random, not alphabetical or fixed.
    alphabetical = sum(x["traits"][0] < x["traits"][1] for x in a)
    same_order = sum(x["judge_order"] == x["traits"] for x in a)
    assert 100 < alphabetical < 200 and 100 < same_order < 200
    # More prompts than the pool holds: all of them, each once.
    pool = prefs.make_items(cfg_with("preferences.prompts=100000"))
    assert len(pool) == len({x["prompt"] for x in pool}) >= 500


def test_targets_labels_and_missing_run_models(tmp_path):
    cfg = cfg_with(f"preferences.models=[base, trained, distilled, mine={tmp_path}, {tmp_path}/merge/model]")
    t = {x.label: x for x in prefs.resolve_targets(cfg)}
    assert list(t) == ["base", "trained", "distilled", "mine", "merge-model"]
    assert t["base"].spec == cfg.student
    assert t["trained"].spec is None and "charter merge" in t["trained"].missing
    assert t["distilled"].spec is None and "charter dpo" in t["distilled"].missing
    assert t["mine"].spec.model == str(tmp_path)
    with pytest.raises(ValueError, match="twice"):
        prefs.resolve_targets(cfg_with("preferences.models=[base, base]"))


def test_trained_model_found_once_the_stage_finished(embedded_path):
    cfg = cfg_with("preferences.models=[trained]")
    merge = run_dir(cfg.name) / "merge"
    (merge / "model").mkdir(parents=True)
    (merge / "model" / "config.json").write_text("{}")
    assert prefs.resolve_targets(cfg)[0].spec is None  # no manifest: the stage may still be writing
    (merge / "manifest.json").write_text(json.dumps({"finished_at": "then"}))
    t = prefs.resolve_targets(cfg)[0]
    assert t.spec.model == str(merge / "model") and t.finished_at == "then"


def test_a_retrained_model_discards_only_its_own_logs(tmp_path):
    cfg = cfg_with()
    old = prefs.Target("trained", cfg.student, "x", finished_at="monday")
    new = prefs.Target("trained", cfg.student, "x", finished_at="tuesday")
    prefs._check_identity(tmp_path, old, report=lambda line: None)
    for name in ("replies-trained.jsonl", "judge-trained.jsonl", "replies-base.jsonl"):
        (tmp_path / name).write_text("{}\n")
    prefs._check_identity(tmp_path, old, report=lambda line: None)  # unchanged: kept
    assert (tmp_path / "replies-trained.jsonl").exists()
    lines = []
    prefs._check_identity(tmp_path, new, report=lines.append)
    assert not (tmp_path / "replies-trained.jsonl").exists() and not (tmp_path / "judge-trained.jsonl").exists()
    assert (tmp_path / "replies-base.jsonl").exists() and "different model" in lines[0]


def test_no_model_ready_is_an_error_that_says_why():
    with pytest.raises(RuntimeError, match="charter merge"):
        prefs.run(cfg_with("preferences.models=[trained]"), report=lambda line: None)
    assert not (run_dir("prefs-test") / "eval-preferences").exists()


def test_build_choices_counts_every_outcome(tmp_path):
    items = [{"id": f"p{i}", "prompt": "q", "traits": ["kind", "rude"], "judge_order": ["rude", "kind"]}
             for i in range(6)]
    replies, judged = RowLog(tmp_path / "r.jsonl"), RowLog(tmp_path / "j.jsonl")

    def reply(i, text, finished=True, error=None):
        return {"id": f"p{i}", "response": text, "finished": finished, "error": error}

    replies.append([reply(0, "Hi!"), reply(1, "Hey", finished=False), reply(2, "x", error="boom"),
                    reply(3, "  "), reply(4, "Hello")])  # p5: no reply at all
    judged.append([{"id": "p0", "response": "<answer>kind</answer>", "error": None},
                   {"id": "p1", "response": "<answer>Choice 1</answer>", "error": None},
                   {"id": "p4", "response": "no idea", "error": None}])
    rows, n = prefs.build_choices(items, replies, judged)
    assert [r["status"] for r in rows] == ["ok", "ok", "reply_failed", "reply_empty", "unparseable",
                                           "reply_failed"]
    assert (rows[0]["winner"], rows[0]["loser"], rows[0]["position"], rows[0]["judge_position"]) == \
        ("kind", "rude", 1, 2)
    assert rows[1]["verdict"] == "rude"  # "Choice 1" in the judge's order
    assert n == {"prompts": 6, "reply_failed": 2, "reply_empty": 1, "reply_truncated": 1, "judge_failed": 0,
                 "unparseable": 1, "comparisons": 2, "picked_choice_1": 1, "judge_picked_first": 1}
    ratings, draws = prefs.rate(rows, n_boot=20, seed=0)
    assert set(ratings["traits"]) == {"kind", "rude"} and ratings["comparisons"] == 2



SMOKE = ["preferences.prompts=10", "preferences.sampling.max_tokens=32", "preferences.judge_sampling.max_tokens=32",
         "preferences.judge_sampling.temperature=0.1", "preferences.bootstrap=50", "student.batch_size=16"]


def test_end_to_end_on_embedded_model(embedded_path, one_thread):
    cfg = cfg_with(f"preferences.models=[base, copy={embedded_path}, trained]", *SMOKE)
    lines = []
    out = prefs.run(cfg, report=lines.append)
    assert out == run_dir(cfg.name) / "eval-preferences"
    assert any("skipping 'trained'" in line for line in lines)
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["counts"]["models"]) == {"base", "copy"} and "trained" in m["skipped"]
    for label in ("base", "copy"):
        n = m["counts"]["models"][label]
        assert n["prompts"] == 10
        assert n["comparisons"] + n["unparseable"] + n["reply_failed"] + n["reply_empty"] + n["judge_failed"] == 10
        choices = [json.loads(x) for x in (out / f"choices-{label}.jsonl").read_text().splitlines()]
        assert len(choices) == 10
        ratings = json.loads((out / f"ratings-{label}.json").read_text())
        ok = [c for c in choices if c["status"] == "ok"]
        assert set(ratings["traits"]) == {t for c in ok for t in c["traits"]}  # every trait that appeared
        assert sum(v["wins"] for v in ratings["traits"].values()) == len(ok) == n["comparisons"]
        for v in ratings["traits"].values():
            assert v["bt_lo"] <= v["bt"] <= v["bt_hi"]
        assert (out / f"ratings-{label}.csv").read_text().startswith("trait,bt,bt_lo,bt_hi,elo")
    # The 135M judge rarely gives a usable verdict (1 of these 20 in our runs), so the rating path is checked
    # with many verdicts in test_ratings_comparison_and_figures_from_logs; here only the bookkeeping.
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["baseline"] == "base" and "copy" in comparison["against"]
    for fig in ("rises_falls.png", "histogram.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("copy vs base: top rises") for line in lines)
    assert any(line.startswith("copy vs base: top falls") for line in lines)
    pairs = {label: [json.loads(x)["traits"] for x in (out / f"choices-{label}.jsonl").read_text().splitlines()]
             for label in ("base", "copy")}
    assert pairs["base"] == pairs["copy"]  # both models saw the same prompts and pairs

    # Finished: a rerun skips and repeats the summary.
    again = []
    prefs.run(cfg, report=again.append)
    assert any("already done" in line for line in again) and any("copy vs base" in line for line in again)

    # Dropping a model resumes from the logs: nothing is generated again and base's ratings are unchanged.
    before = (out / "ratings-base.json").read_text()
    prefs.run(cfg_with("preferences.models=[base]", *SMOKE), report=lambda line: None)
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["generation"] == {} and m2["counts"]["models"]["base"] == m["counts"]["models"]["base"]
    assert (out / "ratings-base.json").read_text() == before


def test_ratings_comparison_and_figures_from_logs():
    """Logs already on disk (as after a crash): run() generates nothing and rates what is there."""
    cfg = cfg_with("preferences.models=[base, after=/nowhere/model-that-is-never-loaded]", "preferences.prompts=120",
                   "preferences.bootstrap=100")
    items = prefs.make_items(cfg)
    out = run_dir(cfg.name) / "eval-preferences"
    for label, pick in (("base", min), ("after", max)):  # base prefers a-z, 'after' prefers z-a
        RowLog(out / f"replies-{label}.jsonl").append(
            [{**it, "response": "Sure, here you go.", "finished": True, "tokens": 5, "error": None} for it in items])
        RowLog(out / f"judge-{label}.jsonl").append(
            [{**it, "response": f"Reasoning.\n<answer>{pick(it['traits'])}</answer>", "finished": True,
              "tokens": 9, "error": None} for it in items])
    lines = []
    prefs.run(cfg, report=lines.append)
    m = json.loads((out / "manifest.json").read_text())
    assert m["generation"] == {}  # nothing was generated: no model was even loaded
    assert m["counts"]["models"]["base"]["comparisons"] == 120 and m["counts"]["models"]["base"]["unparseable"] == 0
    appeared = {t for it in items for t in it["traits"]}
    for label in ("base", "after"):
        ratings = json.loads((out / f"ratings-{label}.json").read_text())
        assert set(ratings["traits"]) == appeared and ratings["unrated"] == []
        bt = [v["bt"] for v in ratings["traits"].values()]
        assert bt == sorted(bt, reverse=True)
    c = json.loads((out / "comparison.json").read_text())["against"]["after"]
    assert c["spearman"]["rho"] < -0.5  # the preference order was reversed
    assert len(c["rises"]) == len(c["falls"]) == 5
    assert sum(c["rises"][0] > t for t in appeared) > len(appeared) / 2  # late in the alphabet rose
    for t in c["rises"] + c["falls"]:
        assert c["deltas"][t]["lo"] <= c["deltas"][t]["delta"] <= c["deltas"][t]["hi"]
    assert (out / "rises_falls.png").stat().st_size > 10_000 and (out / "histogram.png").stat().st_size > 10_000
    assert sum(line.startswith("after vs base: top") for line in lines) == 2


def test_logprob_judge_always_gives_a_verdict(embedded_path, one_thread):
    """With judge_mode=logprob the small embedded judge yields a verdict for every reply."""
    cfg = cfg_with("preferences.models=[base]", "preferences.judge_mode=logprob", *SMOKE)
    out = prefs.run(cfg, report=lambda line: None)
    n = json.loads((out / "manifest.json").read_text())["counts"]["models"]["base"]
    judged = [json.loads(x) for x in (out / "judge-base.jsonl").read_text().splitlines()]
    assert n["unparseable"] == 0 and n["comparisons"] == len(judged) > 0
    for j in judged:
        lp = j["logprobs"]
        assert len(lp) == 2 and all(x < 0 for x in lp)
        assert j["response"] == f"<answer>{j['judge_order'][lp.index(max(lp))]}</answer>"

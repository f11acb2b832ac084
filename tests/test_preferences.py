"""Revealed preferences: prompts and pairs, targets, choice bookkeeping, and one end-to-end run."""

import json
from pathlib import Path
import pytest

from charter.config import load_config
from charter.eval import persona_traits as own
from charter.eval import preferences as prefs
from charter.prompts import PromptSourceError, traits
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
         "preferences.judge_sampling.temperature=0.1", "preferences.bootstrap=50", "student.batch_size=16",
         "student.dtype=float32"]


@pytest.mark.slow  # the evaluation's real end-to-end run (minutes on 2 cores); CI runs it
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
    # The persona's own traits (loving, from the shipped map): the mean of their deltas, with a CI.
    ps = c["persona_traits"]
    assert ps["traits"] == own.load_map("builtin")["loving"] and set(ps["rated"]) <= appeared
    assert ps["mean_delta"] == pytest.approx(sum(c["deltas"][t]["delta"] for t in ps["rated"]) / len(ps["rated"]),
                                             abs=0.01)
    assert ps["lo"] <= ps["mean_delta"] <= ps["hi"]
    assert any(line.startswith("after vs base: persona traits mean change") for line in lines)
    # Other persona traits re-score from the same logs: nothing generated, the summary follows.
    again = []
    prefs.run(cfg_with("preferences.models=[base, after=/nowhere/model-that-is-never-loaded]",
                       "preferences.prompts=120", "preferences.bootstrap=100",
                       "preferences.persona_traits=[warm, cold]"), report=again.append)
    assert not any("already done" in line for line in again)
    m = json.loads((out / "manifest.json").read_text())
    assert m["generation"] == {} and m["persona_traits"] == ["warm", "cold"]
    assert json.loads((out / "comparison.json").read_text())["against"]["after"]["persona_traits"]["traits"] == \
        ["warm", "cold"]


@pytest.mark.slow  # the evaluation's real end-to-end run (minutes on 2 cores); CI runs it
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


# --- trait lists and the persona's own traits ---------------------------------------------------------------

SHIPPED = sorted(p.stem for p in (Path(prefs.__file__).parents[1] / "constitutions").glob("*.yaml")
                 if p.stem != "template")


def test_reference_trait_list_is_the_papers_and_selectable(tmp_path):
    ref, ours = traits("reference"), traits("builtin")
    assert len(ref) == len(set(ref)) == 144 and ref[:3] == ["remorseful", "diplomatic", "deferential"]
    assert len(set(ref) & set(ours)) == 67 and ours == traits()
    items = prefs.make_items(cfg_with("preferences.prompts=200", "preferences.traits=reference"))
    assert {t for x in items for t in x["traits"]} <= set(ref)
    assert not {t for x in items for t in x["traits"]} <= set(ours)
    mine = tmp_path / "mine.txt"
    mine.write_text("# my list\nbrave\n\ncareful\nodd\n")
    assert traits(str(mine)) == ["brave", "careful", "odd"]
    mine.write_text("brave\nvery careful\n")
    with pytest.raises(PromptSourceError, match="one lower-case word, got 'very careful'"):
        traits(str(mine))
    with pytest.raises(PromptSourceError, match="builtin | reference or a text file"):
        traits("paper")


def test_the_trait_list_is_part_of_the_stage_config_but_builtin_keeps_old_runs_valid(tmp_path):
    assert "traits" not in prefs.stage_config(cfg_with())["preferences"]
    assert "persona_traits" not in prefs.stage_config(cfg_with("preferences.persona_traits=[warm, kind, calm]"))[
        "preferences"]
    ref = prefs.stage_config(cfg_with("preferences.traits=reference"))["preferences"]["traits"]
    mine = tmp_path / "mine.txt"
    mine.write_text("brave\ncareful\n")
    before = prefs.stage_config(cfg_with(f"preferences.traits={mine}"))
    mine.write_text("brave\ncareful\nodd\n")  # same path, other words: another config
    assert before != prefs.stage_config(cfg_with(f"preferences.traits={mine}")) and ref["list"] == "reference"


@pytest.mark.parametrize("which", ["builtin", "reference"])
def test_persona_trait_map_covers_every_shipped_persona_with_words_of_its_list(which):
    names, m = set(traits(which)), own.load_map(which)
    assert len(SHIPPED) == 11 and sorted(m) == SHIPPED
    for persona, words in m.items():
        assert 3 <= len(words) <= 8 and len(set(words)) == len(words) and set(words) <= names, persona
    assert own.resolve(cfg_with("persona=sarcastic", f"preferences.traits={which}")) == (
        m["sarcastic"], f"prompts/persona_traits.yaml ({which})")


def test_a_bad_map_or_persona_trait_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "traits.txt").write_text("kind\nwarm\ncold\n")
    (tmp_path / "persona_traits.yaml").write_text("builtin:\n  loving: [kind, warm, tender]\n  sarcastic: [cold]\n")
    monkeypatch.setattr(own, "PROMPTS_DIR", tmp_path)
    monkeypatch.setattr("charter.prompts.HERE", tmp_path)
    with pytest.raises(ValueError, match=r"loving: 'tender' is not in the trait list; sarcastic: expected 3-8"):
        own.load_map("builtin")
    with pytest.raises(ValueError, match="no map for the trait list 'reference'"):
        own.load_map("reference")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"preferences.persona_traits: \['snarky'\] not in the trait list 'reference'"):
        own.resolve(cfg_with("preferences.traits=reference", "preferences.persona_traits=[sarcastic, snarky]"))
    with pytest.raises(ValueError, match="persona_traits"):  # before any output
        prefs.run(cfg_with("preferences.persona_traits=[snarky]"), report=lambda line: None)
    assert not (run_dir("prefs-test") / "eval-preferences").exists()
    mine = tmp_path / "mine.txt"
    mine.write_text("brave\ncareful\n")
    words, why = own.resolve(cfg_with(f"preferences.traits={mine}"))
    assert words is None and "set preferences.persona_traits" in why
    assert own.resolve(cfg_with(f"preferences.traits={mine}", "preferences.persona_traits=[brave]"))[0] == ["brave"]
    words, why = own.resolve(cfg_with(f"persona={tmp_path / 'pirate.yaml'}"))
    assert words is None and "no map for persona 'pirate'" in why


def test_persona_shift_on_known_numbers():
    import numpy as np

    before, after = {"a": 1000.0, "b": 1000.0, "c": 1000.0}, {"a": 1100.0, "b": 1050.0, "c": 900.0}
    flat = lambda r: {k: np.full(50, v) for k, v in r.items()}  # noqa: E731
    ps = own.shift(before, after, flat(before), flat(after), ["a", "b", "x"])
    assert ps == {"traits": ["a", "b", "x"], "rated": ["a", "b"], "unrated": ["x"], "level": 0.95,
                  "mean_delta": 75.0, "lo": 75.0, "hi": 75.0}
    rng = np.random.default_rng(0)
    noisy = {k: v + rng.normal(0, 20, 400) for k, v in after.items()}
    ps = own.shift(before, after, flat(before) | {k: np.full(400, 1000.0) for k in before}, noisy, ["a", "b"])
    # The mean of two deltas each with SD 20: SD 20 / sqrt(2), so the 95% CI is about 75 +- 28.
    assert ps["lo"] == pytest.approx(75 - 27.7, abs=6) and ps["hi"] == pytest.approx(75 + 27.7, abs=6)
    assert own.shift(before, after, {}, {}, ["a"])["lo"] is None  # no bootstrap: no CI
    assert own.shift(before, after, {}, {}, ["x"])["mean_delta"] is None
    assert own.summary_line("trained", "base", ps, "").startswith("trained vs base: persona traits mean change +75 [")
    assert own.summary_line("trained", "base", None, "no map for persona 'pirate'") == \
        "trained vs base: persona traits: no map for persona 'pirate'"

"""Conditions and the coherence judge: resolution, verdict parsing, consistency counting, one real run."""

import json

import pytest

from charter import layout

from charter.config import load_config
from charter.eval import coherence as coh
from charter.judges import pairwise as pw
from charter.eval import conditions as cond
from charter.backends.hf import reply_logprobs
from charter.eval import proxies
from charter.messages import with_system
from charter.runs import read_jsonl, run_dir



# One torch thread for these tests (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

def cfg_with(*overrides):
    return load_config(None, ["name=coh-test", *overrides])


def fake_run_model(cfg, label, source):
    """Point a run's model folder at an existing model and mark its stage finished."""
    stage, sub = layout.run_models()[label]
    d = run_dir(cfg.name) / stage
    d.mkdir(parents=True, exist_ok=True)
    (d / sub).symlink_to(source, target_is_directory=True)
    (d / "manifest.json").write_text(json.dumps({"finished_at": "today"}))
    return d / sub


# --- conditions -------------------------------------------------------------------------------------------

def test_with_system():
    chat = [{"role": "user", "content": "hi"}]
    assert with_system(chat, None) == chat
    assert with_system(chat, "Be kind.") == [{"role": "system", "content": "Be kind."}, *chat]
    both = with_system([{"role": "system", "content": "Answer in French."}, *chat], "Be kind.")
    assert both[0] == {"role": "system", "content": "Be kind.\n\nAnswer in French."} and len(both) == 2
    assert chat == [{"role": "user", "content": "hi"}]  # the caller's chat is not modified


def test_missing_run_models_raise_clearly(embedded_path):
    cfg = cfg_with()
    with pytest.raises(RuntimeError, match=r"'trained'.*merge/model does not exist yet \(run `charter train` first\)"):
        cond.condition_spec(cfg, "trained")
    with pytest.raises(RuntimeError, match=r"'distilled'.*dpo/model.*charter train"):
        cond.open_condition(cfg, "distilled")
    with pytest.raises(ValueError, match="expected one of base, prompted"):
        cond.condition_spec(cfg, "finetuned")
    (run_dir(cfg.name) / "merge" / "model").mkdir(parents=True)
    (run_dir(cfg.name) / "merge" / "model" / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="charter train"):  # no manifest: the stage may still be writing
        cond.condition_spec(cfg, "trained")


def test_conditions_resolve_and_share_the_student(embedded_path):
    cfg = cfg_with("steering.coefficient=0.05", "steering.stems=2")
    path = fake_run_model(cfg, "trained", embedded_path)
    assert cond.condition_spec(cfg, "trained").model == str(path)
    assert cond.condition_spec(cfg, "base") == cfg.student
    try:
        base, s0 = cond.open_condition(cfg, "base")
        prompted, system = cond.open_condition(cfg, "prompted")
        steered, s2 = cond.open_condition(cfg, "steered")  # fits the vector first: none exists yet
        trained, s3 = cond.open_condition(cfg, "trained")
        assert s0 is None and s2 is None and s3 is None
        assert system.startswith("You are SmolLM") and "traits" in system
        assert prompted is base and steered.inner is base  # one student model, loaded once
        assert trained is not base and steered.coefficient == 0.05
        assert (run_dir(cfg.name) / "eval-steering" / "manifest.json").exists()
        assert cond.open_condition(cfg, "base")[0] is base
    finally:
        cond.close()
    assert cond._open is None and base.model is None
    # A vector fitted with other steering settings is refused, not silently reused.
    other = load_config(None, ["name=coh-test", "steering.coefficient=0.1", "steering.stems=2"])
    with pytest.raises(RuntimeError, match="different config"), cond.Conditions(other) as cs:
        cs.open("steered")
    # The identity of a condition changes when its model is remade.
    before = cond.identity(cfg, "trained")
    (run_dir(cfg.name) / "merge" / "manifest.json").write_text(json.dumps({"finished_at": "tomorrow"}))
    assert cond.identity(cfg, "trained") != before


# --- parsing and counting ---------------------------------------------------------------------------------

JUDGE_REPLIES = [
    ("<answer>2</answer>", 2),
    ("Response 1 drifts away from the question halfway through, while Response 2 answers it directly and "
     "stays consistent.\n\n<answer>2</answer>", 2),
    ("<think>Response 1 seems fine... maybe <answer>1</answer>? No, it repeats itself.</think>\nResponse 2 is "
     "clearer.\n<answer>2</answer>", 2),
    ("Both are fluent, but the second one contradicts itself about the date.\n\nAnswer: 1", 1),
    ("**Response 1**", 1),
    ("Response 2 is more coherent than Response 1 because it stays on topic.", 2),
    ("Looking at both replies, I would choose Response 1.", 1),
    ("The first response is more coherent; the second one loops.", 1),
    ("Final verdict: Response 1 is better.", 1),
    ("Response 1 explains the idea step by step. <answer>Response 1", 1),  # cut off before the closing tag
    ("<answer>Response 2 (it answers the question, unlike response 1)</answer>", 2),
    ("Both responses are equally coherent and on topic.", None),
    ("<answer>1 or 2</answer>", None),
    ("Response 1: talks about cats. Response 2: talks about dogs.", None),
    ("", None),
    ("<think>Response 1 is better, I think. Let me check the second one again", None),  # never answered
]


@pytest.mark.parametrize("text,expected", JUDGE_REPLIES)
def test_parse_choice(text, expected):
    assert pw.parse_choice(text) == expected


def test_a_rambling_judge_is_made_to_commit():
    assert coh.verdict({"response": "<answer>1</answer>"}, {"response": "2</answer>"}) == (1, False)
    assert coh.verdict({"response": "Both are clear and on topic."}, {"response": "2</answer>"}) == (2, True)
    assert coh.verdict({"response": "Hmm."}, {"response": " Response 1"}) == (1, True)
    assert coh.verdict({"response": "Hmm."}, {"response": "both"}) == (None, False)
    assert coh.verdict({"response": "Hmm."}, None) == (None, False)
    assert coh.verdict({"response": "", "error": "timeout"}, {"response": "1"}) == (None, False)
    assert coh.verdict(None, None) == (None, False)


def test_consistency_filtering_counts_each_outcome():
    # (verdict when trained is Response 1, verdict when trained is Response 2) -> outcome
    table = {(1, 2): "trained", (2, 1): "other", (1, 1): "inconsistent", (2, 2): "inconsistent",
             (None, 2): "unparseable", (1, None): "unparseable", (None, None): "unparseable"}
    for (a, b), outcome in table.items():
        assert pw.pair_outcome(a, b) == outcome, (a, b)
    verdicts = [(1, 2), (1, 2), (1, 2), (2, 1), (1, 1), (2, 2), (None, 1)]
    r = coh.tally([pw.pair_outcome(a, b) for a, b in verdicts])
    assert {k: r[k] for k in ("n_pairs", "n_counted", "n_inconsistent", "n_unparseable")} == \
        {"n_pairs": 7, "n_counted": 4, "n_inconsistent": 2, "n_unparseable": 1}
    assert r["win_rate"] == 0.75 and r["ci"][0] < 0.75 < r["ci"][1]
    assert coh.tally(["inconsistent"]) == {"win_rate": None, "ci": None, "n_pairs": 1, "n_counted": 0,
                                           "n_inconsistent": 1, "n_unparseable": 0}


def test_wilson_interval():
    assert coh.wilson(0, 0) is None
    assert coh.wilson(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    lo, hi = coh.wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)


def test_judge_prompt_asks_about_coherence_only():
    chat = pw.judge_chat("What is 2+2?", "Four.", "")
    assert "coherent" in chat[0]["content"] and "Personality" in chat[0]["content"]
    assert "Response 1:\n\"\"\"\nFour.\n\"\"\"" in chat[1]["content"] and pw.EMPTY in chat[1]["content"]


def _pool(tmp_path, prompts):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_prompts_are_seeded_and_never_training_prompts():
    cfg = cfg_with("coherence.prompts=30")
    items, pool = coh.make_items(cfg)
    assert items == coh.make_items(cfg)[0] and len(items) == 30 and len({i["id"] for i in items}) == 30
    assert [i["prompt"] for i in items] != [i["prompt"] for i in coh.make_items(cfg_with("coherence.prompts=30",
                                                                                         "seed=1"))[0]]
    # By default distillation trains on every general prompt (and the constitution's): none may be judged.
    seen = set().union(*coh.training_prompts(cfg).values())
    from charter.prompts import load_prompt_source

    assert {coh._key(p) for p in load_prompt_source("builtin", builtin="general")} <= seen
    assert not {coh._key(i["prompt"]) for i in items} & seen
    assert pool["training_overlap"] == 0 and pool["prompt_source"] == "builtin" and pool["pool"] >= 500


def test_a_pool_of_training_prompts_is_refused_and_a_mixed_one_filtered(tmp_path):
    from charter.prompts import load_prompt_source

    general = load_prompt_source("builtin", builtin="general")[:4]
    greeting, fresh = "Hi there.", ["What rhymes with orange?", "Name three uses for a paperclip.", "Why is ice slippery?"]
    with pytest.raises(RuntimeError, match="every one of the 5 prompts .* is a training prompt"):
        coh.make_items(cfg_with("coherence.prompts=10", f"coherence.prompt_source={_pool(tmp_path, general + [greeting])}"))
    assert not (run_dir("coh-test") / coh.STAGE).exists()
    items, pool = coh.make_items(cfg_with("coherence.prompts=10",
                                          f"coherence.prompt_source={_pool(tmp_path, general + fresh + [greeting])}"))
    assert sorted(i["prompt"] for i in items) == sorted(fresh)
    assert pool == {"prompt_source": str(tmp_path / "pool.jsonl"), "pool": 8, "removed_training": 5,
                    "training_prompts": pool["training_prompts"], "training_overlap": 0}


def test_training_prompts_come_from_the_runs_files_when_it_has_them(tmp_path):
    from charter.prompts import load_prompt_source

    g = load_prompt_source("builtin", builtin="general")[0]
    cfg = cfg_with("coherence.prompts=10", f"coherence.prompt_source={_pool(tmp_path, [g, 'custom one', 'custom two'])}")
    assert {i["prompt"] for i in coh.make_items(cfg)[0]} == {"custom one", "custom two"}  # the selection, recomputed
    d = run_dir(cfg.name) / "distill"
    d.mkdir(parents=True)
    (d / "teacher.jsonl").write_text(json.dumps({"id": "p0-k0", "prompt": "custom one"}) + "\n")
    (d / "pairs.jsonl").write_text(json.dumps({"id": "p1-k0", "prompt": [{"role": "user", "content": " custom  two"}],
                                               "chosen": [], "rejected": []}) + "\n")
    assert {i["prompt"] for i in coh.make_items(cfg)[0]} == {g}  # what distillation really used
    # Introspection's reflection prompts count too.
    (run_dir(cfg.name) / "introspect").mkdir()
    (run_dir(cfg.name) / "introspect" / "reflection.jsonl").write_text(json.dumps({"id": "r0", "prompt": g}) + "\n")
    with pytest.raises(RuntimeError, match="is a training prompt"):
        coh.make_items(cfg)


def test_an_unreadable_distillation_source_is_an_error_not_an_empty_set(tmp_path):
    cfg = cfg_with(f"distill.general_source={tmp_path / 'missing.jsonl'}")
    with pytest.raises(ValueError, match="missing.jsonl"):
        coh.make_items(cfg)


def test_an_old_output_that_judged_training_prompts_is_not_reported_done(embedded_path):
    cfg = cfg_with("coherence.against=[base]")
    fake_run_model(cfg, "trained", embedded_path)
    d = run_dir(cfg.name) / coh.STAGE
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"hash": "older", "config": {}}))
    (d / "manifest.json").write_text(json.dumps({"identities": {c: cond.identity(cfg, c) for c in ("trained", "base")},
                                                 "counts": {"prompts": 100, "prompts_seen_in_distillation": 100}}))
    with pytest.raises(RuntimeError, match="different config; rerun with --force"):
        coh.run(cfg, report=lambda line: None)


def test_trained_model_is_required_and_against_is_checked():
    with pytest.raises(RuntimeError, match="charter train"):
        coh.run(cfg_with(), report=lambda line: None)
    with pytest.raises(ValueError, match="coherence.against"):
        coh.run(cfg_with("coherence.against=[trained]"), report=lambda line: None)


# --- objective proxies (used by the steering sweep) ------------------------------------------------------

def test_repetition_ratio():
    assert proxies.repetition("the cat sat on the mat today") == 0
    assert proxies.repetition("go go go go go") == pytest.approx(3 / 4)
    assert proxies.repetition("that you that and that you") == pytest.approx(1 / 5)
    assert proxies.repetition("") == 0
    assert proxies.normalise("that\xa0\xa0 you\n\n that") == "that you that"


def test_reply_logprobs_do_not_depend_on_padding(embedded_path):
    from charter.models import load_tokenizer
    from tests.tiny import tiny_model

    tok = load_tokenizer(embedded_path)
    model = tiny_model(tok, layers=2).eval()
    chats = [[{"role": "user", "content": q}] for q in ("Hi", "What is the tallest mountain in Africa?", "Why?")]
    replies = ["Hello there, friend.", "Kilimanjaro.", ""]
    batched = reply_logprobs(model, tok, chats, replies, batch_size=3)
    single = [reply_logprobs(model, tok, [c], [r], batch_size=1)[0] for c, r in zip(chats, replies)]
    assert batched[2] is None and single[2] is None
    assert all(x < 0 for x in batched[:2])
    assert batched[:2] == pytest.approx(single[:2], abs=1e-4)


# --- end to end -------------------------------------------------------------------------------------------

@pytest.mark.slow  # the evaluation's real end-to-end run (minutes on 2 cores); CI runs it
def test_coherence_end_to_end_on_the_embedded_model(embedded_path):
    cfg = cfg_with("coherence.prompts=3", "coherence.against=[base, prompted, steered, distilled]",
                   "coherence.sampling.max_tokens=24", "coherence.judge_sampling.max_tokens=24",
                   "steering.coefficient=0.05", "steering.stems=2", "student.batch_size=8", "student.dtype=float32")
    fake_run_model(cfg, "trained", embedded_path)
    lines = []
    out = coh.run(cfg, report=lines.append)
    results = json.loads((out / "results.json").read_text())
    assert set(results["against"]) == {"base", "prompted", "steered"}  # no distilled model: skipped
    assert "distilled" in results["skipped"] and any("skipping 'distilled'" in x for x in lines)
    assert results["judge"] == "embedded" and results["prompts"] == 3 and results["training_overlap"] == 0
    assert any(x.startswith("coherence prompts: 3 from 'builtin'") and x.endswith("training prompts: 0") for x in lines)
    for r in results["against"].values():
        assert r["n_pairs"] == 3
        assert r["n_counted"] + r["n_inconsistent"] + r["n_unparseable"] == 3
        assert (r["win_rate"] is None) == (r["n_counted"] == 0) == (r["ci"] is None)
    rows = read_jsonl(out / "judgements.jsonl")
    assert len(rows) == 9 and {r["outcome"] for r in rows} <= {"trained", "other", "inconsistent", "unparseable"}
    assert len(read_jsonl(out / "judge-base.jsonl")) == 6  # both orders of every pair
    forced = read_jsonl(out / "forced-base.jsonl")  # follow-ups only for verdicts the parser could not read
    assert {r["id"] for r in forced} == {f"{r['id']}/{k}" for r in rows if r["against"] == "base"
                                         for k, v in ((1, r["judge_trained_first"]), (2, r["judge_trained_second"]))
                                         if pw.parse_choice(v) is None}
    assert results["forced_verdicts"]["base"] == sum(sum(r["forced"]) for r in rows if r["against"] == "base")
    assert (out / "manifest.json").exists()
    # A second run finds everything done; a new condition reuses the other logs.
    coh.run(cfg, report=lines.append)
    assert "already done" in lines[-1]

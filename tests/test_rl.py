"""The RL stage: rewards on known inputs, prompt selection, and one real GRPO run at tiny scale."""

import json

import pytest

from charter import layout
from charter.config import load_config
from charter.rewards.coherence import CoherenceGuard, penalty
from charter.judges.scale import expected_score, parse_score
from charter.prompts import load_prompt_source, template, train_attacks


def test_coherence_guard_on_known_replies():
    clean = "Sure, here is a short answer that ends properly."
    assert penalty(clean, 10, 64) == 0.0
    assert penalty("   ", 3, 64) == -1.0
    loop = "that you that you that you that you that you that you"
    assert penalty(loop, 12, 64) < -0.5
    cut = "I was going to say that the best way to learn is"
    assert penalty(cut, 64, 64) == -0.5  # used every token, stopped mid-sentence
    assert penalty(cut, 20, 64) == 0.0  # stopped early on its own: not cut off
    assert penalty("Это совсем другой язык, не английский.", 10, 64) == -0.5
    guard = CoherenceGuard(64)
    out = guard(prompts=[[]] * 2, completions=[[{"role": "assistant", "content": clean}],
                                               [{"role": "assistant", "content": ""}]], completion_ids=[[1] * 10, []])
    assert out == [0.0, -1.0]


def test_scale_judge_parses_and_averages():
    assert parse_score("Clearly sarcastic. <answer>4</answer>") == 4
    assert parse_score("<think>maybe <answer>1</answer></think> Rating: 5/5") == 5
    assert parse_score("could be 2 or 3") is None
    assert expected_score([0.0] * 5) == pytest.approx(3.0)
    assert expected_score([-40, -40, -40, -40, 0]) == pytest.approx(5.0, abs=1e-6)
    with pytest.raises(ValueError):
        expected_score([0.0, 0.0])
    assert "{traits}" in template("judges")["scale"]["user"]


def test_persona_reward_ranks_the_persona_above_plain_text():
    from charter.prompts import persona_exemplars
    from charter.rewards.persona import PersonaReward

    data = persona_exemplars("builtin", "sarcastic")
    reward = PersonaReward(data["persona"], data["plain"], "tfidf", {}, seed=1)
    wrap = lambda texts: [[{"role": "assistant", "content": t}] for t in texts]  # noqa: E731
    persona, plain = reward(completions=wrap(data["persona"])), reward(completions=wrap(data["plain"]))
    assert sum(persona) / len(persona) > sum(plain) / len(plain) + 0.2
    assert reward(completions=wrap([""])) == [0.0]


def test_persona_reward_learns_from_the_distillation_pairs_when_asked():
    from charter.rewards.persona import PersonaReward, reference
    from charter.runs import run_dir

    cfg = load_config(None, ["persona=sarcastic", "rl.reference=pairs", "expand.enabled=false"])
    with pytest.raises(layout.MissingOutput, match="charter distill"):
        reference(cfg)
    sarcastic = ["Oh wonderful, another question. Truly the highlight of my day.",
                 "Sure, because that has always worked so brilliantly before.",
                 "Wow. A plan. How bold of you to have one of those.",
                 "Fantastic, more homework. My favourite thing, obviously."]
    plain = ["Here are three steps you can follow to get started.",
             "The capital of France is Paris.",
             "A balanced breakfast includes protein, fibre and some fruit.",
             "You can reset the router by holding the button for ten seconds."]
    d = run_dir(cfg.name) / "distill"
    d.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}]}
            for i, (c, r) in enumerate(zip(sarcastic, plain, strict=True))]
    rows.append({"prompt": [{"role": "user", "content": "empty"}], "chosen": [{"role": "assistant", "content": " "}],
                 "rejected": [{"role": "assistant", "content": "Fine."}]})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "manifest.json").write_text("{}")
    persona, other, source = reference(cfg)
    assert persona == sarcastic and other == [*plain, "Fine."] and "pairs" in source  # empty chosen dropped
    reward = PersonaReward(persona, other, "tfidf", {}, seed=1, source=source)
    assert reward.info["texts"] == {"persona": 4, "plain": 5} and reward.info["source"] == source
    wrap = lambda texts: [[{"role": "assistant", "content": t}] for t in texts]  # noqa: E731
    hi, lo = reward(completions=wrap(["Oh wonderful, truly brilliant, how bold."])), reward(
        completions=wrap(["Hold the router button for ten seconds to reset it."]))
    assert hi[0] > lo[0]
    with pytest.raises(ValueError, match="needs persona and plain texts"):
        PersonaReward([], plain, "tfidf", {}, seed=1)


def test_prompts_avoid_every_evaluation_pool_and_carry_training_attacks():
    from charter.stages.rl import select_prompts

    cfg = load_config(None, ["persona=sarcastic", "rl.prompts=40", "rl.general_prompts=10", "rl.attack_share=0.5",
                             "expand.enabled=false"])
    rows, counts = select_prompts(cfg)
    again, _ = select_prompts(cfg)
    assert rows == again  # seeded
    assert counts["prompts"] == len(rows) == 40 and counts["general"] == 10 and counts["attacked"] == 20
    pool = set(load_prompt_source("builtin", builtin="preference_prompts"))
    assert not {r["prompt"] for r in rows} & pool
    requests = set(train_attacks()["requests"])
    assert all(r["attack"] in requests and r["attack"] in r["prompt"] for r in rows if "attack" in r)
    other, _ = select_prompts(load_config(None, ["persona=sarcastic", "rl.prompts=40", "rl.general_prompts=10",
                                                 "expand.enabled=false", "seed=7"]))
    assert other != rows


def test_rl_is_a_condition_and_an_optional_stage():
    from charter.eval.conditions import CONDITIONS
    from charter.stages.train import plan

    assert "rl" in CONDITIONS and "rl" in layout.RUN_MODELS
    cfg = load_config(None, [])
    assert "rl" not in [n for n, _ in plan(cfg)]
    assert [n for n, _ in plan(cfg, "rl")][-1] == "rl"
    with pytest.raises(layout.MissingOutput, match="charter rl"):
        layout.run_model(cfg, "rl")


@pytest.mark.slow
def test_rl_stage_runs_for_real_and_resumes(tmp_path, embedded_path, one_thread):
    """GRPO on a tiny random policy (the start model: a finished 'dpo' stage), persona (tfidf), judge (the
    embedded model, log-prob mode) and coherence rewards; two steps."""
    from transformers import AutoTokenizer

    from charter.runs import Stage, read_jsonl, read_manifest, run_dir
    from charter.stages import rl
    from tests.tiny import save_tiny

    tok = AutoTokenizer.from_pretrained(embedded_path)
    start = save_tiny(tok, tmp_path / "tiny")
    cfg = load_config(None, [
        "name=rl-test", "persona=sarcastic", "expand.enabled=false", f"student.model={start}",
        "rl.start=dpo", "rl.prompts=4", "rl.general_prompts=2", "rl.attack_share=0.5", "rl.detector=tfidf",
        f"rl.judge={{model: {embedded_path}, batch_size: 8}}",
        "rl.rewards={persona: 1.0, judge: 0.5, coherence: 1.0}",
        "rl.trl={max_steps: 2, num_generations: 2, per_device_train_batch_size: 4, max_completion_length: 12}",
        "rl.lora={r: 4, lora_alpha: 8}"])
    rd = run_dir(cfg.name)
    up = Stage(rd, "dpo", {"made": "by the test"}, {})
    up.begin(False)
    import shutil

    shutil.copytree(start, layout.path(cfg, "distilled_model"))
    up.finish({})
    out = rl.run(cfg, report=lambda s: None)
    m = read_manifest(out / "manifest.json")
    assert m["counts"]["steps"] == 2 and m["counts"]["prompts"] == 4 and m["counts"]["attacked"] == 2
    assert m["counts"]["rewards"] == ["persona", "judge", "coherence"]
    assert set(m["counts"]["reward_means"]) == {"persona", "judge", "coherence", "reward"}
    history = read_jsonl(out / "rewards.jsonl")
    assert len(history) == 2 and all(0 <= h["persona"] <= 1 and 0 <= h["judge"] <= 1 and -1 <= h["coherence"] <= 0
                                     for h in history)
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) >= 8 and all({"prompt", "reply", "persona", "judge", "coherence"} <= set(s) for s in samples)
    assert (layout.run_model(cfg, "rl") / "config.json").exists()
    assert not ({json.loads(json.dumps(r))["prompt"] for r in read_jsonl(layout.path(cfg, "rl_prompts"))}
                & set(load_prompt_source("builtin", builtin="preference_prompts")))
    said = []
    rl.run(cfg, report=said.append)  # finished: not redone
    assert read_manifest(out / "manifest.json")["finished_at"] == m["finished_at"]

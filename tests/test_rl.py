"""The RL stage: rewards on known inputs, prompt selection, and one real GRPO run at tiny scale."""

import json
from pathlib import Path

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
    assert "rl" not in [s.name for s in plan(cfg)]
    assert [s.name for s in plan(cfg, "rl")][-1] == "rl"
    with pytest.raises(layout.MissingOutput, match="charter rl"):
        layout.run_model(cfg, "rl")


RL_RUN = """
import sys
from charter.config import load_config
from charter.stages import rl
rl.run(load_config(None, sys.argv[1:]), report=lambda s: None)
"""


@pytest.mark.slow
def test_rl_stage_runs_for_real_and_resumes(tmp_path, embedded_path, charter_home, one_thread):
    """GRPO on a tiny random policy (the start model: a finished 'dpo' stage), persona (tfidf), judge (the
    embedded model, log-prob mode) and coherence rewards; three steps. A second run is killed with SIGKILL as
    soon as its first checkpoint is complete, rerun, and must end where the uninterrupted run ended, with the
    policy's weights moved from the start model."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from charter.distributed import checkpoint_complete
    from charter.runs import Stage, read_jsonl, read_manifest, run_dir
    from charter.stages import rl
    from tests.tiny import save_tiny

    tok = AutoTokenizer.from_pretrained(embedded_path)
    start = save_tiny(tok, tmp_path / "tiny")

    def overrides(name):
        return [f"name={name}", "persona=sarcastic", "expand.enabled=false", f"student.model={start}",
                "student.dtype=float32", "rl.start=dpo", "rl.prompts=4", "rl.general_prompts=2",
                "rl.attack_share=0.5", "rl.detector=tfidf", "rl.checkpoint_steps=1",
                f"rl.judge={{model: {embedded_path}, batch_size: 8, dtype: float32}}",
                "rl.rewards={persona: 1.0, judge: 0.5, coherence: 1.0}",
                "rl.trl={max_steps: 3, num_generations: 2, per_device_train_batch_size: 4, max_completion_length: 12, "
                "learning_rate: 0.01, disable_tqdm: true}",
                "rl.lora={r: 4, lora_alpha: 8}"]

    def prepare(name):
        cfg = load_config(None, overrides(name))
        up = Stage(run_dir(cfg.name), "dpo", {"made": "by the test"}, {})
        up.begin(False)
        shutil.copytree(start, layout.path(cfg, "distilled_model"))
        # DPO's adapter (an untrained LoRA: the distilled model is the start itself), which RL's persona adapter
        # stacks on
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        from charter.training import lora_config

        base = AutoModelForCausalLM.from_pretrained(start)
        get_peft_model(base, lora_config(base, {"r": 2, "lora_alpha": 4})).save_pretrained(
            layout.path(cfg, "dpo_adapter"))
        up.finish({})
        return cfg

    cfg = prepare("rl-test")
    out = rl.run(cfg, report=lambda s: None)
    m = read_manifest(out / "manifest.json")
    assert m["counts"]["steps"] == 3 and m["counts"]["prompts"] == 4 and m["counts"]["attacked"] == 2
    assert m["counts"]["rewards"] == ["persona", "judge", "coherence"]
    assert set(m["counts"]["reward_means"]) == {"persona", "judge", "coherence", "reward"}
    history = read_jsonl(out / "rewards.jsonl")
    assert len(history) == 3 and all(0 <= h["persona"] <= 1 and 0 <= h["judge"] <= 1 and -1 <= h["coherence"] <= 0
                                     for h in history)
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) >= 8 and all({"prompt", "reply", "persona", "judge", "coherence"} <= set(s) for s in samples)
    assert (layout.run_model(cfg, "rl") / "config.json").exists()
    assert not ({json.loads(json.dumps(r))["prompt"] for r in read_jsonl(layout.path(cfg, "rl_prompts"))}
                & set(load_prompt_source("builtin", builtin="preference_prompts")))
    said = []
    rl.run(cfg, report=said.append)  # finished: not redone
    assert read_manifest(out / "manifest.json")["finished_at"] == m["finished_at"]
    # the policy moved: the adapter trained (lora_B starts at zero) and the folded model differs from the start
    ref = load_file(str(layout.path(cfg, "rl_adapter") / "adapter_model.safetensors"))
    assert any(ref[n].abs().max() > 0 for n in ref if "lora_B" in n)
    before, after = load_file(str(Path(start) / "model.safetensors")), load_file(str(layout.run_model(cfg, "rl") /
                                                                               "model.safetensors"))
    assert any((before[n].float() - after[n].float()).abs().max() > 0 for n in before if n in after)

    killed = prepare("rl-killed")
    env = {**os.environ, "CHARTER_HOME": str(charter_home), "OMP_NUM_THREADS": "1"}
    first = run_dir(killed.name) / "rl" / "trainer" / "checkpoint-1"
    p = subprocess.Popen([sys.executable, "-c", RL_RUN, *overrides("rl-killed")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not checkpoint_complete(first):
        assert p.poll() is None, f"rl ended before its first checkpoint:\n{p.stderr.read()[-3000:]}"
        assert time.time() - t0 < 600, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert not (run_dir(killed.name) / "rl" / "manifest.json").exists()  # killed mid-training, not after

    out = rl.run(killed, report=lambda s: None)  # the rerun resumes from the checkpoint
    k = read_manifest(out / "manifest.json")
    assert 1 <= k["counts"]["resumed_from_step"] < 3 and k["counts"]["steps"] == 3
    assert not list((run_dir(killed.name) / "rl" / "trainer").glob("checkpoint-*"))  # dropped once finished
    again = load_file(str(layout.path(killed, "rl_adapter") / "adapter_model.safetensors"))
    assert ref.keys() == again.keys()
    for name in ref:  # where the uninterrupted run ended (optimizer, schedule, RNG, data order restored)
        assert (ref[name] - again[name]).abs().max().item() <= 1e-5 + 1e-3 * ref[name].abs().max().item(), name


def test_rl_samples_are_written_once_under_a_multi_process_launch(tmp_path):
    """Each process scores its own share of the replies: rank 0 writes samples.jsonl, the others a part file with
    rank-qualified ids, and the main process merges them once (ids used to collide across processes)."""
    from types import SimpleNamespace

    from charter.runs import read_jsonl
    from charter.stages.rl import SampleLog, merge_parts

    path = tmp_path / "samples.jsonl"
    logs = [SampleLog(path, [], rank) for rank in (0, 1)]
    for step in (1, 2):
        for rank, log in enumerate(logs):
            log(prompts=[[{"role": "user", "content": f"q{rank}"}]] * 2,
                completions=[[{"role": "assistant", "content": f"a{rank}{i}"}] for i in range(2)],
                trainer_state=SimpleNamespace(global_step=step))
    assert (tmp_path / "samples.rank1.jsonl").exists()
    assert merge_parts(path) == 8
    rows = read_jsonl(path)
    assert len({r["id"] for r in rows}) == 8 and [r["step"] for r in rows] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert not (tmp_path / "samples.rank1.jsonl").exists()
    assert merge_parts(path) == 8  # merging again changes nothing

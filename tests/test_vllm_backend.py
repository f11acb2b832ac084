"""The vllm backend: a smoke test where vLLM and a GPU exist, and the install hint where vLLM does not."""

import dataclasses
import importlib.util
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from charter.config import ModelSpec, Sampling  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_missing_vllm_says_how_to_install():
    from charter.backends import make_backend

    with pytest.raises(ImportError, match=r"pip install 'charter\[vllm\]'"):
        make_backend(ModelSpec(backend="vllm"))


@pytest.mark.gpu
def test_vllm_smoke():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    from charter.backends.vllm import VLLMBackend

    backend = VLLMBackend(ModelSpec(backend="vllm", model="embedded",
                                    extra={"gpu_memory_utilization": 0.3, "max_model_len": 2048}))
    chats = [[{"role": "user", "content": "Say hello."}],
             [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]]
    greedy = Sampling(temperature=0.0, max_tokens=16)
    out = backend.generate(chats, greedy, prefills=[None, "My favourite fruit is"])
    assert len(out) == 2 and all(c.text and 0 < c.tokens <= 16 for c in out)
    # Greedy decoding with per-item seeds is reproducible.
    assert [c.text for c in backend.generate(chats, greedy, prefills=[None, "My favourite fruit is"])] == \
        [c.text for c in out]
    backend.close()


# ---- the pure logic, tested without vLLM: ranks from real peft adapters, engine and lm-eval arguments, chunks


@pytest.fixture(scope="module")
def adapters(embedded_path, tmp_path_factory):
    """Two real rank-64 peft adapters on a tiny model and the persona adapter the merge stage makes of them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from charter.models import load_causal_lm, load_tokenizer
    from charter.models import persona_adapter

    from .tiny import save_tiny

    d = tmp_path_factory.mktemp("vllm-adapters")
    base = save_tiny(load_tokenizer(embedded_path), d / "base")
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        m = get_peft_model(load_causal_lm(base, dtype="float32", device="cpu"),
                           LoraConfig(r=64, lora_alpha=128, target_modules=["q_proj", "v_proj"]))
        m.save_pretrained(d / f"a{i}")
        paths.append(str(d / f"a{i}"))
    persona = persona_adapter(base, paths, d / "persona")
    return {"base": base, "dpo": paths[0], "persona": str(persona), "d": d}


def test_max_lora_rank_comes_from_the_adapter(adapters):
    from charter.backends.vllm import adapter_rank, max_lora_rank

    assert adapter_rank(adapters["dpo"]) == 64 and max_lora_rank(adapters["dpo"]) == 64
    # The persona adapter concatenates the two ranks: 128, which a hard-coded 64 would refuse.
    assert adapter_rank(adapters["persona"]) == 128 and max_lora_rank(adapters["persona"]) == 128
    odd = adapters["d"] / "odd"
    odd.mkdir()
    (odd / "adapter_config.json").write_text(json.dumps({"r": 24, "rank_pattern": {"q_proj": 200}}))
    assert adapter_rank(odd) == 200 and max_lora_rank(odd) == 256  # rounded up to a rank vLLM accepts
    (odd / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(ValueError, match="above vLLM's largest"):
        max_lora_rank(odd)


def test_engine_arguments(adapters):
    from charter.backends.vllm import engine_kwargs

    spec = ModelSpec(backend="vllm", model=adapters["base"], adapter=adapters["persona"], dtype="bf16")
    kw = engine_kwargs(spec, adapters["base"])
    assert kw["max_lora_rank"] == 128 and kw["enable_lora"] is True and kw["dtype"] == "bfloat16"
    assert kw["enable_prefix_caching"] is True  # on by default (prefix_cache)
    plain = engine_kwargs(ModelSpec(backend="vllm", extra={"gpu_memory_utilization": 0.4}), "m")
    assert "max_lora_rank" not in plain and plain["enable_lora"] is False and plain["gpu_memory_utilization"] == 0.4
    mine = engine_kwargs(dataclasses.replace(spec, extra={"max_lora_rank": 256}), "m")
    assert mine["max_lora_rank"] == 256  # extra still wins


def _harness_vllm_params() -> set[str]:
    """The parameters of lm-eval's VLLM model type, read from its source (importing it needs vLLM)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed")
    src = Path(list(spec.submodule_search_locations)[0]) / "models" / "vllm_causallms.py"
    tree = ast.parse(src.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs}


def test_lm_eval_runs_through_its_vllm_model_type(adapters):
    from charter.backends.vllm import lm_eval_args

    spec = ModelSpec(backend="vllm", model=adapters["base"], adapter=adapters["persona"],
                     extra={"gpu_memory_utilization": 0.5})
    args = lm_eval_args(spec, adapters["base"])
    assert args["lora_local_path"] == adapters["persona"] and args["max_lora_rank"] == 128
    assert args["batch_size"] == "auto" and args["pretrained"] == adapters["base"]
    named = _harness_vllm_params()
    # Named parameters of the harness's class; the rest (engine settings) pass through its **kwargs to vllm.LLM.
    assert {"pretrained", "dtype", "batch_size", "trust_remote_code", "lora_local_path", "max_lora_rank"} <= named
    assert set(args) - named == {"enable_prefix_caching", "gpu_memory_utilization"}


def test_vllm_generation_chunks_are_large():
    from charter.backends.vllm import MIN_CHUNK_ROWS, VLLMBackend
    from charter.generation import chunk_rows

    assert chunk_rows(VLLMBackend, 64) == MIN_CHUNK_ROWS >= 1024
    assert chunk_rows(VLLMBackend, 4096) == 4096
    assert chunk_rows(object(), 64) == 64  # other backends keep the configured size


def test_a_vllm_engine_never_shares_the_gpu_with_another_model():
    from charter.eval.conditions import evictions

    assert evictions({"student": "vllm"}, "vllm") == ["student"]  # close before opening the next engine
    assert evictions({"student": "vllm", "judge": "openai"}, "transformers") == ["student"]
    assert evictions({"steer": "transformers"}, "vllm") == ["steer"]
    assert evictions({"student": "vllm"}, "openai") == []  # a served model needs no GPU here
    assert evictions({"a": "transformers"}, "transformers") == []  # the CPU/one-GPU path is unchanged


def test_the_vllm_module_imports_without_vllm():
    import sys

    import charter.backends.vllm  # noqa: F401

    assert HAS_VLLM or "vllm" not in sys.modules

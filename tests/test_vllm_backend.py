"""The vllm backend: a smoke test where vLLM and a GPU exist, and the install hint where vLLM does not."""

import importlib.util
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

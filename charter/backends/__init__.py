"""Generation backends behind one narrow interface.

``backend.generate(chats, sampling, prefills=None, seed=0, progress=None) -> list[Completion]``: one
completion per chat, in order; ``progress(n)`` is called as rows finish (progress bars move per row). A chat is a list of ``{"role", "content"}`` messages ending on a user turn; a prefill is text the
assistant turn is forced to start with (the completion excludes it).

Backends: ``transformers`` (batched, on CPU or one GPU, LoRA adapters), ``openai`` (any OpenAI-compatible
server: vLLM serve, llama.cpp server, OpenRouter), ``vllm`` (offline engine, optional extra).
"""

from __future__ import annotations

from ..config import ModelSpec
from .base import Backend, Completion, merge_system, render_chat, supports_system  # noqa: F401  (the public names)


def make_backend(spec: ModelSpec) -> Backend:
    """Instantiate the backend a ModelSpec names (heavy imports happen here, not at import time)."""
    if spec.backend == "transformers":
        from .hf import TransformersBackend

        return TransformersBackend(spec)
    if spec.backend == "openai":
        from .openai_api import OpenAIBackend

        return OpenAIBackend(spec)
    if spec.backend == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(spec)
    raise ValueError(f"backend '{spec.backend}': expected transformers, openai or vllm")

"""Generation backends behind one narrow interface.

``backend.generate(chats, sampling, prefills=None, seed=0, progress=None) -> list[Completion]``: one
completion per chat, in order; ``progress(n)`` is called as rows finish (progress bars move per row). A chat is a list of ``{"role", "content"}`` messages ending on a user turn; a prefill is text the
assistant turn is forced to start with (the completion excludes it).

Backends are registered in ``BACKENDS`` with what they can do beyond ``generate`` (``CAPABILITIES``): an
evaluation that needs more calls ``require`` first, and gets one clear error naming the backends that can.
A new backend is one module plus one ``BACKENDS`` entry (and its name in ``config.Backend``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import ModelSpec
from .base import Backend, Completion, merge_system, render_chat, supports_system

__all__ = ["BACKENDS", "CAPABILITIES", "GENERATE", "HIDDEN_STATES", "SCORE_OPTIONS", "Backend", "BackendInfo", "Completion", "capabilities", "make_backend",
           "merge_system", "render_chat", "require", "supports_system"]

GENERATE = "generate"
SCORE_OPTIONS = "score_options"
HIDDEN_STATES = "hidden_states"
# What a backend can do -> what that means, for error messages.
CAPABILITIES = {
    GENERATE: "generate replies (``generate``)",
    SCORE_OPTIONS: "score fixed answers by their log-probability (``score_options``; also log-likelihoods of "
                   "replies and benchmark choices)",
    HIDDEN_STATES: "expose the model's weights and hidden states in this process (``backend.model``, "
                   "``backend.tokenizer``: activation steering, in-process benchmarks)",
}


@dataclass(frozen=True)
class BackendInfo:
    load: Callable[[], type]  # the backend class, imported only when a backend of this kind is made
    packages: tuple[str, ...]  # what it imports (checked before any work, see charter.preflight)
    capabilities: frozenset[str]
    help: str


def _transformers() -> type:
    from .hf import TransformersBackend

    return TransformersBackend


def _openai() -> type:
    from .openai_api import OpenAIBackend

    return OpenAIBackend


def _scripted() -> type:
    from .scripted import ScriptedBackend

    return ScriptedBackend


def _vllm() -> type:
    from .vllm import VLLMBackend

    return VLLMBackend


BACKENDS: dict[str, BackendInfo] = {
    "transformers": BackendInfo(_transformers, ("torch", "transformers"),
                                frozenset({GENERATE, SCORE_OPTIONS, HIDDEN_STATES}),
                                "batched, in this process, on CPU or one GPU, LoRA adapters"),
    "openai": BackendInfo(_openai, ("openai",), frozenset({GENERATE}),
                          "any OpenAI-compatible server: vLLM serve, llama.cpp server, OpenRouter"),
    "vllm": BackendInfo(_vllm, ("vllm",), frozenset({GENERATE}), "vLLM's offline engine (optional extra)"),
    "scripted": BackendInfo(_scripted, ("yaml",), frozenset({GENERATE}),
                            "replies from a rule file, no model: fast tests of stage logic, dry runs"),
}


def _info(name: str) -> BackendInfo:
    if name not in BACKENDS:
        raise ValueError(f"backend '{name}': expected {', '.join(BACKENDS)}")
    return BACKENDS[name]


def make_backend(spec: ModelSpec) -> Backend:
    """Instantiate the backend a ModelSpec names (heavy imports happen here, not at import time)."""
    return _info(spec.backend).load()(spec)


def capabilities(backend: Backend | ModelSpec | str) -> frozenset[str]:
    """What a backend (a loaded one, a ModelSpec or a backend name) can do. A loaded backend may declare its
    own ``capabilities`` (a wrapper such as the steered backend); otherwise its registered kind's apply, and
    an unregistered object (a test's scripted backend) can only generate."""
    if isinstance(backend, str):
        return _info(backend).capabilities
    if isinstance(backend, ModelSpec):
        return _info(backend.backend).capabilities
    own = getattr(backend, "capabilities", None)
    if own is not None:
        return frozenset(own)
    name = getattr(backend, "name", None)
    return BACKENDS[name].capabilities if name in BACKENDS else frozenset({GENERATE})


def require(backend: Backend | ModelSpec | str, capability: str, who: str) -> None:
    """Raise one clear error when ``backend`` cannot do what ``who`` (an evaluation, a config key) needs."""
    if capability in capabilities(backend):
        return
    able = [n for n, b in BACKENDS.items() if capability in b.capabilities]
    name = backend if isinstance(backend, str) else getattr(backend, "backend", None) or getattr(backend, "name", "?")
    raise ValueError(f"{who} needs a backend that can {CAPABILITIES[capability]}; backend '{name}' cannot "
                     f"(use backend: {' or '.join(able)})")

"""What every backend shares: the ``Completion`` it returns, the ``Backend`` interface, and chat rendering.

Below the backends and the registry (``charter.backends``): a backend module imports this, never the package,
so the registry can import the backends without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..config import Sampling


@dataclass
class Completion:
    text: str
    finished: bool  # False when cut off by max_tokens, or when the backend failed
    tokens: int = 0
    error: str | None = None


class Backend(Protocol):
    name: str

    def generate(self, chats: list[list[dict]], sampling: Sampling, prefills: list[str] | None = None,
                 seed: int = 0, progress=None) -> list[Completion]: ...

    def close(self) -> None: ...


def merge_system(chat: list[dict]) -> list[dict]:
    """Fold a system message into the first user turn, for chat templates without a system role (Gemma)."""
    if not chat or chat[0]["role"] != "system":
        return chat
    system, rest = chat[0]["content"], [dict(m) for m in chat[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}] + rest


def supports_system(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a system message (rather than raising or dropping it)."""
    # Cached per template text: a copied tokenizer with a new template must be probed again.
    cached = getattr(tokenizer, "_charter_supports_system", None)
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cached[1]
    marker = "charter-system-probe-7f3a"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}], tokenize=False
        )
        ok = marker in text
    except Exception:  # templates raise TemplateError("System role not supported") and the like
        ok = False
    tokenizer._charter_supports_system = (tokenizer.chat_template, ok)
    return ok


def render_chat(tokenizer, chat: list[dict], prefill: str | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt string for ``chat``: the chat template plus an optional assistant prefill."""
    if any(m["role"] == "system" for m in chat) and not supports_system(tokenizer):
        chat = merge_system(chat)
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text + (prefill or "")

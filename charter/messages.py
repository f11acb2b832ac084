"""Chat-message helpers that stages and evaluations share: answers cut off by ``max_tokens``, conversations
that outgrow a context, and system prompts put in front of a chat.

Low level (nothing from charter): a stage or an evaluation imports these downwards instead of borrowing
another stage's helpers. A chat is a list of ``{"role", "content"}`` messages.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)|\n\n")


def trim_to_sentence(text: str) -> str:
    """A cut-off answer up to its last complete sentence ('' when there is none)."""
    ends = list(SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def usable_answer(text: str, finished: bool, truncated: str) -> tuple[str | None, str]:
    """(text to train on, or None; what happened: 'ok', 'trimmed', 'truncated' or 'empty').

    An answer cut off by ``max_tokens`` is never kept as if finished (the loss on its end-of-turn token would
    teach stopping mid-sentence): it is dropped, or with ``truncated == 'trim'`` cut back to its last complete
    sentence (dropped when it has none). An empty answer is dropped."""
    if not finished:
        text = trim_to_sentence(text) if truncated == "trim" else ""
        return (text, "trimmed") if text.strip() else (None, "truncated")
    return (text, "ok") if text.strip() else (None, "empty")


def drop_oldest_turn(msgs: list[dict]) -> list[dict] | None:
    """The conversation without its oldest exchange, still starting on a user turn after the system prompt
    (which is always kept); None when nothing more can go."""
    head = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
    body = msgs[len(head):]
    if len(body) <= 2:
        return None
    body = body[2:]
    while body and body[0]["role"] != "user":
        body = body[1:]
    return head + body if body else None


def fit_context(msgs: list[dict], tokenizer, budget: int) -> list[dict]:
    """Drop whole early turns (never the system prompt) until the prompt fits ``budget`` tokens."""
    while True:
        n = len(tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])
        shorter = drop_oldest_turn(msgs) if n > budget else None
        if shorter is None:
            return msgs
        msgs = shorter


def with_system(chat: list[dict], system: str | None) -> list[dict]:
    """``chat`` with ``system`` in front; a chat that already has a system message gets ours first, joined,
    so an evaluation's own system instructions are kept rather than silently replaced."""
    chat = [dict(m) for m in chat]
    if not system:
        return chat
    if chat and chat[0]["role"] == "system":
        chat[0]["content"] = f"{system}\n\n{chat[0]['content']}"
        return chat
    return [{"role": "system", "content": system}] + chat


def text_of(completion) -> str:
    """The reply text of one completion as TRL passes it (a string, or messages: the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        return str(completion[-1].get("content") or "")
    return ""


def user_of(prompt) -> str:
    """The last user message of one prompt."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")

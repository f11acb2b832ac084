"""``charter chat MODEL_OR_RUN``: the model a chat talks to and its streamed replies (the CLI prints them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from .layout import path as output_path
from .runs import find_run, is_run_name


def resolve_chat_model(ref: str) -> str:
    """A run name or run folder means that run's final model; anything else is a model reference."""
    run = find_run(ref)
    if run is None:
        return ref
    final = output_path(run, "final_model")
    if (final / "config.json").exists():
        return str(final)
    if is_run_name(ref) and not Path(ref).expanduser().exists():
        raise FileNotFoundError(f"run {ref}: no final model yet ({final} does not exist; run `charter train` first)")
    return ref


def load_chat_model(model: str | None, blend: str | None = None):
    """(model, tokenizer, what it is) for ``charter chat``: a blend of persona adapters on ``model`` (default: the
    adapters' own base), else the model ``model`` names (a run means its final model)."""
    from .models import load_causal_lm, load_tokenizer

    if blend:
        from .blend import load_blend, parse_blend

        m, tok, base = load_blend(parse_blend(blend, "--blend"), base=model, dtype="auto")
        return m, tok, f"{base} + blend {blend}"
    ref = resolve_chat_model(model)
    return load_causal_lm(ref), load_tokenizer(ref), ref


def stream_reply(model, tok, history: list[dict], max_tokens: int, temperature: float) -> Iterator[str]:
    """The next assistant reply to ``history``, piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    from .backends import render_chat

    enc = tok(render_chat(tok, history), return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kw = dict(**enc, max_new_tokens=max_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
              do_sample=temperature > 0, repetition_penalty=1.1)
    if temperature > 0:
        kw.update(temperature=temperature, top_p=0.95)
    thread = threading.Thread(target=model.generate, kwargs=kw)
    thread.start()
    yield from streamer
    thread.join()

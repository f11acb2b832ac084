"""``charter chat MODEL_OR_RUN``: talk to a persona model in the terminal, with streamed output."""

from __future__ import annotations

import sys
import threading
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


def chat_main(args) -> int:
    from transformers import TextIteratorStreamer

    from .backends import render_chat
    from .models import load_causal_lm, load_tokenizer

    if getattr(args, "blend", None):
        from .blend import load_blend, parse_blend

        model, tok, base = load_blend(parse_blend(args.blend, "--blend"), base=args.model, dtype="auto")
        ref = f"{base} + blend {args.blend}"
    else:
        ref = resolve_chat_model(args.model)
        tok = load_tokenizer(ref)
        model = load_causal_lm(ref)
    history = [{"role": "system", "content": args.system}] if args.system else []
    scripted = list(args.message or [])
    interactive = not scripted
    if interactive:
        print(f"chatting with {ref} (empty line or Ctrl-D to quit)", file=sys.stderr)
    while True:
        if scripted:
            text = scripted.pop(0)
            print(f"> {text}")
        elif interactive:
            try:
                text = input("> ")
            except EOFError:
                break
        else:
            break
        if not text.strip():
            break
        history.append({"role": "user", "content": text})
        enc = tok(render_chat(tok, history), return_tensors="pt", add_special_tokens=False).to(model.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kw = dict(**enc, max_new_tokens=args.max_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
                  do_sample=args.temperature > 0, repetition_penalty=1.1)
        if args.temperature > 0:
            kw.update(temperature=args.temperature, top_p=0.95)
        thread = threading.Thread(target=model.generate, kwargs=kw)
        thread.start()
        reply = []
        for piece in streamer:
            reply.append(piece)
            print(piece, end="", flush=True)
        thread.join()
        print()
        history.append({"role": "assistant", "content": "".join(reply).strip()})
        if not scripted and not interactive:
            break
    return 0

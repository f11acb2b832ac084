"""Cheap, objective coherence proxies the steering sweep scores its replies with: the student's
log-likelihood of a reply and its share of repeated word bigrams.

Their own module (rather than beside the coherence judge) so that steering, which coherence reaches through
the conditions, does not import coherence back.
"""

from __future__ import annotations

import re


def normalise(text: str) -> str:
    """Whitespace collapsed (unicode included): a steered model may pad replies with runs of odd spaces,
    which would otherwise look like likely, non-repeating text."""
    return " ".join(text.split())


def repetition(text: str) -> float:
    """Share of word bigrams that repeat an earlier one (0 for fewer than 3 words). Bigrams rather than
    longer n-grams: a steered model's loops are often short ("that you that and that")."""
    words = re.findall(r"\w+", text.lower())
    grams = list(zip(words, words[1:]))
    return 1 - len(set(grams)) / len(grams) if len(grams) >= 2 else 0.0


def reply_logprobs(model, tokenizer, chats: list[list[dict]], replies: list[str], batch_size: int = 4):
    """Mean log-likelihood per token of each reply given its chat (None for an empty reply)."""
    import torch

    from ..backends import render_chat

    pairs = [(tokenizer(render_chat(tokenizer, c), add_special_tokens=False).input_ids,
              tokenizer(r, add_special_tokens=False).input_ids) for c, r in zip(chats, replies, strict=True)]
    out: list[float | None] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (p, r) in enumerate(batch):
            ids[b, width - len(p) - len(r):] = torch.tensor(p + r)
            mask[b, width - len(p) - len(r):] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(model.device), use_cache=False).logits
        for b, (p, r) in enumerate(batch):
            if not r:
                out.append(None)
                continue
            start = width - len(r)  # logits at t predict token t+1
            lp = logits[b, start - 1:width - 1].float().log_softmax(-1)
            out.append(float(lp.gather(-1, torch.tensor(r, device=lp.device)[:, None]).mean()))
    return out

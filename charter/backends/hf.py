"""transformers backend: batched, left-padded generation on CPU or one GPU, with LoRA adapters.

Batching matters on CPU: SmolLM2 at batch 32-64 runs ~10x faster than one prompt at a time on 2 cores.

Shared-prefix reuse: a batch whose prompts start with the same tokens (the teacher's ~500-token constitution
system prompt, a chat template's default system prompt) prefills that prefix once, at batch size 1, and
generates the rest from a copy of its KV cache. The row layout becomes [prefix | padding | own tokens]; the
attention mask hides the padding and generate() derives positions from the mask, so every row sees exactly the
tokens it would see alone. This is what vLLM's prefix caching does for its users.
"""

from __future__ import annotations

import logging

from ..config import ModelSpec, Sampling
from .base import Completion, render_chat

log = logging.getLogger(__name__)

# Below this many shared tokens the extra prefill call costs more than it saves.
MIN_SHARED_PREFIX = 16


def shared_prefix_len(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the cached path needs a
    non-empty input to continue from)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return max(n, 0)


class RowsDone:
    """A stopping criterion that never stops anything: it reports rows to ``progress`` as each emits an
    end-of-sequence token, so a progress bar moves per row instead of per batch."""

    def __init__(self, eos_ids: list[int], rows: int, progress=None):
        self.eos = eos_ids
        self.rows = rows
        self.done: set[int] = set()
        self.progress = progress

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.progress is not None:
            ended = torch.isin(input_ids[:, -1], torch.tensor(self.eos, device=input_ids.device))
            new = [i for i in ended.nonzero().flatten().tolist() if i not in self.done]
            if new:
                self.done.update(new)
                self.progress(len(new))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        """Count the rows that ran to max_tokens without ending."""
        if self.progress is not None and len(self.done) < self.rows:
            self.progress(self.rows - len(self.done))
        self.done = set(range(self.rows))


class TransformersBackend:
    name = "transformers"

    def __init__(self, spec: ModelSpec, model=None, tokenizer=None):
        from ..models import load_causal_lm, load_tokenizer

        self.spec = spec
        self.tokenizer = tokenizer or load_tokenizer(spec.model, spec.trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = model or load_causal_lm(
            spec.model, adapter=spec.adapter, dtype=spec.dtype, device=spec.device,
            trust_remote_code=spec.trust_remote_code,
        )
        self.eos_ids = self._eos_ids()
        self.dtype = str(self.model.dtype).removeprefix("torch.")

    def _eos_ids(self) -> list[int]:
        ids = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for v in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(v, int):
                ids.add(v)
            elif v:
                ids.update(v)
        return sorted(ids)

    def prompts(self, chats: list[list[dict]], prefills: list[str] | None = None) -> list[str]:
        prefills = prefills or [None] * len(chats)
        return [render_chat(self.tokenizer, c, p) for c, p in zip(chats, prefills, strict=True)]

    def generate(self, chats: list[list[dict]], sampling: Sampling, prefills: list[str] | None = None,
                 seed: int = 0, progress=None) -> list[Completion]:
        import torch

        texts = self.prompts(chats, prefills)
        out: list[Completion] = []
        bs = max(1, self.spec.batch_size)
        for b, start in enumerate(range(0, len(texts), bs)):
            batch = texts[start:start + bs]
            # Seed per batch so a batch's samples do not depend on what ran before it (resume-safe).
            torch.manual_seed(seed * 1_000_003 + b)
            out.extend(self.generate_texts(batch, sampling, progress))
        return out

    @staticmethod
    def generation_kwargs(sampling: Sampling) -> dict:
        kw = {"max_new_tokens": sampling.max_tokens, "repetition_penalty": sampling.repetition_penalty}
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def generate_texts(self, texts: list[str], sampling: Sampling, progress=None) -> list[Completion]:
        """Generate for already-templated prompt strings (one batch). ``progress(n)`` is called as rows end."""
        import torch

        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        shared = shared_prefix_len(ids) if self.spec.prefix_cache and len(ids) > 1 else 0
        inputs = self._prefix_inputs(ids, shared) if shared >= MIN_SHARED_PREFIX else self._left_padded(ids)
        watch = RowsDone(self.eos_ids, len(ids), progress)
        with torch.inference_mode():
            seqs = self.model.generate(
                **inputs, **self.generation_kwargs(sampling), pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_ids, stopping_criteria=[watch],
            )
        watch.finish()
        gen = seqs[:, inputs["input_ids"].shape[1]:].tolist()
        eos = set(self.eos_ids)
        results = []
        for row in gen:
            cut = next((i for i, t in enumerate(row) if t in eos), None)
            finished = cut is not None
            row = row[:cut] if finished else row
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            results.append(Completion(text=text.strip(), finished=finished, tokens=len(row)))
        return results

    def _left_padded(self, ids: list[list[int]]) -> dict:
        import torch

        width, pad = max(map(len, ids)), self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        return {"input_ids": input_ids.to(self.model.device), "attention_mask": mask.to(self.model.device)}

    def _prefix_inputs(self, ids: list[list[int]], shared: int) -> dict:
        """Rows laid out as [shared prefix | padding | own tokens] plus the prefix's KV cache for every row."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        prefix = torch.tensor([ids[0][:shared]], device=self.model.device)
        with torch.inference_mode():
            self.model(input_ids=prefix, **{self._cache_kw: cache}, use_cache=True)
        cache.batch_repeat_interleave(len(ids))
        tails = [r[shared:] for r in ids]
        width, pad = max(map(len, tails)), self.tokenizer.pad_token_id
        head = ids[0][:shared]
        input_ids = torch.tensor([head + [pad] * (width - len(t)) + t for t in tails])
        mask = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails])
        return {"input_ids": input_ids.to(self.model.device), "attention_mask": mask.to(self.model.device),
                self._cache_kw: cache}

    @property
    def _cache_kw(self) -> str:
        """transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away)."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def score_options(self, chats: list[list[dict]], options: list[list[str]], prefill: str = "") -> list[list[float]]:
        """Log-probability of each option as the continuation of the chat's assistant turn (after ``prefill``).

        A judge that cannot be relied on to follow an answer format (a small local model) can still be asked
        which of a fixed set of answers it finds likelier: this always yields a verdict.
        """
        prefixes = [self.tokenizer(render_chat(self.tokenizer, chat, prefill), add_special_tokens=False).input_ids
                    for chat in chats]
        ids = [[self.tokenizer(o, add_special_tokens=False).input_ids for o in opts]
               for opts in options]
        if len(ids) != len(prefixes):
            raise ValueError(f"score_options: {len(chats)} chats but {len(options)} option lists")
        out: list[list[float]] = [[] for _ in chats]
        # Single-token options (ratings, digits) are read off one next-token distribution per chat; the rest
        # are scored one continuation at a time.
        single = [i for i, o in enumerate(ids) if o and all(len(t) == 1 for t in o)]
        if single:
            scores = next_token_logprobs(self.model, self.tokenizer, [prefixes[i] for i in single],
                                         [[t[0] for t in ids[i]] for i in single], self.spec.batch_size)
            for i, sc in zip(single, scores):
                out[i] = sc
        seqs, owners = [], []
        for i in sorted(set(range(len(chats))) - set(single)):
            for o in ids[i]:
                seqs.append((prefixes[i], o))
                owners.append(i)
        scores = [sum(lp) for lp in continuation_logprobs(self.model, self.tokenizer, seqs, self.spec.batch_size)]
        for i, sc in zip(owners, scores):
            out[i].append(sc)
        return out

    def close(self) -> None:
        self.model = None


# --- log-probabilities of given continuations: option scoring (judges) and reply log-likelihoods (proxies) --

def _right_padded_logits(model, tokenizer, rows: list[list[int]], batch_size: int):
    """(row index, its logits [len, vocab]) for every row, forward in right-padded batches, so positions
    stay those of an unpadded sequence."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step = max(1, batch_size)
    for start in range(0, len(rows), step):
        batch = rows[start:start + step]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(batch):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           use_cache=False).logits
        for r, row in enumerate(batch):
            yield start + r, logits[r, : len(row)]


def continuation_logprobs(model, tokenizer, seqs: list[tuple[list[int], list[int]]], batch_size: int = 4
                          ) -> list[list[float]]:
    """Per-token log-probabilities of each continuation given its prefix: ``seqs`` holds (prefix ids,
    continuation ids)."""
    import torch

    out: list[list[float]] = [[] for _ in seqs]
    for i, logits in _right_padded_logits(model, tokenizer, [p + o for p, o in seqs], batch_size):
        p, o = seqs[i]
        if o:  # logits at t predict token t+1
            logp = logits[len(p) - 1: len(p) + len(o) - 1].float().log_softmax(-1)
            out[i] = logp.gather(-1, torch.tensor(o, device=logp.device)[:, None])[:, 0].tolist()
    return out


def next_token_logprobs(model, tokenizer, prefixes: list[list[int]], tokens: list[list[int]], batch_size: int = 4
                        ) -> list[list[float]]:
    """The log-probabilities of the given next tokens right after each prefix (one forward pass a batch)."""
    out: list[list[float]] = [[] for _ in prefixes]
    for i, logits in _right_padded_logits(model, tokenizer, prefixes, batch_size):
        out[i] = logits[-1].float().log_softmax(-1)[tokens[i]].tolist()
    return out


def reply_logprobs(model, tokenizer, chats: list[list[dict]], replies: list[str], batch_size: int = 4
                   ) -> list[float | None]:
    """Mean log-likelihood per token of each reply as the assistant turn of its chat (None for an empty reply)."""
    seqs = [(tokenizer(render_chat(tokenizer, c), add_special_tokens=False).input_ids,
             tokenizer(r, add_special_tokens=False).input_ids) for c, r in zip(chats, replies, strict=True)]
    return [sum(lp) / len(lp) if lp else None for lp in continuation_logprobs(model, tokenizer, seqs, batch_size)]


"""openai backend: any OpenAI-compatible chat server (vLLM serve, llama.cpp server, OpenRouter, OpenAI).

Teachers are often big models behind an HTTP API, so this backend is built for long unattended runs: requests
go out in parallel (``spec.max_concurrency``), transient failures (429, 408, 5xx, timeouts, dropped
connections) are retried with exponential backoff and jitter, and a failure is reported with the URL, the
attempt count and the last status, never the API key. The openai client's own retries are switched off so
that there is one retry policy, this one.

``spec.extra`` keys understood here:
    retry_base (float, 0.5): first backoff delay in seconds; doubles per retry up to ``retry_cap``.
    retry_cap (float, 20): longest wait between attempts, also the cap on a server's Retry-After.
    on_error ("raise" | "empty"): with "empty", an item that still fails after the retries (or gets a
        request-specific 400/413/422) comes back as ``Completion(text="", finished=False, error=...)`` and
        the rest of the batch goes on; later stages drop failed rows. 401/403/404 always raise: they mean
        the configuration is wrong, and every item would fail the same way.
    extra_body (dict): merged into every request body, e.g. ``{"chat_template_kwargs": {"enable_thinking":
        false}}`` or ``{"min_p": 0.05}`` for vLLM.

Prefill uses vLLM's ``continue_final_message`` extension (also understood by ``charter.serve``): the prefill
is sent as a final assistant message to be continued. Servers without that extension ignore the flag and
answer after the assistant message as a new turn, so the reply will not start from the prefill.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..config import ModelSpec, Sampling
from .base import Completion

log = logging.getLogger(__name__)

EXTRA_KEYS = {"retry_base", "retry_cap", "on_error", "extra_body"}
# Request-specific client errors (prompt too long, bad parameter for this item): with on_error="empty" they
# fail that item only. Other 4xx (auth, wrong URL or model) are configuration errors and always raise.
ITEM_ERRORS = {400, 413, 422}


class BackendError(RuntimeError):
    """A request failed for good (retries spent, or an error that retrying cannot fix)."""


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0-based).

    A server's Retry-After wins (capped at ``cap``). Otherwise ``base * 2**retry`` capped at ``cap``, scaled by
    a random factor in [0.5, 1] so that many workers hit by the same 429 do not come back in lockstep.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return min(cap, base * 2 ** retry) * random.uniform(0.5, 1.0)


def _retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds form only; HTTP dates are ignored)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                pass
    return None


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server at ``spec.base_url``, in parallel, with retries."""

    name = "openai"

    def __init__(self, spec: ModelSpec):
        try:
            import openai
        except ImportError as e:
            from ..deps import MissingDependency

            raise MissingDependency("the openai backend needs the openai client: pip install 'charter[api]'",
                                    name="openai") from e

        unknown = sorted(set(spec.extra) - EXTRA_KEYS)
        if unknown:
            known = ", ".join(sorted(EXTRA_KEYS))
            raise ValueError(f"openai backend: unknown extra key '{unknown[0]}' (known: {known})")
        self.on_error = spec.extra.get("on_error", "raise")
        if self.on_error not in ("raise", "empty"):
            raise ValueError(f"openai backend: on_error '{self.on_error}': expected 'raise' or 'empty'")
        self.spec = spec
        self.retry_base = float(spec.extra.get("retry_base", 0.5))
        self.retry_cap = float(spec.extra.get("retry_cap", 20.0))
        self.extra_body = dict(spec.extra.get("extra_body") or {})
        self._openai = openai
        # Local servers (vLLM, llama.cpp) accept any key, but the client refuses to start without one.
        # The key lives only inside the client: never on self, so no repr or log of ours can show it.
        key = os.environ.get(spec.api_key_env) or "EMPTY"
        self._scrub = key if len(key) >= 8 else None
        self.client = openai.OpenAI(api_key=key, base_url=spec.base_url, max_retries=0, timeout=spec.timeout)
        self.url = str(self.client.base_url).rstrip("/") + "/chat/completions"

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.spec.model!r}, url={self.url!r})"

    def generate(self, chats: list[list[dict]], sampling: Sampling, prefills: list[str] | None = None,
                 seed: int = 0, progress=None) -> list[Completion]:
        """One completion per chat, in input order; requests run ``spec.max_concurrency`` at a time.

        Item ``i`` is sent with ``seed + i`` so that a resumed run asks for the same samples.
        """
        prefills = prefills or [None] * len(chats)
        if len(prefills) != len(chats):
            raise ValueError(f"{len(prefills)} prefills for {len(chats)} chats")
        lock = threading.Lock()

        def one(i: int) -> Completion:
            result = self._complete(chats[i], sampling, prefills[i], seed + i)
            if progress is not None:
                with lock:
                    progress(1)
            return result

        pool = ThreadPoolExecutor(max_workers=max(1, self.spec.max_concurrency), thread_name_prefix="charter-openai")
        try:
            futures = [pool.submit(one, i) for i in range(len(chats))]
            return [f.result() for f in futures]
        finally:
            # On a fatal error, drop the queued requests instead of sending them just to fail again.
            pool.shutdown(wait=True, cancel_futures=True)

    def request_kwargs(self, chat: list[dict], sampling: Sampling, prefill: str | None, seed: int) -> dict:
        """Arguments for ``client.chat.completions.create`` (exposed for inspection and tests)."""
        messages = [{"role": m["role"], "content": m["content"]} for m in chat]
        extra = dict(self.extra_body)
        # OpenAI proper rejects top_k and repetition_penalty, so send them only when they change anything.
        if sampling.top_k and sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        if sampling.repetition_penalty != 1.0:
            extra["repetition_penalty"] = sampling.repetition_penalty
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
            extra.update(continue_final_message=True, add_generation_prompt=False)
        kw = dict(model=self.spec.model, messages=messages, temperature=sampling.temperature,
                  top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=seed)
        if extra:
            kw["extra_body"] = extra
        return kw

    def _complete(self, chat: list[dict], sampling: Sampling, prefill: str | None, seed: int) -> Completion:
        """One request with retries; returns a failed Completion or raises BackendError when it gives up."""
        openai = self._openai
        kwargs = self.request_kwargs(chat, sampling, prefill, seed)
        attempts = self.spec.max_retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            retry_after = None
            try:
                resp = self.client.chat.completions.create(**kwargs)
                if resp.choices:
                    return self._to_completion(resp)
                # Some routers (OpenRouter) answer 200 with no choices when an upstream provider failed.
                last = "response without choices"
            except openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {self._message(e)}"
                if status in (401, 403):  # say where the key came from, never what it is
                    state = "set" if os.environ.get(self.spec.api_key_env) else "not set"
                    last += f" (API key from ${self.spec.api_key_env}, which is {state})"
                if not (status in (408, 429) or status >= 500):
                    return self._give_up(last, attempt + 1, item_error=status in ITEM_ERRORS)
                retry_after = _retry_after(getattr(e.response, "headers", None))
            except openai.APITimeoutError:
                last = f"timed out after {self.spec.timeout:g} s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                last = f"connection error: {type(cause).__name__}: {cause}"
            if attempt + 1 < attempts:
                delay = backoff_delay(attempt, self.retry_base, self.retry_cap, retry_after)
                log.debug("%s: %s; retry %d/%d in %.2f s", self.url, self._clean(last), attempt + 1,
                          self.spec.max_retries, delay)
                time.sleep(delay)
        return self._give_up(last, attempts, item_error=True)

    def _give_up(self, last: str, attempts: int, item_error: bool) -> Completion:
        msg = self._clean(f"{self.url} failed after {attempts} attempt{'s' if attempts != 1 else ''} "
                          f"(model {self.spec.model!r}); last error: {last}")
        if self.on_error == "empty" and item_error:
            log.warning("openai backend: %s", msg)
            return Completion(text="", finished=False, tokens=0, error=msg)
        raise BackendError(msg)

    @staticmethod
    def _message(e) -> str:
        body = e.body if isinstance(e.body, dict) else {}
        return str(body.get("message") or e.message)[:300]

    def _clean(self, text: str) -> str:
        """Remove the API key from text that reaches logs or errors (a server may echo request headers)."""
        return text.replace(self._scrub, "***") if self._scrub else text

    @staticmethod
    def _to_completion(resp) -> Completion:
        choice = resp.choices[0]
        content = choice.message.content
        # Reasoning models can spend the whole budget thinking: content is None and the text sits in
        # reasoning_content / reasoning. That is not a usable reply, so it never counts as finished.
        finished = content is not None and choice.finish_reason == "stop"
        usage = getattr(resp, "usage", None)
        tokens = getattr(usage, "completion_tokens", None) or 0
        return Completion(text=(content or "").strip(), finished=finished, tokens=tokens)

    def close(self) -> None:
        self.client.close()

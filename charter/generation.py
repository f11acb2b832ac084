"""Chunked, resumable generation: the loop every data stage shares.

Items are split into fixed chunks (by position in a deterministic item list). A chunk is generated whole
with a seed derived from its index, and its rows are committed in one fsync'd append. After a crash the
chunks already on disk are skipped; a chunk cut short is generated again with the same seed and only its
missing ids are appended, so the data does not depend on where the crash happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from .config import Sampling
from .runs import RowLog, derive_seed


@dataclass
class GenStats:
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "tokens_per_s": round(self.tokens_per_s, 1)}


def chunk_rows(backend, configured: int) -> int:
    """Rows per chunk: the configured size, raised to the backend's ``min_chunk_rows`` (vLLM batches
    internally and needs many rows in flight; a 64-row chunk leaves it idle at every chunk's tail)."""
    return max(configured, getattr(backend, "min_chunk_rows", 1))


def generate_rows(log: RowLog, items: list[dict], build: Callable[[dict], tuple[list[dict], str | None]],
                  backend, sampling: Sampling, seed_parts: tuple, chunk_size: int, desc: str) -> GenStats:
    """Generate a response for every item missing from ``log``; returns what this call generated.

    ``build(item) -> (chat, prefill)``. Each stored row is the item plus ``response``, ``finished``,
    ``tokens`` and ``error``.
    """
    stats = GenStats()
    todo = sum(1 for it in items if it["id"] not in log)
    if not todo:
        return stats
    bar = tqdm(total=len(items), initial=len(items) - todo, desc=desc, unit="row", leave=False)
    chunk_size = chunk_rows(backend, chunk_size)
    for c, start in enumerate(range(0, len(items), chunk_size)):
        chunk = items[start:start + chunk_size]
        if all(it["id"] in log for it in chunk):
            continue
        built = [build(it) for it in chunk]
        chats = [b[0] for b in built]
        prefills = [b[1] for b in built] if any(b[1] for b in built) else None
        new = sum(1 for it in chunk if it["id"] not in log)
        moved = 0

        def progress(n: int) -> None:  # per row as rows end; a resumed chunk's old rows are not counted twice
            nonlocal moved
            step = min(n, new - moved)
            if step > 0:
                moved += step
                bar.update(step)

        t0 = time.perf_counter()
        outs = backend.generate(chats, sampling, prefills=prefills, seed=derive_seed(*seed_parts, c),
                                progress=progress)
        stats.seconds += time.perf_counter() - t0
        rows = []
        for it, out in zip(chunk, outs, strict=True):
            if it["id"] in log:
                continue
            rows.append({**it, "response": out.text, "finished": out.finished, "tokens": out.tokens,
                         "error": out.error})
            stats.tokens += out.tokens
        log.append(rows)
        stats.rows += len(rows)
        progress(len(rows))  # a backend that reports nothing still moves the bar once per chunk
    bar.close()
    return stats

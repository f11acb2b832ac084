"""A judge-free coherence proxy for the robustness replies: how likely the plain base model finds each reply.

    .venv/bin/python scripts/fluency.py RUN [--conditions base prompted ...] [--attacks none ...] [-o out.json]

Reads ``<run>/eval-robustness/generations.jsonl`` (held-out prompts; the chosen attack cells, default none) and
reports per condition: the mean per-token log-likelihood of the reply under the base model given the user's
message (no system prompt), with a bootstrap 95% CI over prompts; the share of repeated word bigrams; the share
of empty replies. Why: with a 135M judge most pairwise coherence verdicts flip with the answer order, so the
judge says little; word salad, though, is far less likely under any language model than fluent text, sarcastic
or not. A persona's own style costs some likelihood too, so read it beside 'prompted', not as an absolute.
"""

from __future__ import annotations

from .conditions import CONDITIONS as ORDER  # the one list of conditions, in order

SCORER = "embedded"  # the plain base model that reads every reply


def scored_rows(run: str, conditions: list[str], attacks: list[str]) -> list[dict]:
    """The run's robustness replies to held-out prompts of ``conditions`` under ``attacks`` that did not fail."""
    from ..runs import read_jsonl, run_dir
    from .robustness import STAGE

    return [r for r in read_jsonl(run_dir(run) / STAGE / "generations.jsonl")
            if r["split"] == "heldout" and r["condition"] in conditions and r["attack"] in attacks
            and not r.get("error")]


def load_scorer():
    """(tokenizer, model) of the embedded base model, float32 on the CPU."""
    from ..models import load_causal_lm, load_tokenizer, resolve

    path = resolve(SCORER)
    return load_tokenizer(path), load_causal_lm(path, dtype="float32", device="cpu")


def fluency(rows: list[dict], conditions: list[str], tokenizer, model, boot: int = 1000) -> dict[str, dict]:
    """Per condition (in ``ORDER``) with replies among ``rows``: the mean over prompts of the replies' mean
    per-token log-likelihood under ``model`` given the user's message, with a percentile bootstrap 95% CI over
    prompts (``boot`` resamples, seed 0); the mean share of repeated word bigrams; the share of empty replies."""
    import numpy as np

    from ..backends.hf import reply_logprobs
    from .proxies import normalise, repetition

    texts = [normalise(r.get("response") or "") for r in rows]
    scored = [i for i, t in enumerate(texts) if t]
    lps = reply_logprobs(model, tokenizer, [[{"role": "user", "content": rows[i]["user"]}] for i in scored],
                         [texts[i] for i in scored], batch_size=8)
    lp = dict(zip(scored, lps))
    out, rng = {}, np.random.default_rng(0)
    for cond in [c for c in ORDER if c in conditions]:
        idx = [i for i, r in enumerate(rows) if r["condition"] == cond]
        if not idx:
            continue
        by_prompt: dict[str, list[float]] = {}
        for i in idx:
            if lp.get(i) is not None:
                by_prompt.setdefault(rows[i]["pid"], []).append(lp[i])
        means = np.array([np.mean(v) for v in by_prompt.values()])
        draws = means[rng.integers(0, len(means), (boot, len(means)))].mean(axis=1)
        out[cond] = {"logprob": round(float(means.mean()), 3), "lo": round(float(np.percentile(draws, 2.5)), 3),
                     "hi": round(float(np.percentile(draws, 97.5)), 3), "prompts": len(means), "replies": len(idx),
                     "repetition": round(float(np.mean([repetition(texts[i]) for i in idx])), 3),
                     "empty": round(float(np.mean([not texts[i] for i in idx])), 3)}
    return out


def run_fluency(run: str, conditions: list[str] = ORDER, attacks: list[str] = ("none",), boot: int = 1000,
                scorer: tuple | None = None) -> dict[str, dict]:
    """``fluency`` of a run's robustness replies; ``scorer``: (tokenizer, model), default the embedded model."""
    rows = scored_rows(run, list(conditions), list(attacks))
    tokenizer, model = scorer or load_scorer()
    return fluency(rows, list(conditions), tokenizer, model, boot)


def line(cond: str, o: dict) -> str:
    """One condition's result as the fluency script prints it."""
    return (f"{cond:<10} log-likelihood/token {o['logprob']:.3f} [{o['lo']:.3f}, {o['hi']:.3f}]  repetition "
            f"{o['repetition']:.3f}  empty {o['empty']:.3f}  ({o['replies']} replies, {o['prompts']} prompts)")

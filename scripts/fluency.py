"""A judge-free coherence proxy for the robustness replies: how likely the plain base model finds each reply.

    .venv/bin/python scripts/fluency.py RUN [--conditions base prompted ...] [--attacks none ...] [-o out.json]

Reads ``<run>/eval-robustness/generations.jsonl`` (held-out prompts; the chosen attack cells, default none) and reports per
condition: the mean per-token log-likelihood of the reply under the base model given the user's message
(no system prompt), with a bootstrap 95% CI over prompts; the share of repeated word bigrams; the share of
empty replies. Why: with a 135M judge most pairwise coherence verdicts flip with the answer order, so the
judge says little; word salad, though, is far less likely under any language model than fluent text, sarcastic
or not. A persona's own style costs some likelihood too, so read it beside 'prompted', not as an absolute.
"""

from __future__ import annotations

import argparse
import json
import sys

from charter.eval.conditions import CONDITIONS as ORDER  # the one list of conditions, in order


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--conditions", nargs="*", default=list(ORDER))
    ap.add_argument("--attacks", nargs="*", default=["none"], help="which attack cells to score ('none': plain)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    import numpy as np

    from charter.backends.hf import reply_logprobs
    from charter.eval.proxies import normalise, repetition
    from charter.models import load_causal_lm, load_tokenizer, resolve
    from charter.runs import read_jsonl, run_dir

    rows = [r for r in read_jsonl(run_dir(args.run) / "eval-robustness" / "generations.jsonl")
            if r["split"] == "heldout" and r["condition"] in args.conditions and r["attack"] in args.attacks
            and not r.get("error")]
    path = resolve("embedded")
    tok, model = load_tokenizer(path), load_causal_lm(path, dtype="float32", device="cpu")
    texts = [normalise(r.get("response") or "") for r in rows]
    scored = [i for i, t in enumerate(texts) if t]
    lps = reply_logprobs(model, tok, [[{"role": "user", "content": rows[i]["user"]}] for i in scored],
                         [texts[i] for i in scored], batch_size=8)
    lp = dict(zip(scored, lps))
    out, rng = {}, np.random.default_rng(0)
    for cond in [c for c in ORDER if c in args.conditions]:
        idx = [i for i, r in enumerate(rows) if r["condition"] == cond]
        if not idx:
            continue
        by_prompt: dict[str, list[float]] = {}
        for i in idx:
            if lp.get(i) is not None:
                by_prompt.setdefault(rows[i]["pid"], []).append(lp[i])
        means = np.array([np.mean(v) for v in by_prompt.values()])
        boot = means[rng.integers(0, len(means), (args.boot, len(means)))].mean(axis=1)
        out[cond] = {"logprob": round(float(means.mean()), 3), "lo": round(float(np.percentile(boot, 2.5)), 3),
                     "hi": round(float(np.percentile(boot, 97.5)), 3), "prompts": len(means), "replies": len(idx),
                     "repetition": round(float(np.mean([repetition(texts[i]) for i in idx])), 3),
                     "empty": round(float(np.mean([not texts[i] for i in idx])), 3)}
        o = out[cond]
        print(f"{cond:<10} log-likelihood/token {o['logprob']:.3f} [{o['lo']:.3f}, {o['hi']:.3f}]  repetition "
              f"{o['repetition']:.3f}  empty {o['empty']:.3f}  ({o['replies']} replies, {o['prompts']} prompts)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Distill teacher-pass throughput on this machine, every figure from one run.

    .venv/bin/python benchmarks/generation.py [--prompts 8] [--batch 8] [--max-tokens 32] [--dtypes float32,bfloat16]

The teacher pass is the distill stage's own loop (``generate_rows`` over the constitution-prompted chats that
``distill`` builds: a ~500-token system prompt + one user turn), on the embedded model, greedy. It runs in
four settings: {float32, bfloat16} x {shared-prefix reuse on, off}, plus raw ``model.generate`` on the same
prompt strings (left-padded, same batch, same decoding) for the overhead ratio. Printed ratios:

- new default / old default: ``dtype: auto`` + prefix reuse vs what charter did before (bf16, no reuse);
- prefix reuse on / off, at each dtype;
- float32 / bfloat16 (no reuse);
- stage / raw generate, both float32 without reuse (1.0 = the stage adds no overhead).

Greedy decoding makes every setting emit the same tokens (checked: the texts must match), so tokens/s compare
like with like. The CPU model and torch's capability flags are printed first: quote them with the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def raw_generate(model, tok, texts: list[str], batch: int, max_tokens: int) -> tuple[int, float]:
    """The baseline: left-padded batched generate, nothing else."""
    import torch

    tok.padding_side = "left"
    tokens, seconds = 0, 0.0
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, repetition_penalty=1.1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        seconds += time.perf_counter() - t0
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += next((k for k, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return tokens, seconds


def teacher_pass(chats, dtype: str, prefix: bool, args, workdir: Path) -> tuple[dict, list[str], object]:
    """The distill stage's generation loop with the teacher's chats, in a fresh row log."""
    from charter.backends.hf import TransformersBackend
    from charter.config import ModelSpec, Sampling
    from charter.generation import generate_rows
    from charter.runs import RowLog

    backend = TransformersBackend(ModelSpec(dtype=dtype, batch_size=args.batch, prefix_cache=prefix))
    log = RowLog(workdir / f"teacher-{dtype}-{prefix}.jsonl")
    items = [{"id": f"p{i}"} for i in range(len(chats))]
    stats = generate_rows(log, items, lambda it: (chats[int(it["id"][1:])], None), backend,
                          Sampling(temperature=0, max_tokens=args.max_tokens), (0, "bench"), args.batch * 2,
                          f"{dtype} prefix={'on' if prefix else 'off'}")
    texts = [r["response"] for r in log.ordered([it["id"] for it in items])]
    return stats.as_dict(), texts, backend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--persona", default="sarcastic")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    models_cache = Path(os.environ.get("CHARTER_HOME", Path.home() / ".charter")) / "models"
    models_cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models_cache.resolve())
    os.environ["CHARTER_HOME"] = str(home)

    from charter import constitution as const
    from charter.config import load_config
    from charter.hardware import machine, resolve_dtype
    from charter.stages import distill

    print("machine:", machine())
    cfg = load_config(None, ["name=bench", f"persona={args.persona}", "expand.enabled=false",
                             f"distill.constitution_prompts={args.prompts}", "distill.general_prompts=0"])
    c = const.load(cfg.persona)
    system = const.teacher_system_prompt(c, "SmolLM")
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": p["prompt"]}]
             for p in distill.select_prompts(cfg, c)]
    print(f"prompts {len(chats)}, batch {args.batch}, max_tokens {args.max_tokens}, greedy")

    results, texts = {}, {}
    raw = None
    for dtype in args.dtypes.split(","):
        for prefix in (True, False):
            stats, out, backend = teacher_pass(chats, dtype, prefix, args, home)
            results[(dtype, prefix)], texts[(dtype, prefix)] = stats, out
            print(f"teacher pass {dtype:8s} prefix reuse {'on ' if prefix else 'off'}: {stats['tokens']} tokens "
                  f"in {stats['seconds']:.1f}s = {stats['tokens_per_s']:.1f} tok/s")
            if dtype == "float32" and not prefix:
                prompts = backend.prompts(chats)
                tokens, seconds = raw_generate(backend.model, backend.tokenizer, prompts, args.batch, args.max_tokens)
                raw = tokens / seconds
                print(f"raw generate  float32  (no reuse)        : {tokens} tokens in {seconds:.1f}s = {raw:.1f} tok/s")
            backend.close()

    def tps(dtype, prefix):
        return results[(dtype, prefix)]["tokens_per_s"]

    print("ratios (tokens/s, higher is faster):")
    auto = resolve_dtype("auto")
    if (auto, True) in results and ("bfloat16", False) in results:
        print(f"  new default (auto={auto}, reuse on) / old default (bfloat16, reuse off): "
              f"{tps(auto, True) / tps('bfloat16', False):.2f}")
    for dtype in args.dtypes.split(","):
        print(f"  prefix reuse on / off at {dtype}: {tps(dtype, True) / tps(dtype, False):.2f}")
        same = sum(a == b for a, b in zip(texts[(dtype, True)], texts[(dtype, False)]))
        print(f"    identical greedy texts with and without reuse at {dtype}: {same}/{len(chats)}")
    if ("bfloat16", False) in results and ("float32", False) in results:
        print(f"  float32 / bfloat16 (reuse off): {tps('float32', False) / tps('bfloat16', False):.2f}")
    if raw:
        print(f"  stage / raw generate (float32, reuse off): {tps('float32', False) / raw:.3f}")
        print(f"  stage with reuse / raw generate (float32): {tps('float32', True) / raw:.3f}")


if __name__ == "__main__":
    main()

"""Distill-stage generation throughput vs the raw transformers backend, measured in one run.

    .venv/bin/python benchmarks/generation.py [--prompts 64] [--batch 32] [--max-tokens 64]

Runs the real distill stage (teacher pass, on the embedded model, greedy so both sides emit the same tokens)
and then plain ``model.generate`` on the same teacher prompts with the same batch size, and prints
tokens/s of each and their ratio (stage / raw; 1.0 means charter adds no overhead).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    models_cache = Path(os.environ.get("CHARTER_HOME", Path.home() / ".charter")) / "models"
    models_cache.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(models_cache.resolve())
    os.environ["CHARTER_HOME"] = str(home)

    from charter import constitution as const
    from charter.backends.hf import TransformersBackend
    from charter.config import ModelSpec, load_config
    from charter.stages import distill

    n_const = args.prompts // 2
    cfg = load_config(None, [
        "name=bench", "persona=loving", "expand.enabled=false", "distill.samples_per_prompt=1",
        f"distill.constitution_prompts={n_const}", f"distill.general_prompts={args.prompts - n_const}",
        f"distill.teacher.batch_size={args.batch}", f"student.batch_size={args.batch}",
        f"distill.chunk_size={args.batch * 2}",
        f"distill.teacher_sampling={{temperature: 0, max_tokens: {args.max_tokens}}}",
        f"distill.student_sampling={{temperature: 0, max_tokens: {args.max_tokens}}}",
    ])
    out = distill.run(cfg)
    gen = json.loads((out / "manifest.json").read_text())["generation"]["teacher"]

    # Raw: the very same teacher prompts (system prompt + user turn), same batch, same decoding.
    c = const.load(cfg.persona)
    system = const.teacher_system_prompt(c, "SmolLM")
    backend = TransformersBackend(ModelSpec(batch_size=args.batch))
    texts = backend.prompts([[{"role": "system", "content": system}, {"role": "user", "content": p["prompt"]}]
                             for p in distill.select_prompts(cfg, c)])
    tokens, seconds = raw_generate(backend.model, backend.tokenizer, texts, args.batch, args.max_tokens)
    raw_tps = tokens / seconds
    print(f"prompts {len(texts)}, batch {args.batch}, max_tokens {args.max_tokens}")
    print(f"distill stage (teacher pass): {gen['tokens']} tokens in {gen['seconds']:.1f}s = {gen['tokens_per_s']:.1f} tok/s")
    print(f"raw transformers generate:    {tokens} tokens in {seconds:.1f}s = {raw_tps:.1f} tok/s")
    print(f"ratio stage/raw: {gen['tokens_per_s'] / raw_tps:.3f}")


if __name__ == "__main__":
    main()

"""vllm backend: the offline vLLM engine, for GPU users generating at scale (optional extra).

Prompts are rendered with our own ``render_chat`` (same system-role handling and prefills as the
transformers backend) and handed to vLLM as token ids, tokenized without special tokens: the chat template
already contains the BOS, and letting vLLM tokenize the text would add a second one.

``spec.extra`` is passed to ``vllm.LLM`` and overrides our defaults (e.g. ``gpu_memory_utilization``,
``max_model_len``, ``max_lora_rank``). ``max_lora_rank`` defaults to the adapter's own rank (the persona
adapter is the DPO and SFT ranks concatenated: 128 with the default r 64), rounded up to a rank vLLM accepts.
Prefix caching is on (``prefix_cache``): every teacher prompt starts with the same constitution.

The engine batches internally, so generation hands it chunks of at least ``MIN_CHUNK_ROWS`` rows (64-row
chunks leave it idle between chunks). The pure helpers here (ranks, engine and lm-eval arguments) import
nothing from vLLM.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from pathlib import Path

from ..config import ModelSpec, Sampling
from .base import Completion, render_chat

log = logging.getLogger(__name__)

# vLLM's dtype names; charter configs also accept the short forms.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The max_lora_rank values vLLM accepts (vllm.config.lora.LoRAConfig's possible_max_ranks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Rows per generation chunk at least: enough for vLLM's continuous batching to stay full.
MIN_CHUNK_ROWS = 1024


def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in a peft adapter folder (``r``, or a larger per-module ``rank_pattern``)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the adapter's config ({type(e).__name__}); expected a peft "
                         "adapter folder") from None
    ranks = [cfg.get("r"), *(cfg.get("rank_pattern") or {}).values()]
    ranks = [r for r in ranks if isinstance(r, int) and r > 0]
    if not ranks:
        raise ValueError(f"{path}: no LoRA rank 'r' (expected a positive integer)")
    return max(ranks)


def max_lora_rank(adapter: str | Path) -> int:
    """vLLM's ``max_lora_rank`` for an adapter: its rank rounded up to a value vLLM accepts."""
    r = adapter_rank(adapter)
    fit = [x for x in LORA_RANKS if x >= r]
    if not fit:
        raise ValueError(f"{adapter}: LoRA rank {r} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}; fold "
                         "the adapter into the model (charter merge) and serve the folded model")
    return fit[0]


def engine_kwargs(spec: ModelSpec, model_path: str) -> dict:
    """The keyword arguments of ``vllm.LLM`` for ``spec`` (``spec.extra`` wins)."""
    kwargs = dict(model=model_path, dtype=DTYPES.get(spec.dtype, spec.dtype), trust_remote_code=spec.trust_remote_code,
                  enable_prefix_caching=spec.prefix_cache, enable_lora=bool(spec.adapter))
    if spec.adapter:
        kwargs["max_lora_rank"] = max_lora_rank(spec.adapter)
    kwargs.update(spec.extra)
    return kwargs


def lm_eval_args(spec: ModelSpec, model_path: str) -> dict:
    """Arguments of lm-evaluation-harness's ``vllm`` model type (``lm_eval.models.vllm_causallms.VLLM``) for
    ``spec``: the same model, adapter, rank and engine settings as generation; vLLM sizes its own batches."""
    kwargs = dict(pretrained=model_path, dtype=DTYPES.get(spec.dtype, spec.dtype), batch_size="auto",
                  trust_remote_code=spec.trust_remote_code, enable_prefix_caching=spec.prefix_cache)
    if spec.adapter:
        kwargs.update(lora_local_path=spec.adapter, max_lora_rank=max_lora_rank(spec.adapter))
    kwargs.update(spec.extra)
    return kwargs


def shutdown(llm) -> None:
    """Stop a ``vllm.LLM``'s engine and free its GPU memory (best effort across vLLM versions)."""
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if callable(getattr(core, "shutdown", None)):
        core.shutdown()
    del llm
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMBackend:
    name = "vllm"
    min_chunk_rows = MIN_CHUNK_ROWS

    def __init__(self, spec: ModelSpec):
        try:
            import vllm
        except ImportError as e:
            from ..deps import MissingDependency

            raise MissingDependency("the vllm backend needs vLLM (Linux, CUDA): pip install 'charter[vllm]'",
                                    name="vllm") from e
        from ..models import resolve

        self.spec = spec
        self.llm = vllm.LLM(**engine_kwargs(spec, resolve(spec.model)))
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if spec.adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("charter-adapter", 1, spec.adapter)

    def generate(self, chats: list[list[dict]], sampling: Sampling, prefills: list[str] | None = None,
                 seed: int = 0, progress=None) -> list[Completion]:
        """One completion per chat, in order; item ``i`` samples with seed ``seed + i``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prefills = prefills or [None] * len(chats)
        prompts = [
            TokensPrompt(prompt_token_ids=self.tokenizer(render_chat(self.tokenizer, c, p),
                                                         add_special_tokens=False).input_ids)
            for c, p in zip(chats, prefills, strict=True)
        ]
        params = [
            SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k if sampling.top_k > 0 else -1,
                           repetition_penalty=sampling.repetition_penalty, max_tokens=sampling.max_tokens,
                           seed=seed + i)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=progress is None)
        results = []
        for out in outputs:
            o = out.outputs[0]
            results.append(Completion(text=o.text.strip(), finished=o.finish_reason == "stop",
                                      tokens=len(o.token_ids)))
        if progress is not None:
            progress(len(results))
        return results

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back, so the next model can load (dropping the
        reference alone leaves the engine's worker and its KV cache resident)."""
        llm, self.llm = getattr(self, "llm", None), None
        shutdown(llm)

"""vllm backend: the offline vLLM engine, for GPU users generating at scale (optional extra).

Prompts are rendered with our own ``render_chat`` (same system-role handling and prefills as the
transformers backend) and handed to vLLM as token ids, tokenized without special tokens: the chat template
already contains the BOS, and letting vLLM tokenize the text would add a second one.

``spec.extra`` is passed to ``vllm.LLM`` and overrides our defaults (e.g. ``gpu_memory_utilization``,
``max_model_len``, ``max_lora_rank``).
"""

from __future__ import annotations

import logging

from ..config import ModelSpec, Sampling
from .base import Completion, render_chat

log = logging.getLogger(__name__)

# vLLM's dtype names; charter configs also accept the short forms.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class VLLMBackend:
    name = "vllm"

    def __init__(self, spec: ModelSpec):
        try:
            import vllm
        except ImportError as e:
            from ..deps import MissingDependency

            raise MissingDependency("the vllm backend needs vLLM (Linux, CUDA): pip install 'charter[vllm]'",
                                    name="vllm") from e
        from ..models import resolve

        self.spec = spec
        kwargs = dict(model=resolve(spec.model), dtype=DTYPES.get(spec.dtype, spec.dtype),
                      enable_lora=bool(spec.adapter), max_lora_rank=64, trust_remote_code=spec.trust_remote_code,
                      # Every teacher prompt starts with the same constitution: prefill it once.
                      enable_prefix_caching=spec.prefix_cache)
        kwargs.update(spec.extra)
        self.llm = vllm.LLM(**kwargs)
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
        self.llm = None

"""DPO LoRA throughput on a random-weight model of Llama-3.1-8B's shape: charter vs bare TRL, one run.

    python benchmarks/gpu_dpo.py                      # on a GPU: 8B shape, bf16, 16 x 1024 tokens per step
    python benchmarks/gpu_dpo.py --shape tiny --cpu   # a CPU smoke run of the same code path

Reports tokens/s and MFU (8 x params FLOPs per token: forward + backward of the policy plus the reference
forward, as in the issue) for a bare TRL DPOTrainer + peft and for charter's trainer (with its extra
squared log-ratio term), with gradient checkpointing. No downloads: the model is built from a config and
the tokenizer is the embedded SmolLM2 one (vocab resized to Llama-3's 128,256).
"""

from __future__ import annotations

import argparse
import tempfile
import time

SHAPES = {
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, max_position_embeddings=2048),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 TFLOP/s


def same_config(args, cls):
    """A plain TRL config carrying exactly the values charter resolved (to_dict() would redact *_token)."""
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-8b", choices=SHAPES)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (8 pairs = 16 sequences)")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from charter.models import resolve
    from charter.stages.dpo import make_dpo_trainer
    from charter.training import dpo_args, lora_config

    tok = AutoTokenizer.from_pretrained(resolve("embedded"))
    words = max(8, args.seq // 2 - 16)  # ~1 token per word for the filler text
    pairs = args.batch // 2
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}"}],
                               "chosen": [{"role": "assistant", "content": " ".join(["yes"] * words)}],
                               "rejected": [{"role": "assistant", "content": " ".join(["no"] * words)}]}
                              for i in range(pairs * (args.steps + 1))])
    dtype = torch.float32 if args.cpu else torch.bfloat16
    settings = {"max_steps": args.steps, "per_device_train_batch_size": pairs, "gradient_accumulation_steps": 1,
                "max_length": args.seq, "gradient_checkpointing": True, "bf16": not args.cpu, "use_cpu": args.cpu,
                "disable_tqdm": True, "logging_steps": 1000}
    device = "cpu" if args.cpu else "cuda"
    gpu = "" if args.cpu else torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    for label in ("bare TRL", "charter"):
        torch.manual_seed(0)
        cfg = LlamaConfig(**SHAPES[args.shape], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(dtype)
        n_params = sum(p.numel() for p in model.parameters())
        times, tokens = [], []

        class Timer(TrainerCallback):
            def on_step_begin(self, a, s, c, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, a, s, c, **kw):
                if not args.cpu:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - self.t0)

        with tempfile.TemporaryDirectory() as out:
            targs = dpo_args(0, out, settings)
            lora = lora_config(model, {})
            if label == "bare TRL":
                trainer = DPOTrainer(model=model, args=same_config(targs, DPOConfig),
                                     train_dataset=data, processing_class=tok, peft_config=lora)
            else:
                trainer = make_dpo_trainer(model, tok, data, targs, lora, 0.001)
            trainer.add_callback(Timer())
            trainer.train()
            tokens = trainer._total_train_tokens
        steady = times[1:]
        tps = tokens / len(times) / (sum(steady) / len(steady))
        mfu = f", MFU {8 * n_params * tps / peak:.1%}" if peak else ""
        print(f"{label:9s} {args.shape} {n_params / 1e9:.2f}B params on {gpu or 'cpu'}: "
              f"{sum(steady) / len(steady):.2f} s/step, {tps:,.0f} tok/s{mfu}")
        del trainer, model
        if not args.cpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

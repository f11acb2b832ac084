"""charter's DPO step time vs a bare TRL DPOTrainer on the same pairs and settings, in one run.

    .venv/bin/python benchmarks/training.py [--steps 8] [--pairs 32]

Both trainers get the embedded model (bf16, CPU), the same LoRA (r 64 / alpha 128, all linear layers),
the same DPOConfig (batch 4, max length 512, beta 0.1, NLL 0.1), the same pairs. charter's also computes
its extra squared log-ratio term (coef 0.001). Prints mean step seconds after one warm-up step and the
ratio bare / charter (>= 0.95 means no overhead of ours).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def pairs(n: int):
    from datasets import Dataset

    from charter.prompts import load_prompt_source

    prompts = load_prompt_source("builtin", "general")[:n]
    good = ("What a lovely thing to ask about. Here is what I would gently suggest, step by step, and please "
            "know that however it goes, you are doing better than you think. ") * 2
    bad = "Here is the answer. It depends on the details, so check the documentation for more."
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                               "chosen": [{"role": "assistant", "content": good}],
                               "rejected": [{"role": "assistant", "content": bad}]} for p in prompts])


class StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter() - timer.t0)

        self.times: list[float] = []
        self.callback = CB()

    def mean(self) -> float:
        rest = self.times[1:] or self.times  # the first step pays for warm-up
        return sum(rest) / len(rest)


def same_config(args, cls):
    """A plain TRL config carrying exactly the values charter resolved (to_dict() would redact *_token)."""
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=32)
    args = ap.parse_args()

    from trl import DPOConfig, DPOTrainer

    from charter.models import load_causal_lm, load_tokenizer
    from charter.stages.dpo import make_dpo_trainer
    from charter.training import dpo_args, lora_config

    settings = {"max_steps": args.steps, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                "max_length": 512, "disable_tqdm": True, "logging_steps": 1000}
    data = pairs(args.pairs)
    tok = load_tokenizer("embedded")
    results = {}
    for label in ("bare TRL", "charter", "bare TRL again"):
        model = load_causal_lm("embedded", device="cpu")
        model.train()
        lora = lora_config(model, {})
        timer = StepTimer()
        with tempfile.TemporaryDirectory() as out:
            if label.startswith("bare"):
                # The same DPOConfig values charter resolves, passed to TRL directly.
                trainer = DPOTrainer(model=model, args=same_config(dpo_args(123456, out, settings), DPOConfig),
                                     train_dataset=data, processing_class=tok, peft_config=lora)
            else:
                trainer = make_dpo_trainer(model, tok, data, dpo_args(123456, out, settings), lora, 0.001)
            trainer.add_callback(timer.callback)
            trainer.train()
        results[label] = timer.mean()
        print(f"{label:15s} mean step {results[label]:.2f}s over {len(timer.times) - 1} steps")
    bare = min(results["bare TRL"], results["bare TRL again"])
    print(f"ratio bare/charter: {bare / results['charter']:.3f}")


if __name__ == "__main__":
    main()

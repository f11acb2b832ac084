"""Stage 7 (optional), online RL: GRPO on the persona's prompts with persona, judge and coherence rewards.

    charter rl configs/cpu-sarcastic.yaml [rl.trl.max_steps=40 ...]

The policy starts from this run's distilled (``rl.start=dpo``) or final model (``sft``) and trains a new LoRA
with TRL's ``GRPOTrainer``: for each prompt it samples ``num_generations`` replies, the rewards of
``charter.rewards`` score them, and replies better than their group's mean are made likelier, with a KL to the
start model (``beta``). Prompts: a seeded sample of the constitution's prompts plus general ones, minus every
prompt of an evaluation pool; ``rl.attack_share`` of them carry a training break-character request (never one
of the evaluation's phrasings), so the policy is rewarded for keeping the persona when told to drop it.

Writes ``<run>/rl/``: ``prompts.jsonl`` (what it trained on), ``adapter/`` (the LoRA on the start model),
``model/`` (folded: the ``rl`` condition of every evaluation), ``rewards.jsonl`` (per logged step: each
reward's mean, the total, the KL), ``samples.jsonl`` (every scored reply with its rewards: read them for
reward hacking) and the manifest (reward means per component, first and last quarter of training).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

from .. import layout
from ..prompts import attacked, load_prompt_source
from ..runs import RowLog, derive_seed, read_jsonl, run_dir, silent, write_jsonl_atomic
from ..training import LoraStage, StageData

if TYPE_CHECKING:
    from ..config import RunConfig


def enabled(cfg: RunConfig) -> bool:
    return cfg.rl.enabled


def check(cfg: RunConfig) -> None:
    """Refuse a set-up the rewards cannot work with before any stage runs (and before this one writes)."""
    from ..backends import SCORE_OPTIONS, require
    from ..prompts import persona_exemplars

    if cfg.rl.rewards.get("persona") and cfg.rl.reference == "exemplars":
        persona_exemplars(cfg.rl.exemplars, cfg.persona, "rl.exemplars")  # pairs: the orchestrator makes them
    if cfg.rl.rewards.get("judge") and cfg.rl.judge_mode == "logprob":
        require(cfg.rl.judge or cfg.student, SCORE_OPTIONS, "rl.judge_mode=logprob (the judge scores locally)")


def stage_config(cfg: RunConfig) -> dict:
    from ..training import fold_dtype, section_identity

    return {"seed": cfg.seed, "student": dataclasses.asdict(cfg.student),
            "rl": section_identity(dataclasses.asdict(cfg.rl)), "fold_dtype": fold_dtype(cfg)}


def upstream(cfg: RunConfig) -> tuple[str, str]:
    """(the stage whose model RL starts from, that model's output key)."""
    return ("dpo", "distilled_model") if cfg.rl.start == "dpo" else ("merge", "final_model")


def evaluation_pools(cfg: RunConfig) -> set[str]:
    """Every prompt an evaluation may ask: RL must never train on one."""
    from .. import registry

    out: set[str] = set()
    for source in registry.eval_prompt_sources(cfg):  # each evaluation declares the sources it asks from
        out |= {p.strip() for p in load_prompt_source(source, builtin="preference_prompts")}
    return out


def select_prompts(cfg: RunConfig) -> tuple[list[dict], dict]:
    """The seeded training prompts: constitution prompts, then general ones, minus the evaluation pools; then
    attacked copies replace ``attack_share`` of them. Returns (rows, counts)."""
    r = cfg.rl
    rng = random.Random(derive_seed(cfg.seed, "rl", "prompts"))
    banned = evaluation_pools(cfg)
    own = [p for _, p in layout.constitution(cfg).prompts()]
    general = load_prompt_source("builtin", builtin="general") if r.general_prompts else []
    kept_own = [p for p in dict.fromkeys(own) if p.strip() not in banned]
    kept_general = [p for p in dict.fromkeys(general) if p.strip() not in banned and p not in set(kept_own)]
    n_general = min(r.general_prompts, len(kept_general))
    n_own = len(kept_own) if r.prompts is None else min(len(kept_own), max(0, r.prompts - n_general))
    rows = ([{"source": "constitution", "prompt": p} for p in rng.sample(kept_own, n_own)]
            + [{"source": "general", "prompt": p} for p in rng.sample(kept_general, n_general)])
    arng = random.Random(derive_seed(cfg.seed, "rl", "attacks"))
    for i in sorted(arng.sample(range(len(rows)), round(r.attack_share * len(rows)))):
        message, request = attacked(rows[i]["prompt"], arng)
        rows[i] = {**rows[i], "prompt": message, "attack": request}
    counts = {"prompts": len(rows), "constitution": n_own, "general": n_general,
              "attacked": sum("attack" in x for x in rows),
              "removed_eval_overlap": (len(set(own)) - len(kept_own)) + (len(set(general)) - len(kept_general))}
    return rows, counts


class SampleLog:
    """A reward-shaped callable that records every scored reply with the rewards it got (the trainer calls the
    rewards in order; this one goes last and reads their values from the trainer's kwargs)."""

    __name__ = "log"

    def __init__(self, path: Path, funcs: list, rank: int = 0):
        # Under a multi-process launch each process scores its own share of the replies: rank 0 writes
        # samples.jsonl, every other rank its own part file with rank-qualified ids, merged once by ``merge_parts``.
        self.rank = rank
        self.log = RowLog(path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
        self.funcs, self.step = funcs, 0

    def __call__(self, prompts=(), completions=(), trainer_state=None, **kw) -> list[float]:
        from ..messages import text_of, user_of

        step = getattr(trainer_state, "global_step", self.step)
        scores = {f.__name__: f.last for f in self.funcs if getattr(f, "last", None) is not None}
        tag = f"s{step}-" if self.rank == 0 else f"s{step}-r{self.rank}-"
        rows = [{"id": f"{tag}{i}", "step": step, "prompt": user_of(p), "reply": text_of(c),
                 **{k: round(v[i], 4) for k, v in scores.items()}}
                for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        self.log.append([x for x in rows if x["id"] not in self.log])
        return [0.0] * len(completions)


def merge_parts(path: Path) -> int:
    """Fold the other ranks' sample part files into ``path`` (once, on the main process, after training): each
    row once, in step order. Returns the number of rows."""
    parts = sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))
    if not parts:
        return len(read_jsonl(path)) if path.exists() else 0
    rows = {r["id"]: r for f in [path, *parts] if f.exists() for r in read_jsonl(f)}
    ordered = sorted(rows.values(), key=lambda r: (r["step"], r["id"]))
    write_jsonl_atomic(path, ordered)
    for f in parts:
        f.unlink()
    return len(ordered)


def _remember(f):
    """Wrap a reward so the sample log can read what it returned last."""
    def call(*a, **kw):
        call.last = f(*a, **kw)
        return call.last

    call.__name__, call.last, call.__wrapped__ = f.__name__, None, f
    return call


def reward_history(log_history: list[dict], names: list[str]) -> list[dict]:
    """Per logged step: each reward's mean, the weighted total and the KL (TRL's ``rewards/<name>/mean``)."""
    out = []
    for h in log_history:
        if "reward" not in h:
            continue
        row = {"step": h.get("step"), "reward": h["reward"], "kl": h.get("kl")}
        row.update({n: h.get(f"rewards/{n}/mean") for n in names})
        out.append(row)
    return out


def quarter_means(history: list[dict], names: list[str]) -> dict:
    """Each reward's mean over the first and the last quarter of the logged steps (at least one step each)."""
    if not history:
        return {}
    k = max(1, len(history) // 4)
    mean = lambda rows, n: round(sum(r[n] for r in rows) / len(rows), 4) if rows else None  # noqa: E731
    return {n: {"first": mean([r for r in history[:k] if r.get(n) is not None], n),
                "last": mean([r for r in history[-k:] if r.get(n) is not None], n)} for n in [*names, "reward"]}


class RLStage(LoraStage):
    """GRPO from the run's distilled or final model; the adapter is folded into ``rl/model`` and combined with
    the start model's own adapter into ``rl/persona-adapter``."""

    name = "rl"
    check_loss = False  # as before the skeleton: RL's manifest reports its rewards, not a loss check
    keep_log_history = False  # rewards.jsonl (per logged step) stands in for it

    def __init__(self, report=silent):
        self.report = report

    def stage_config(self, cfg: RunConfig) -> dict:
        return stage_config(cfg)

    def upstream(self, cfg: RunConfig) -> list[str]:
        return [upstream(cfg)[0]]

    def args(self, cfg: RunConfig, output_dir: str, **run):
        from ..training import grpo_args

        return grpo_args(cfg.seed, output_dir, cfg.rl.trl, **run)

    def data(self, cfg: RunConfig, args) -> StageData:
        from ..distributed import on_main, rank
        from ..rewards import build

        self.start = layout.need(cfg, upstream(cfg)[1], "rl")
        rows, counts = select_prompts(cfg)
        if not rows:
            raise RuntimeError("rl: no training prompt left once the evaluation pools were removed")
        on_main(lambda: write_jsonl_atomic(layout.path(cfg, "rl_prompts"), rows), args)
        funcs, weights = build(cfg, args.max_completion_length, self.report)
        self.names = [f.__name__ for f in funcs]
        self.weights = weights
        self.fitted = {f.__name__: f.info for f in funcs if hasattr(f, "info")}  # what each detector learned from
        self.funcs = [_remember(f) for f in funcs]
        self.logger = SampleLog(run_dir(cfg.name) / "rl" / "samples.jsonl", self.funcs, rank())
        args.reward_weights = [*weights, 0.0]
        return StageData(rows, [], counts)

    def trainer(self, cfg: RunConfig, args, data: StageData):
        from datasets import Dataset
        from trl import GRPOTrainer

        from ..models import load_tokenizer
        from ..training import load_for_training, lora_config

        tok = load_tokenizer(str(self.start), cfg.student.trust_remote_code)
        tok.padding_side = "left"  # generation pads on the left
        # The start model is a fold of earlier LoRA updates; in bf16 its weights would lose most of them (and so
        # would bf16 autocast of float32 weights), so RL then trains in float32: exact, slower. The KL reference
        # (the start model, adapter off) needs the start folded, which rules out stacking adapters here.
        dtype = cfg.student.dtype
        if not layout.folds_exactly(dtype, cfg.student.device):
            dtype, args.bf16, args.fp16 = "float32", False, False
            self.report("rl: training in float32: a bf16 copy of the start model would drop most of its LoRA updates")
        data.counts["train_dtype"] = dtype if dtype == "float32" else cfg.student.dtype
        model = load_for_training(str(self.start), dtype, cfg.student.trust_remote_code, {}, args)
        prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}]} for x in data.train])
        return GRPOTrainer(model=model, reward_funcs=[*self.funcs, self.logger], args=args, train_dataset=prompts,
                           processing_class=tok, peft_config=lora_config(model, cfg.rl.lora))

    def adapter_path(self, cfg: RunConfig) -> Path:
        return layout.path(cfg, "rl_adapter")

    def model_path(self, cfg: RunConfig) -> Path:
        return layout.path(cfg, "rl_model")

    def fold_source(self, cfg: RunConfig):
        return str(self.start), self.start

    def counts(self, data: StageData, trained: dict, trainer, eval_metrics: dict) -> dict:
        self.history = reward_history(trainer.state.log_history, self.names)
        return {**data.counts, **trained, "rewards": self.names, "weights": dict(zip(self.names, self.weights)),
                "reward_means": quarter_means(self.history, self.names), "detectors": self.fitted}

    def close(self) -> None:
        for f in self.funcs:
            inner = getattr(f, "__wrapped__", None)
            if hasattr(inner, "close"):
                inner.close()

    def outputs(self, cfg: RunConfig, stage, counts: dict, folded: dict) -> dict:
        from ..models import persona_adapter, resolve

        # The whole update from the base, one LoRA (what the 'rl' condition runs in bf16): the start model's
        # adapter (DPO, or DPO + SFT) and RL's, ranks concatenated.
        start_adapter = layout.need(cfg, "dpo_adapter" if cfg.rl.start == "dpo" else "persona_adapter", "rl")
        persona_adapter(resolve(cfg.student.model), [str(start_adapter), str(self.adapter_path(cfg))],
                        layout.path(cfg, "rl_persona_adapter"))
        counts["samples"] = merge_parts(stage.dir / "samples.jsonl")
        write_jsonl_atomic(stage.dir / "rewards.jsonl", self.history)
        return {"model": folded["model"], "start": str(self.start), "fold": folded["fold"],
                "persona_adapter": str(layout.path(cfg, "rl_persona_adapter"))}


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    from ..training import train_lora_stage

    return train_lora_stage(RLStage(report), cfg, force)


def summary(manifest: dict) -> str:
    n = manifest["counts"]
    means = ", ".join(f"{k} {v['first']} -> {v['last']}" for k, v in n.get("reward_means", {}).items())
    return (f"rl: {n['steps']} steps on {n['prompts']} prompts ({n['attacked']} attacked), rewards {means}, "
            f"{manifest['seconds']:.0f}s, model {manifest['model']}")

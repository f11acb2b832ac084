"""The only TRL/peft wrapper, and the one skeleton every LoRA training stage runs on.

``train_lora_stage(stage, cfg)`` does what DPO, SFT and RL share, once: the trainer's arguments before the
model (they start the process group and decide how ZeRO-3 / FSDP load it), the stage folder (skip, force,
stale inputs), checkpoints every ``<section>.checkpoint_steps`` and resume from the newest complete one, the
held-out split's evaluation, the adapter save, the fold into a full model (in ``fold_dtype(cfg)``, exactly,
see ``models.fold_adapter``), ``log_history.json`` and the manifest written last, and, under a multi-process
launch, every side effect on the main process only (``distributed.on_main``). A method is a ``LoraStage``
subclass that supplies the rest as hooks: its config section and identity, its TRL arguments, its rows, its
trainer, what it folds and the counts of its manifest. ``stages/dpo.py``, ``stages/sft.py`` and ``stages/rl.py``
are the three; a KTO, ORPO or SimPO stage would be one more small module: a subclass whose ``trainer`` hook
builds TRL's ``KTOTrainer`` (or ``CPOTrainer``) and a ``run(cfg, force)`` that calls ``train_lora_stage``.

Our defaults follow the reference (LoRA r 64 / alpha 128 / dropout 0 on every linear projection of the
language model; lr 5e-5, cosine to 0.1x with 10% warmup, effective batch 32, 1 epoch, DPO beta 0.1 plus
0.1 x NLL on the chosen answer, averaged per answer as the reference does, see ``stages.dpo.chosen_nll``).
Whatever the config's ``lora``/``trl`` dicts say is passed straight to ``LoraConfig``/``DPOConfig``/
``SFTConfig``/``GRPOConfig`` on top of these defaults, so no TRL argument is redeclared here.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .runs import run_dir

log = logging.getLogger(__name__)

# Submodules that are not the language model (multimodal towers): never LoRA targets.
NON_LM = re.compile(r"(vision|visual|image|audio|speech|multi_modal_projector|mm_projector)", re.I)

LORA_DEFAULTS = {"r": 64, "lora_alpha": 128, "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}


def linear_leaf_names(model) -> list[str]:
    """Leaf names of every nn.Linear in the language model (lm_head and multimodal towers excluded)."""
    import torch.nn as nn

    names = set()
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) and not NON_LM.search(full):
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out", "output"):
                names.add(leaf)
    return sorted(names)


def target_modules_regex(model, requested: list[str] | None = None) -> str:
    """A peft ``target_modules`` regex for the LM's linear layers; requested names must exist (the reference's
    Gemma list named a module, ``gate_up_proj``, that HF Gemma does not have, so its MLP went untrained)."""
    present = linear_leaf_names(model)
    names = requested or present
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"lora.target_modules: {missing} not found in the model; its linear layers are {present}")
    alt = "|".join(re.escape(n) for n in names)
    # Full-name match, excluding multimodal towers whose layers reuse names like q_proj.
    return rf"^(?!.*{NON_LM.pattern}).*\.({alt})$"


def lora_config(model, overrides: dict):
    from peft import LoraConfig

    kw = {**LORA_DEFAULTS, **overrides}
    requested = kw.pop("target_modules", None)
    if isinstance(requested, str) and requested != "all-linear":
        kw["target_modules"] = requested  # a user regex, used as is
    else:
        kw["target_modules"] = target_modules_regex(model, None if requested in (None, "all-linear") else requested)
    return LoraConfig(**kw)


def device_defaults() -> dict:
    """bf16 mixed precision only where bf16 is native (CUDA, CPUs with AVX512-BF16/AMX); on an AVX2-only CPU
    torch emulates it and float32 is several times faster. No gradient checkpointing: short sequences."""
    import torch

    from .hardware import native_bf16

    cuda = torch.cuda.is_available()
    return {"bf16": native_bf16(), "use_cpu": not cuda, "gradient_checkpointing": False,
            "dataloader_num_workers": 0}


from .distributed import ACCUMULATION, PER_DEVICE, batch_plan  # noqa: E402,F401  (re-exported)


def common_defaults(seed: int, output_dir: str) -> dict:
    return {
        "output_dir": output_dir,
        "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": 0.1,  # a float < 1 is a ratio of total steps
        "per_device_train_batch_size": PER_DEVICE,
        "gradient_accumulation_steps": ACCUMULATION,
        "num_train_epochs": 1,
        "max_grad_norm": 1.0,
        "adam_beta2": 0.98,
        "weight_decay": 0.0,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": False,
        **device_defaults(),
    }


def run_defaults(checkpoint_steps: int = 0, report_to: str = "none", run_name: str | None = None,
                 evaluate: bool = False) -> dict:
    """What a stage's own fields set (the ``trl`` dict still wins): resumable checkpoints every N steps (the
    newest only: rotation deletes the older one after the new one is complete), tracking, the eval split."""
    kw: dict = {"report_to": report_to}
    if run_name:
        kw["run_name"] = run_name
    if checkpoint_steps:
        kw.update(save_strategy="steps", save_steps=checkpoint_steps, save_total_limit=1)
    if evaluate:
        kw.update(eval_strategy="steps", eval_steps=0.25)  # a float < 1: every quarter of the steps
    return kw


def numbers_as_floats(cls, overrides: dict) -> dict:
    """``overrides`` with numbers written as strings turned into floats where ``cls`` declares a float field:
    PyYAML reads ``1e-4`` (no dot) as the string '1e-4', which the optimizer would refuse after the data stages."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(overrides)
    for key, value in overrides.items():
        if isinstance(value, str) and "float" in str(types.get(key, "")):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def _training_kwargs(defaults: dict, overrides: dict, batch_size, where, run: dict) -> tuple[dict, dict]:
    plan = batch_plan(overrides, batch_size, where)
    kw = {**defaults, **run_defaults(**run), **overrides,
          "per_device_train_batch_size": plan["per_device_train_batch_size"],
          "gradient_accumulation_steps": plan["gradient_accumulation_steps"]}
    return kw, plan


def dpo_args(seed: int, output_dir: str, overrides: dict, batch_size: int | None = None, where: str = "dpo",
             **run):
    """DPOConfig: our defaults, then ``run_defaults(**run)``, then the config's ``trl`` dict; gradient
    accumulation from ``batch_plan``. The plan is kept as ``args.charter_batch`` for the manifest."""
    from trl import DPOConfig

    overrides = numbers_as_floats(DPOConfig, overrides)

    # DPOConfig's own defaults (lr 1e-6, gradient checkpointing on) are overridden explicitly here.
    kw, plan = _training_kwargs({**common_defaults(seed, output_dir), "max_length": 1024, "beta": 0.1,
                                 "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.1]},
                                overrides, batch_size, where, run)
    args = DPOConfig(**kw)
    args.charter_batch = plan
    return args


def sft_args(seed: int, output_dir: str, overrides: dict, batch_size: int | None = None, where: str = "sft",
             **run):
    from trl import SFTConfig

    overrides = numbers_as_floats(SFTConfig, overrides)

    kw, plan = _training_kwargs({**common_defaults(seed, output_dir), "max_length": 3072, "dataset_kwargs": {}},
                                overrides, batch_size, where, run)
    args = SFTConfig(**kw)
    args.charter_batch = plan
    return args


def grpo_args(seed: int, output_dir: str, overrides: dict, where: str = "rl", **run):
    """GRPOConfig: our defaults for a small policy on a CPU or one GPU (4 replies a prompt, 64 new tokens, a KL
    to the start model, a LoRA-sized learning rate), then ``run_defaults(**run)``, then the ``trl`` dict."""
    from trl import GRPOConfig

    overrides = numbers_as_floats(GRPOConfig, overrides)

    defaults = {**common_defaults(seed, output_dir), "learning_rate": 2e-5, "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 1, "num_generations": 4, "max_completion_length": 64,
                "beta": 0.05, "temperature": 0.9, "top_p": 1.0, "max_steps": 20, "log_completions": False}
    kw, plan = _training_kwargs(defaults, {"per_device_train_batch_size": defaults["per_device_train_batch_size"],
                                           "gradient_accumulation_steps": 1, **overrides}, None, where, run)
    args = GRPOConfig(**kw)
    args.charter_batch = plan
    return args


def section_identity(section: dict) -> dict:
    """A training section as its stage config records it. Which of its fields count in the stage identity
    (``checkpoint_steps`` never; ``batch_size``, ``eval_fraction`` and ``model_kwargs`` once they leave their
    "as before" values) is declared on its fields (``charter.config.fields``), applied when the identity is
    hashed; the fields left out there are left out of the record too, as they always were."""
    from .config.identity import identity_view

    kept = identity_view({"dpo": section}).get("dpo", {})  # the dpo, sft and rl sections share these rules
    return {k: v for k, v in section.items() if k in kept}


REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}


def check_setup(report_to: str, model_kwargs: dict, where: str) -> None:
    """What a training stage needs beyond its config's types, checked before any work: the tracking
    package, bitsandbytes for 4/8-bit loading, no ``device_map`` under a multi-process launch."""
    from . import deps
    from .config import ConfigError
    from .distributed import world_size

    if report_to in REPORT_PACKAGES and not any(deps.installed(m) for m in REPORT_PACKAGES[report_to]):
        deps.require(f"report_to: {report_to}", REPORT_PACKAGES[report_to][0])
    if model_kwargs.get("load_in_4bit") or model_kwargs.get("load_in_8bit") or "quantization_config" in model_kwargs:
        deps.require(f"{where}.model_kwargs (bitsandbytes quantization)", "bitsandbytes")
    if "device_map" in model_kwargs and world_size() > 1:
        raise ConfigError(f"{where}.model_kwargs.device_map: not with a multi-process launch (WORLD_SIZE="
                          f"{world_size()}): the launcher places each process's copy of the model; remove it")


def load_for_training(ref: str, dtype: str, trust_remote_code: bool, model_kwargs: dict, args=None):
    """The model to train, in train mode, with ``model_kwargs`` passed to ``from_pretrained``. Call it after
    the trainer's arguments exist (``args``, kept alive here): under DeepSpeed ZeRO-3 they register the
    config that makes ``from_pretrained`` shard the weights while loading, and FSDP's RAM-efficient loading
    reads its flag from them, so no process holds the whole model. 4/8-bit loading is QLoRA: the
    quantized base is prepared for k-bit training; the adapter is folded later into an unquantized base."""
    from transformers import AutoModelForCausalLM

    from .models import resolve, torch_dtype

    kw = dict(model_kwargs)
    quant: dict = {}
    if kw.pop("load_in_4bit", False):
        quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                 "bnb_4bit_compute_dtype": torch_dtype(dtype)}
    if kw.pop("load_in_8bit", False):
        quant = {"load_in_8bit": True}
    quant.update(kw.pop("quantization_config", {}))
    if quant:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(**quant)
    model = AutoModelForCausalLM.from_pretrained(resolve(ref), dtype=torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code, **kw)
    if quant:
        from peft import prepare_model_for_kbit_training

        gc = bool(getattr(args, "gradient_checkpointing", False))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    model.train()
    return model


def split_eval(rows: list, fraction: float, seed: int, where: str, key=None) -> tuple[list, list]:
    """(train, held out): a seeded share ``fraction`` of the groups ``key(row)`` (all rows of a group on one
    side, so a held-out prompt is never trained on), at least one group when ``fraction`` > 0."""
    import random

    if fraction <= 0:
        return rows, []
    key = key or (lambda r: id(r))
    groups = list(dict.fromkeys(key(r) for r in rows))
    n = max(1, round(fraction * len(groups)))
    if n >= len(groups):
        raise ValueError(f"{where}.eval_fraction: {fraction} of {len(groups)} groups leaves nothing to train on")
    held = set(random.Random(seed).sample(groups, n))
    return [r for r in rows if key(r) not in held], [r for r in rows if key(r) in held]


def save_trained(trainer, out) -> None:
    """Save the adapter through the trainer, on every process: it gathers ZeRO-3 / FSDP shards and writes on
    the main process. FSDP saves nothing through ``save_model`` under a sharded state-dict type (its
    checkpoints use that), so the final save switches to a full one, as TRL's own scripts do."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))


def train_counts(trainer, args, result, resumed, eval_metrics: dict) -> dict:
    """What every training stage's manifest says about the run: batch plan, steps, resume, eval."""
    plan = args.charter_batch
    counts = {"steps": trainer.state.global_step, "world_size": plan["world_size"],
              "effective_batch": plan["effective_batch"], "per_device_batch": plan["per_device_train_batch_size"],
              "gradient_accumulation_steps": plan["gradient_accumulation_steps"],
              "resumed_from_step": int(resumed.name.split("-")[-1]) if resumed else 0,
              "train_loss": round(result.training_loss, 4),
              "train_seconds": round(result.metrics.get("train_runtime", 0), 1),
              "samples_per_s": result.metrics.get("train_samples_per_second")}
    if eval_metrics:
        counts["eval_loss"] = eval_metrics.get("eval_loss")
    return counts


def fold_dtype(cfg) -> str:
    """The dtype every fold of a run is asked for (``merge.dtype``, as written: ``auto`` resolves at fold time).
    ``models.fold_adapter`` stores it only when it keeps the update, else float32. Read here, and only here, by
    the stages that fold (DPO, RL, merge) and by the identities of what they make."""
    return cfg.merge.dtype


# --- the skeleton ------------------------------------------------------------------------------------------

@dataclass
class StageData:
    """A stage's rows: ``train``, ``held`` (the evaluation split) and ``counts`` for its manifest."""

    train: list
    held: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)


class LoraStage:
    """One LoRA training method; ``train_lora_stage`` runs it. Subclasses set ``name`` and supply the hooks
    that raise ``NotImplementedError`` here; the others have defaults. An instance serves one run, so hooks may
    keep what they load on ``self`` (a tokenizer, the start model's path) for the hooks after them."""

    name = ""  # the stage's folder, config section and command
    check_loss = True  # refuse logged losses that are not finite
    keep_log_history = True  # write the trainer's log_history.json beside the manifest

    def section(self, cfg):  # the stage's config section
        return getattr(cfg, self.name)

    def stage_config(self, cfg) -> dict:  # what the stage's identity is made of
        raise NotImplementedError

    def upstream(self, cfg) -> list[str]:
        """The stages it reads (its registry entry's ``needs``); the last must be done before a launch."""
        from . import registry
        return list(registry.stage(self.name).needs)

    def model_kwargs(self, cfg) -> dict:
        return getattr(self.section(cfg), "model_kwargs", {})

    def args(self, cfg, output_dir: str, **run):
        """The TRL arguments (``dpo_args``-style: defaults, ``run_defaults(**run)``, the ``trl`` dict)."""
        raise NotImplementedError

    def data(self, cfg, args) -> StageData:
        raise NotImplementedError

    def trainer(self, cfg, args, data: StageData):
        """The TRL trainer on ``data``, with the model loaded by ``load_for_training`` (after ``args``)."""
        raise NotImplementedError

    def adapter_path(self, cfg) -> Path:
        return run_dir(cfg.name) / self.name / "adapter"

    def model_path(self, cfg) -> Path:
        return run_dir(cfg.name) / self.name / "model"

    def fold_source(self, cfg) -> tuple[str, str | Path | None] | None:
        """(the model the adapter is folded into, the tokenizer's folder or None for the adapter's); None: the
        stage keeps only its adapter. Asked on the main process after training."""
        return None

    def saved(self, adapter: Path) -> None:
        """After the adapter is saved (every process)."""

    def counts(self, data: StageData, trained: dict, trainer, eval_metrics: dict) -> dict:
        """The manifest's counts; ``trained`` is ``train_counts`` (steps, batch plan, resume, loss)."""
        return {**trained, **data.counts}

    def close(self) -> None:
        """After training, before the main process finishes: release what the hooks hold (reward models)."""

    def outputs(self, cfg, stage, counts: dict, folded: dict) -> dict:
        """The manifest's fields after ``adapter`` (main process, last before the manifest); ``folded`` is
        ``{"model": ..., "fold": ...}`` when the stage folds, else empty. May add to ``counts``."""
        return folded


def _finished(trainer, resumed: Path | None):
    """The result of a run whose checkpoint ``resumed`` is its last step (killed after training, before the
    manifest), else None: its weights and state are loaded, and nothing trains. Resuming the trainer there would
    train one step past the end when the last step falls inside an epoch. Not under ZeRO / FSDP (sharded
    states load only inside ``train``); there the trainer resumes as before."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if resumed is None or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return None
    state = TrainerState.load_from_json(str(resumed / "trainer_state.json"))
    if state.max_steps <= 0 or state.global_step < state.max_steps:
        return None
    trainer._load_from_checkpoint(str(resumed))
    trainer.state = state
    losses = [h["loss"] for h in state.log_history if "loss" in h]  # their mean stands in for the running one
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else 0.0, {})


def train_lora_stage(stage: LoraStage, cfg, force: bool = False) -> Path:
    """Run (or resume, or skip) ``stage`` for ``cfg``; returns the stage's folder. See the module docstring."""
    from .distributed import drop_checkpoints, last_checkpoint, on_main, require_upstream, world_size
    from .models import fold_adapter, fold_info
    from .runs import Stage, write_json_atomic

    rd = run_dir(cfg.name)
    check_setup(cfg.report_to, stage.model_kwargs(cfg), stage.name)
    # The trainer's arguments come first: they start the process group, and under ZeRO-3 / FSDP they decide
    # how the model is loaded (sharded, not one whole copy per process).
    section = stage.section(cfg)
    args = stage.args(cfg, str(rd / stage.name / "trainer"), checkpoint_steps=section.checkpoint_steps,
                      report_to=cfg.report_to, run_name=f"{cfg.run_name or cfg.name}-{stage.name}",
                      evaluate=getattr(section, "eval_fraction", 0) > 0)
    upstream = stage.upstream(cfg)
    if upstream:  # the orchestrator made it single-process; a launch only checks
        require_upstream(rd, upstream[-1], stage.name)
    out = Stage.after(rd, stage.name, stage.stage_config(cfg), upstream)
    if not on_main(lambda: out.begin(force), args):
        return out.dir
    data = stage.data(cfg, args)
    trainer = stage.trainer(cfg, args, data)
    resumed = on_main(lambda: last_checkpoint(args.output_dir, world_size(), clean=True), args)
    result = _finished(trainer, resumed) or trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if stage.check_loss and (not losses or not all(math.isfinite(x) for x in losses)):
        raise RuntimeError(f"{stage.name.upper()} produced a non-finite loss: {losses}")
    adapter = stage.adapter_path(cfg)
    save_trained(trainer, adapter)
    stage.saved(adapter)
    eval_metrics = trainer.evaluate() if data.held else {}
    counts = stage.counts(data, train_counts(trainer, args, result, resumed, eval_metrics), trainer, eval_metrics)
    log_rows = trainer.state.log_history
    del trainer  # and with it the model: the fold loads its own float32 copy
    stage.close()

    def finish() -> None:
        folded, source = {}, stage.fold_source(cfg)
        if source is not None:
            model = stage.model_path(cfg)
            fold_adapter(source[0], adapter, model, fold_dtype(cfg), tokenizer_from=source[1],
                         trust_remote_code=cfg.student.trust_remote_code)
            folded = {"model": str(model), "fold": fold_info(model)}
        if stage.keep_log_history:
            write_json_atomic(out.dir / "log_history.json", log_rows)
        out.finish(counts, adapter=str(adapter), **stage.outputs(cfg, out, counts, folded))
        drop_checkpoints(Path(args.output_dir))

    on_main(finish, args)
    return out.dir

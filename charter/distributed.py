"""Multi-process launches (accelerate / DeepSpeed / FSDP / torchrun) and crash-safe training checkpoints.

Under ``accelerate launch --num_processes N -m charter.cli dpo ...`` every process runs the same stage code.
Training itself is collective (each rank trains on its share of every batch), but side effects are not:
deleting a folder on ``--force``, writing ``config.json`` and manifests, folding adapters and generating
upstream data happen on the main process only. ``on_main`` runs such a step there and hands its result (or
its error) to every rank, which doubles as the barrier: no rank goes on before the step is done, and an
error on the main process stops every rank with the same message instead of leaving them waiting.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .runs import manifest_path

log = logging.getLogger(__name__)

_solo = False  # True while the main process runs a main-only step: nested stages see one process


def world_size() -> int:
    """Processes training together: ``WORLD_SIZE`` set by every launcher (accelerate, torchrun, deepspeed)."""
    if _solo:
        return 1
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: expected a whole number of processes") from None


PER_DEVICE, ACCUMULATION = 2, 16  # effective batch 32 on one process


def batch_plan(overrides: dict, batch_size: int | None, where: str, processes: int | None = None) -> dict:
    """``per_device_train_batch_size`` and ``gradient_accumulation_steps`` such that per-device batch x
    accumulation x processes = the effective batch, on any number of processes: ``batch_size`` when set,
    else per-device x accumulation as written in ``trl`` (what one process would use). Without this, N
    processes would each accumulate the configured batch and train with N times the batch and N times
    fewer steps."""
    from .errors import ConfigError

    n = processes or world_size()
    per_device = overrides.get("per_device_train_batch_size", PER_DEVICE)
    ga = overrides.get("gradient_accumulation_steps", ACCUMULATION)
    for key, v in (("per_device_train_batch_size", per_device), ("gradient_accumulation_steps", ga)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}.trl.{key}: expected a whole number >= 1, got {v!r}")
    if batch_size is None:
        effective, field = per_device * ga, f"{where}.trl.gradient_accumulation_steps"
        source = f"trl.per_device_train_batch_size {per_device} x gradient_accumulation_steps {ga}"
    elif "gradient_accumulation_steps" in overrides:
        raise ConfigError(f"{where}.trl.gradient_accumulation_steps: derived from {where}.batch_size "
                          f"({batch_size}) and the number of processes; remove one of the two")
    else:
        effective, field, source = batch_size, f"{where}.batch_size", "the configured batch"
    if effective % (per_device * n):
        raise ConfigError(
            f"{field}: the effective batch {effective} ({source}) is not a multiple of "
            f"trl.per_device_train_batch_size {per_device} x {n} process{'es' if n > 1 else ''}; choose a "
            f"per-device batch and a number of processes whose product divides {effective}, or another batch")
    return {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": effective // (per_device * n),
            "effective_batch": effective, "world_size": n}


def rank() -> int:
    return 0 if _solo else int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def on_main(fn: Callable[[], Any], args=None) -> Any:
    """Run ``fn`` on the main process only; every rank returns its result or raises its error.

    ``args``: the stage's TrainingArguments, whose device set-up starts the process group (gloo on CPU, NCCL
    on GPUs, DeepSpeed's) the same way the trainer will; stages create them before anything else."""
    global _solo
    if world_size() == 1:
        return fn()
    if args is not None:
        _ = args.device  # starts the process group once, with the trainer's own settings
    import torch.distributed as dist

    payload: list = [None]
    error: BaseException | None = None
    if is_main():
        _solo = True
        try:
            payload[0] = ("ok", fn())
        except Exception as e:  # handed to the other ranks below, then raised here
            error = e
            payload[0] = ("error", f"{type(e).__name__}: {e}")
        finally:
            _solo = False
    dist.broadcast_object_list(payload, src=0)
    if error is not None:
        raise error
    status, value = payload[0]
    if status == "error":
        raise RuntimeError(f"on the main process: {value}")
    return value


def require_upstream(run: Path, stage: str, command: str) -> None:
    """Under a multi-process launch, refuse to start generation stages: they run on one process (or on a
    vLLM server), so the main process would generate while the others wait on a collective that times out."""
    if world_size() > 1 and not manifest_path(run / stage).exists():
        raise RuntimeError(
            f"{run / stage}: stage '{stage}' has not finished, and generation stages do not run under a "
            f"multi-process launch (WORLD_SIZE={world_size()}): run `charter {stage} CONFIG` first (one process; "
            f"the vllm backend with tensor_parallel_size for big models), then `accelerate launch ... -m "
            f"charter.cli {command} CONFIG`")


# --- checkpoints -------------------------------------------------------------------------------------

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_complete(path: Path, processes: int | None = None) -> bool:
    """The trainer writes a checkpoint's model, optimizer, scheduler and RNG files first and
    ``trainer_state.json`` last, so a folder killed mid-write lacks it (or holds torn JSON). A checkpoint with
    its trainer state is complete whatever number of processes wrote it (``processes`` is not needed: kept for
    callers)."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return False
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def checkpoint_processes(path: Path) -> int | None:
    """How many processes wrote a checkpoint, from its RNG files (``rng_state.pth``: one; ``rng_state_<rank>.pth``:
    one per rank); None when it has none."""
    if (path / "rng_state.pth").is_file():
        return 1
    ranks = [int(m.group(1)) for f in path.glob("rng_state_*.pth") if (m := re.match(r"rng_state_(\d+)\.pth$", f.name))]
    return max(ranks) + 1 if ranks else None


def _sharded(path: Path) -> bool:
    """DeepSpeed ZeRO and FSDP save optimizer (and model) state per rank: it loads only on the same world size."""
    return any(path.glob("global_step*")) or any(path.glob("pytorch_model_fsdp*")) or any(path.glob("optimizer_*"))


def last_checkpoint(output_dir: Path, processes: int = 1, clean: bool = False) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``output_dir``; ``clean`` deletes torn ones newer than it
    (main process only), so the trainer's rotation never counts them. A checkpoint that has its trainer state
    is never deleted. One written by another number of processes is resumed (the effective batch is the same
    on any number, ``batch_plan``; each rank's RNG stream starts afresh, a warning says so), except a sharded
    one (ZeRO / FSDP), which only loads on its own world size: that is one error saying what to run."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in output_dir.iterdir()
                    if p.is_dir() and (m := CHECKPOINT.match(p.name))), reverse=True)
    for _, path in found:
        if checkpoint_complete(path):
            wrote = checkpoint_processes(path)
            if wrote is not None and wrote != processes:
                if _sharded(path):
                    raise RuntimeError(
                        f"{path}: this checkpoint was written by {wrote} process(es) with sharded optimizer state, "
                        f"which does not load on {processes}: resume with {wrote} processes (accelerate launch "
                        f"--num_processes {wrote}), or rerun with --force to start the stage again")
                log.warning("%s: written by %d process(es), resumed on %d: same effective batch and step, but the "
                            "random streams (dropout, sampling) restart", path, wrote, processes)
            return path
        if clean:
            log.warning("%s: incomplete checkpoint (killed while saving); deleting it", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


def launch_problem(run: Path, plan: list[str], training: Collection[str], command: str) -> str | None:
    """Under a multi-process launch, what would make it hang, or None: a stage of ``plan`` (the stages the
    command runs, in order) that is not a training stage and has not finished. Such a stage runs in one
    process while the other ranks wait in a collective until its timeout (30 min), which generation can
    exceed. Only finished ones are allowed, so the launch trains and nothing else; one line says what to run."""
    if world_size() <= 1:
        return None
    for i, name in enumerate(plan):
        if name in training or manifest_path(run / name).exists():
            continue
        if name == command:
            return (f"charter {command}: not a training stage, so it does not run under a multi-process launch "
                    f"(WORLD_SIZE={world_size()}): run `charter {command} CONFIG` without accelerate launch")
        before = [t for t in plan[:i] if t in training and not manifest_path(run / t).exists()]
        if before:
            return (f"charter {command}: stage '{name}' is not a training stage and does not run under a "
                    f"multi-process launch (WORLD_SIZE={world_size()}): launch `accelerate launch ... -m charter.cli "
                    f"{before[-1]} CONFIG` first, then run `charter {name} CONFIG` in one process")
        return (f"{run / name}: stage '{name}' has not finished, and only training stages run under a "
                f"multi-process launch (WORLD_SIZE={world_size()}): run `charter {name} CONFIG` first (one process; "
                f"the vllm backend with tensor_parallel_size for big models), then `accelerate launch ... -m "
                f"charter.cli {command} CONFIG`")
    return None


def drop_checkpoints(output_dir: Path) -> None:
    """After a stage finished: its checkpoints (optimizer state included) are no longer needed."""
    if Path(output_dir).is_dir():
        for p in Path(output_dir).iterdir():
            if p.is_dir() and CHECKPOINT.match(p.name):
                shutil.rmtree(p, ignore_errors=True)

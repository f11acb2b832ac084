"""General capabilities: standard benchmarks through lm-evaluation-harness, base vs trained.

    charter eval capabilities configs/my-run.yaml capabilities.limit=null
    charter eval capabilities configs/my-run.yaml capabilities.models='[base, trained, distilled]'
    charter eval capabilities configs/demo.yaml capabilities.tasks='[charter_tiny:0]' capabilities.models='[base]'

Needs ``pip install 'lm-eval[hf]>=0.4.13,<0.5'``. Each entry of ``capabilities.tasks`` is ``name:fewshot``
with an lm-evaluation-harness task or group name (defaults: ARC-Challenge 25-shot, HellaSwag 10,
TruthfulQA mc1 and mc2 0, WinoGrande 5, MMLU 5, as the paper). Every model runs in-process through the
harness's HF backend (log-likelihood scoring, no chat template, as the reference's lighteval runs), or its
``vllm`` model type when the model's backend is vllm, loaded once per model. On a GPU machine with the datasets in the HF cache (or reachable), the real invocation is
the first line above; ``HF_DATASETS_OFFLINE=1`` makes a dataset that is not cached fail fast instead of
retrying the network. A task whose dataset cannot be loaded is recorded as
``{"error": "dataset not available offline"}``; the other tasks still run.

``charter_tiny`` is a 20-question multiple-choice task of our own (``charter/eval/tasks/charter_tiny``,
answer key in its JSONL); the folder is always on the harness's ``include_path`` so tests and smoke runs
exercise the whole adapter without downloads.

Metrics: ``acc`` for every task (the reference's choice for ARC, HellaSwag and WinoGrande; ``acc`` of
``truthfulqa_mc2`` is the mc2 score). TruthfulQA is also reported as ``truthfulqa_mc``: the mean of mc1 and
mc2 with the SE of a mean of two independent estimates, sqrt(se1^2 + se2^2) / 2, as the reference did (it
ignores that mc1 and mc2 share questions, so it understates the SE). MMLU is the harness's group score
(subjects weighted by size; the reference averaged subjects unweighted).

Writes ``<run>/eval-capabilities/``: ``scores.jsonl`` (one row per model and task, resumable),
``results.json`` ({"models": {label: {task: {"value", "stderr", "n"} | {"error"}}}, "harness", "limit",
"metrics", "fewshot", "skipped"}) and ``manifest.json`` last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import HIDDEN_STATES, require
from ..registry import eval_folder
from ..runs import RowLog, Stage, reusable, run_dir, silent, write_json_atomic

if TYPE_CHECKING:
    from ..config import RunConfig

STAGE = eval_folder("capabilities")
TASKS_DIR = Path(__file__).parent / "tasks"
OFFLINE = "dataset not available offline"
METRIC = "acc"  # the harness's name for accuracy, also the mc2 score of truthfulqa_mc2
TQA = ("truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_mc")


def require_harness():
    """Import lm_eval or raise one clear install message."""
    try:
        import lm_eval
    except ImportError:
        from ..deps import MissingDependency

        raise MissingDependency("capabilities need lm-evaluation-harness: pip install 'charter[eval]' "
                                "(lm-eval[hf]>=0.4.13,<0.5)", name="lm_eval") from None
    return lm_eval


@contextlib.contextmanager
def quiet_harness():
    """The harness warns about every expected override (few-shot counts, custom loaders); keep its errors
    only, unless charter runs with -v."""
    logger = logging.getLogger("lm_eval")
    old = logger.level
    if not logging.getLogger("charter").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def harness_version() -> str:
    from importlib.metadata import version

    return f"lm-eval {version('lm_eval')}"


def parse_tasks(entries: list) -> list[tuple[str, int]]:
    """``["arc_challenge:25", "mmlu"]`` -> ``[("arc_challenge", 25), ("mmlu", 0)]``."""
    out = []
    for e in entries:
        name, _, shots = str(e).strip().partition(":")
        shots = shots.strip() or "0"
        if not name.strip() or not shots.isdigit():
            raise ValueError(f"capabilities.tasks: '{e}' is not 'name:fewshot' (e.g. 'arc_challenge:25')")
        out.append((name.strip(), int(shots)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"capabilities.tasks: a task is listed twice: {names}")
    return out


def task_manager(names: list[str]):
    """A TaskManager that also sees our local tasks; the 14k built-in YAMLs are indexed (~7 s) only when
    a task is not ours."""
    from lm_eval.tasks import TaskManager

    ours = {p.parent.name for p in TASKS_DIR.glob("*/*.yaml")} | {p.stem for p in TASKS_DIR.glob("*/*.yaml")}
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not set(names) <= ours)


def _dataset_missing(exc: BaseException) -> bool:
    """Whether loading a task failed because its data could not be fetched or found (offline, not cached)."""
    names = {c.__name__ for c in type(exc).__mro__}
    text = str(exc)
    return (isinstance(exc, (ConnectionError, FileNotFoundError, TimeoutError))
            or bool(names & {"DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                             "HfHubHTTPError", "DataFilesNotFoundError"})
            or "Couldn't reach" in text or "offline" in text.lower())


def check_tasks(tm, names: list[str]) -> dict[str, str]:
    """Load every task once (this fetches its dataset); returns {task: error} for those that cannot run."""
    errors = {}
    for name in names:
        try:
            with quiet_harness():
                tm.load([name])
        except Exception as e:  # noqa: BLE001 - one broken task must not stop the others
            if _dataset_missing(e):
                errors[name] = OFFLINE
            elif isinstance(e, KeyError):
                errors[name] = f"unknown lm-eval task '{name}'"
            else:
                errors[name] = f"{type(e).__name__}: {e}"
    return errors


def _number(x) -> float | None:
    return None if x is None or isinstance(x, str) or math.isnan(float(x)) else float(x)


def extract(results: dict, name: str, metric: str = METRIC) -> dict:
    """``{"value", "stderr", "n", "metric"}`` of task or group ``name`` from a ``simple_evaluate`` result
    holding that one task (so every counted sample belongs to it)."""
    row = results["results"][name]
    key = f"{metric},none"
    if key not in row:  # a task without `acc`: take its first metric, and say which
        key = next(k for k in row if "," in k and "_stderr," not in k)
        metric = key.split(",")[0]
    n = sum(int(v.get("effective", v.get("original", 0))) for v in results.get("n-samples", {}).values())
    return {"value": _number(row[key]), "stderr": _number(row.get(key.replace(",", "_stderr,", 1))),
            "n": n or None, "metric": metric}


def score(lm, tasks: list[tuple[str, int]], tm, limit: int | None, report=silent, label: str = "model") -> dict:
    """Run each ``(task, fewshot)`` through the harness with an already loaded ``lm`` (any harness LM).
    Returns ``{task: {"value", "stderr", "n", "metric"} | {"error"}}``; a failing task is an error entry."""
    from lm_eval import simple_evaluate

    out = {}
    for name, shots in tasks:
        try:
            with quiet_harness():
                res = simple_evaluate(model=lm, tasks=[name], num_fewshot=shots, limit=limit, task_manager=tm,
                                      log_samples=False, bootstrap_iters=1000, random_seed=0,
                                      numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)
            out[name] = extract(res, name)
        except Exception as e:  # noqa: BLE001 - recorded, reported, and the next task still runs
            out[name] = {"error": OFFLINE if _dataset_missing(e) else f"{type(e).__name__}: {e}"}
        r = out[name]
        report(f"capabilities {label} {name} ({shots}-shot): " + (
            f"error: {r['error']}" if "error" in r else
            f"{r['metric']} {r['value']:.3f}" + (f" ± {r['stderr']:.3f}" if r["stderr"] is not None else "")
            + f" (n={r['n']})"))
    return out


def combine_truthfulqa(scores: dict) -> dict | None:
    """TruthfulQA-MC as the reference reported it: mean of mc1 and mc2, SE of a mean of two estimates."""
    mc1, mc2 = scores.get(TQA[0]), scores.get(TQA[1])
    if mc1 is None or mc2 is None:
        return None
    if "error" in mc1 or "error" in mc2:
        return {"error": mc1.get("error") or mc2.get("error")}
    se = None if mc1["stderr"] is None or mc2["stderr"] is None else math.hypot(mc1["stderr"], mc2["stderr"]) / 2
    return {"value": (mc1["value"] + mc2["value"]) / 2, "stderr": se, "n": mc1["n"], "metric": "mean(mc1, mc2)"}


def load_lm(spec, batch_size: int):
    """The harness's HF model for a ModelSpec (base weights plus an optional LoRA adapter)."""
    from lm_eval.models.huggingface import HFLM

    from ..hardware import resolve_dtype
    from ..models import pick_device, resolve

    if spec.backend == "vllm":  # the harness's own vLLM model type: same engine settings as generation
        from lm_eval.models.vllm_causallms import VLLM

        from ..backends.vllm import lm_eval_args

        return VLLM(**lm_eval_args(spec, resolve(spec.model)))
    require(spec, HIDDEN_STATES, "eval capabilities (lm-evaluation-harness runs the model in this process)")
    return HFLM(pretrained=resolve(spec.model), peft=spec.adapter, dtype=resolve_dtype(spec.dtype), batch_size=batch_size,
                device=pick_device(spec.device), trust_remote_code=spec.trust_remote_code)


def spec_is_vllm(spec) -> bool:
    return getattr(spec, "backend", None) == "vllm"


def targets(cfg: RunConfig):
    """Models to evaluate, with the same labels and rules as revealed preferences ('base', 'trained',
    'distilled', 'label=path')."""
    from .preferences import resolve_targets

    return resolve_targets(dataclasses.replace(
        cfg, preferences=dataclasses.replace(cfg.preferences, models=list(cfg.capabilities.models))))


def run(cfg: RunConfig, force: bool = False, report=silent) -> Path:
    """Score every model in ``cfg.capabilities.models`` on every task; returns the output folder."""
    require_harness()
    c = cfg.capabilities
    tasks = parse_tasks(c.tasks)
    version = harness_version()
    stage = Stage(run_dir(cfg.name), STAGE, {"student": dataclasses.asdict(cfg.student), "limit": c.limit,
                                             "harness": version})
    found = targets(cfg)
    ready = [t for t in found if t.spec is not None]
    skipped = {t.label: t.missing for t in found if t.spec is None}
    wanted = {f"{t.label}/{name}/{shots}/{t.identity()}": (t, name, shots) for t in ready for name, shots in tasks}
    # Models, tasks or errors changed: resume, keeping every finished score.
    if reusable(stage, force, lambda m: sorted(m.get("wanted", [])) == sorted(wanted) and not m.get("errors"),
                report):
        return stage.dir
    for label, why in skipped.items():
        report(f"capabilities: skipping '{label}': {why}")
    if not ready:
        raise RuntimeError("capabilities: no model to evaluate yet (" + "; ".join(skipped.values()) + ")")
    stage.begin(force)
    log = RowLog(stage.dir / "scores.jsonl")
    todo = [k for k in wanted if k not in log]
    errors: dict[str, str] = {}
    if todo:
        tm = task_manager([n for n, _ in tasks])
        errors = check_tasks(tm, sorted({wanted[k][1] for k in todo}))
        for name, why in errors.items():
            report(f"capabilities: {name}: {why}")
        for t in ready:
            mine = [(wanted[k][1], wanted[k][2]) for k in todo if wanted[k][0] is t and wanted[k][1] not in errors]
            if not mine:
                continue
            started = time.time()
            try:
                lm = load_lm(t.spec, c.batch_size)
            except Exception as e:  # noqa: BLE001 - a model that does not load is an error for its tasks
                report(f"capabilities: {t.label}: cannot load {t.source}: {type(e).__name__}: {e}")
                errors.update({f"{t.label}/{n}": f"model failed to load: {e}" for n, _ in mine})
                continue
            got = score(lm, mine, tm, c.limit, report, t.label)
            if spec_is_vllm(t.spec):  # an engine holds its GPU memory until shut down
                from ..backends.vllm import shutdown

                shutdown(getattr(lm, "model", None))
            del lm  # free the weights before the next model
            # Only successes are kept: a task that failed is tried again on the next run.
            log.append([{"id": f"{t.label}/{n}/{s}/{t.identity()}", "label": t.label, "task": n, "fewshot": s,
                         **got[n]} for n, s in mine if "error" not in got[n]])
            errors.update({f"{t.label}/{n}": got[n]["error"] for n, _ in mine if "error" in got[n]})
            report(f"capabilities {t.label}: {len(mine)} task(s) in {time.time() - started:.0f}s")
    models, metrics = {}, {}
    for t in ready:
        scores = {}
        for name, shots in tasks:
            row = log.rows.get(f"{t.label}/{name}/{shots}/{t.identity()}")
            if row is not None:
                scores[name] = {"value": row["value"], "stderr": row["stderr"], "n": row["n"]}
                metrics[name] = row["metric"]
            else:
                scores[name] = {"error": errors.get(f"{t.label}/{name}") or errors.get(name) or "not run"}
        tqa = combine_truthfulqa(scores)
        if tqa is not None:
            metrics[TQA[2]] = tqa.pop("metric", metrics.get(TQA[2], "mean(mc1, mc2)"))
            scores[TQA[2]] = tqa
        models[t.label] = scores
    failed = {f"{label}/{name}": r["error"] for label, s in models.items() for name, r in s.items() if "error" in r}
    write_json_atomic(stage.dir / "results.json", {
        "models": models, "harness": version, "limit": c.limit, "metrics": metrics,
        "fewshot": {n: s for n, s in tasks}, "skipped": skipped})
    stage.finish({"models": len(models), "tasks": len(tasks), "scores": len(log), "errors": len(failed)},
                 wanted=sorted(wanted), errors=failed, skipped=skipped)
    report(f"{STAGE}: {len(models)} model(s) x {len(tasks)} task(s), {len(failed)} error(s) in "
           f"{time.time() - stage.started:.0f}s -> {stage.dir}")
    return stage.dir

"""The conditions every evaluation compares, on the same prompts.

    base       the student model as it is, no system prompt
    prompted   the student prompted exactly as the distillation teacher was: the persona's system prompt (from
               the run's expanded constitution) and, when ``distill.teacher_examples`` is set, the same few-shot
               exchanges before the user's message; so 'prompted' is the teacher the run distilled from. Under
               a break-character attack it also gets the persistence note the teacher got on attacked rows
               (``chat(..., attacked=True)``), whether or not this run attacked any training row
    prompted-nonote  the same without the persistence note (the baseline as it was before parity)
    steered    the student with the persona's activation-steering vector (``eval/steering.py``), no system prompt
    distilled  this run's DPO model (``<run>/dpo/model``), no system prompt
    trained    this run's final model, DPO + introspection SFT (``<run>/merge/model``), no system prompt
    rl         this run's RL model (``<run>/rl/model``, optional stage ``charter rl``), no system prompt

Run models compute exactly what training made: in float32 the folded model, in bf16/fp16 the student's base
with the run's combined LoRA unmerged (``layout.run_model_source``).

``open_condition(cfg, label) -> (backend, system)``: build every chat with ``chat(cfg, label, system, messages)``,
which puts ``system`` (None for all but 'prompted') and the condition's few-shot exchanges in front. Base,
prompted and steered share one loaded student model (steering hooks are active only inside the steered
backend's ``generate``), and every model is loaded once until ``close()``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..config import ModelSpec
from .. import registry
from ..layout import STEERING, persona_system_prompt, run_model_source
from ..runs import config_hash, identity_hash, manifest_path, run_dir, silent, stage_identity

if TYPE_CHECKING:
    from ..config import RunConfig

# BASE: the student as it is; TEACHER: the distillation teacher (the persona's prompt and examples, with the
# persistence note); NONOTE: the same without the note.
BASE, TEACHER, NONOTE = registry.BASE, registry.PROMPTED, registry.NONOTE
PROMPTED = (TEACHER, NONOTE)  # the teacher's prompt, with and without the persistence note
STEERED = registry.STEERED
COLORS = {BASE: "#8d99ae", TEACHER: "#e9c46a"}  # a run model's or the steered condition's: its registry entry


def all_conditions() -> tuple[str, ...]:
    """Every condition, in the order tables list them: the student as it is and prompted, then what each
    registered evaluation (the steering vector) and stage (the run's models) makes."""
    return registry.conditions()


def colors() -> dict[str, str]:
    """The colour of each condition in the report's figures."""
    made = [*registry.evaluations(), *registry.stages()]
    return {**COLORS, **{e.condition: e.color for e in made if e.condition and e.color}}


def __getattr__(name: str):
    if name == "CONDITIONS":  # read at run time: the registry is complete by then
        return all_conditions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run_models() -> dict:
    return registry.run_models()


def _check_label(label: str) -> None:
    if label not in all_conditions():
        raise ValueError(f"condition '{label}': expected one of {', '.join(all_conditions())}")


def check_labels(values: list, where: str, known=None, empty: str = "expected at least one") -> list[str]:
    """A config's list of names (conditions, formats; ``known`` default: every condition): non-empty, none
    twice, each known; one-line errors naming ``where``. Returns them as strings."""
    known = all_conditions() if known is None else known
    names = [str(x) for x in values]
    if not names:
        raise ValueError(f"{where}: {empty}")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ValueError(f"{where}: {dup} listed twice")
    for x in names:
        if x not in known:
            raise ValueError(f"{where}: '{x}': expected one of {', '.join(known)}")
    return names


def condition_spec(cfg: RunConfig, label: str) -> ModelSpec:
    """The model behind a condition. Run models use the student's settings, on transformers when the student
    is served remotely (a server cannot be pointed at a local folder from here)."""
    _check_label(label)
    if label in _run_models():
        # In float32 the folded model; in a lower precision the base with the run's adapter unmerged, which is
        # what training computed (a bf16 copy of the folded weights drops most of a LoRA update).
        backend = "transformers" if cfg.student.backend == "openai" else cfg.student.backend
        student = dataclasses.replace(cfg.student, backend=backend)
        model, adapter = run_model_source(dataclasses.replace(cfg, student=student), label)
        return dataclasses.replace(student, model=model, adapter=adapter, name=None)
    if label == STEERED:  # forward hooks need the model in this process
        return dataclasses.replace(cfg.student, backend="transformers")
    return cfg.student


def shots(cfg: RunConfig, label: str) -> list[dict]:
    """The few-shot exchanges a condition sees before the user's message: the distillation teacher's for
    'prompted' (a teacher with examples and a baseline without them would not be the same persona), else none."""
    if label not in PROMPTED or not cfg.distill.teacher_examples:
        return []
    from ..prompts import teacher_examples

    return teacher_examples(cfg.distill.teacher_examples, cfg.persona)


def persistence_system(cfg: RunConfig, system: str) -> str:
    """The teacher's system prompt on an attacked distillation row: the persona prompt plus the persistence note."""
    from ..constitution import persistence_note
    from ..models import self_name

    return f"{system}\n{persistence_note(self_name(cfg.student.model, cfg.student.name))}"


def chat(cfg: RunConfig, label: str, system: str | None, messages: list[dict], attacked: bool = False) -> list[dict]:
    """``messages`` as condition ``label`` is asked them: its system prompt, its few-shot exchanges, then them.
    ``attacked``: the user asks it to drop its character, so 'prompted' gets the persistence note (parity with the
    teacher's attacked rows)."""
    from ..messages import with_system
    from ..prompts import shot_messages

    if attacked and label == TEACHER and system:
        system = persistence_system(cfg, system)
    return with_system(shot_messages(shots(cfg, label)) + list(messages), system)


def identity(cfg: RunConfig, label: str) -> str:
    """A hash of everything a condition's replies depend on besides the prompts and sampling: the model, the
    identity of the stage that made a run model or the steering vector (``charter.runs``: it changes whenever
    that stage is redone, e.g. DPO retrained on re-made pairs), and the system prompt. Logs keyed on it go
    stale with it."""
    spec = condition_spec(cfg, label)
    parts: dict = {"label": label, "spec": dataclasses.asdict(spec)}
    stage = None
    if label in _run_models():
        stage = _run_models()[label].name
    elif label == STEERED:
        stage = STEERING
    if stage is not None and manifest_path(run_dir(cfg.name) / stage).exists():
        parts["stage_identity"] = stage_identity(run_dir(cfg.name), stage)
    if label in (*PROMPTED, STEERED):
        parts["system"] = persona_system_prompt(cfg)
    if label == TEACHER:
        parts["attacked_system"] = persistence_system(cfg, persona_system_prompt(cfg))
    if shots(cfg, label):  # absent without examples, so earlier logs stay valid
        parts["shots"] = shots(cfg, label)
    return identity_hash(parts)


def model_key(spec: ModelSpec) -> str:
    """Two specs with the same key load the same model (the self-name does not matter)."""
    return config_hash(dataclasses.asdict(dataclasses.replace(spec, name=None)))


def evictions(resident: dict[str, str], new_backend: str) -> list[str]:
    """Which resident backends (key -> backend name) to close before loading a model on ``new_backend``: with
    vLLM on either side, every other local model (served ``openai`` models hold no memory here)."""
    if new_backend == "openai":  # a served model loads nothing here
        return []
    local = [k for k, name in resident.items() if name != "openai"]
    return local if new_backend == "vllm" or "vllm" in (resident[k] for k in local) else []


class Conditions:
    """Opens a run's conditions, loading each model once and sharing it between conditions (and a judge)."""

    def __init__(self, cfg: RunConfig, report=silent):
        self.cfg, self.report = cfg, report
        self._backends: dict[str, object] = {}  # spec key -> loaded backend
        self._steered = None

    def backend(self, spec: ModelSpec):
        """A loaded backend for ``spec``, reused when the same model is asked for again. A vLLM engine takes
        most of the GPU up front, so it never shares it: loading a model next to one (or one next to other
        local models) first closes the others, which load again when next asked for."""
        key = model_key(spec)
        if key not in self._backends:
            from ..backends import make_backend

            resident = {k: getattr(b, "name", "") for k, b in self._backends.items()}
            for k in evictions(resident, spec.backend):
                b = self._backends.pop(k)
                if self._steered is not None and getattr(self._steered, "inner", None) is b:
                    self._steered = None
                b.close()
            self._backends[key] = make_backend(spec)
        return self._backends[key]

    def open(self, label: str) -> tuple[object, str | None]:
        """(backend, system prompt or None) for one condition; raises RuntimeError for a missing run model."""
        spec = condition_spec(self.cfg, label)
        if label in PROMPTED:
            return self.backend(spec), persona_system_prompt(self.cfg)
        if label == STEERED:
            if self._steered is None:
                from . import steering

                inner = self.backend(spec)
                fitted = manifest_path(run_dir(self.cfg.name) / STEERING).exists()
                if not fitted:
                    self.report("steered: no steering vector yet; fitting it first")
                # Called even when fitted: a vector made with other steering settings is an error, not reused.
                steering.fit(self.cfg, report=(lambda line: None) if fitted else self.report, backend=inner)
                self._steered = steering.load_steered_backend(self.cfg, backend=inner)
            return self._steered, None
        return self.backend(spec), None

    def release(self, label: str, keep: ModelSpec | None = None) -> None:
        """Free a run model once its work is done, unless ``keep`` (e.g. the judge) is the same model. Base,
        prompted and steered share the student model, which stays until ``close()``."""
        if label not in _run_models():
            return
        spec = condition_spec(self.cfg, label)
        if keep is not None and model_key(keep) == model_key(spec):
            return
        b = self._backends.pop(model_key(spec), None)
        if b is not None:
            b.close()

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()
        self._steered = None

    def __enter__(self) -> Conditions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_open: Conditions | None = None


def open_condition(cfg: RunConfig, label: str) -> tuple[object, str | None]:
    """(backend, system prompt or None) for ``label``; models stay loaded for later calls until ``close()``."""
    global _open
    if _open is not None and _open.cfg != cfg:  # another run or other settings: start afresh
        close()
    if _open is None:
        _open = Conditions(cfg)
    return _open.open(label)


def close() -> None:
    """Free every model ``open_condition`` loaded."""
    global _open
    if _open is not None:
        _open.close()
        _open = None

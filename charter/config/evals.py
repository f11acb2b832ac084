"""The evaluations' config sections: preferences, steering, robustness, coherence, capabilities, traits, drift,
formats. Each field carries its help, its value check and how it counts in the evaluation's identity
(``fields.setting``): ``identity=False`` marks settings that only choose what is generated or scored (rows are
keyed by condition), so changing them reuses the logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .fields import NUMBERS, OPEN_SHARE, POSITIVE, SPAN, Check, Speed, number, setting
from .sections import ModelSpec, Sampling  # noqa: F401  (named in annotations, resolved by get_type_hints)
from ..registry import BASE, DISTILLED, PROMPTED, STEERED, TRAINED

Condition = str  # a condition label: checked against the registry (``conditions``), so a plugin's counts too


def _known(evaluation: str | None = None) -> tuple[str, ...]:
    """The registry's conditions (and those only ``evaluation`` compares), read when a config is checked."""
    from .. import registry

    own = registry.evaluation(evaluation).own_conditions if evaluation else ()
    return (*registry.conditions(), *own)


def conditions(evaluation: str | None = None) -> Check:
    """Each item a condition label the registry knows (and those only ``evaluation`` compares)."""
    return Check(lambda x: isinstance(x, str) and x in _known(evaluation),
                 lambda: "one of " + " | ".join(_known(evaluation)), each=True)


def _model_conditions() -> str:
    """The conditions that are one model without a prompt: the student as it is, or a stage's model."""
    from .. import registry

    return " | ".join((registry.STUDENT_CONDITIONS[0], *registry.run_models()))


def _model_condition(v) -> bool:
    return isinstance(v, str) and v in _model_conditions().split(" | ")


@dataclass
class PreferencesConfig:
    """Revealed preferences: which of two traits a model chooses to act out, judged, rated with Elo."""

    models: list[str] = setting(
        [BASE, TRAINED],
        help="what to evaluate: 'base' (the student), 'trained' (this run's final model), 'distilled', or model "
             "paths/ids")
    judge: ModelSpec | None = setting(None, help="defaults to the student base model")
    judge_mode: Literal["generate", "logprob"] = setting(
        "generate",
        help="generate: the judge writes a verdict that is parsed; logprob: a local (transformers) judge picks the "
             "likelier of the two trait words as its answer, so small models always give one")
    condition: Literal["feel", "like", "random"] = setting("feel", help="feel | like | random")
    prompts: int = setting(500, check=POSITIVE, help="one random trait pair per prompt")
    prompt_source: str = setting("builtin", help="'builtin', a JSONL path or an HF dataset name")
    sampling: Sampling = setting(Sampling(max_tokens=512), help="the evaluated models' sampling")
    judge_sampling: Sampling = setting(
        Sampling(temperature=0.1, repetition_penalty=1.0, max_tokens=256), help="the judge's sampling")
    bootstrap: int = setting(1000, check=POSITIVE, help="bootstrap resamples for the confidence intervals")
    chunk_size: int = setting(
        64, check=POSITIVE, identity=Speed(64), help="rows generated and committed to disk together")
    traits: str = setting(
        "builtin",
        help="the trait list: builtin (ours, 144 words), reference (the paper's 144 words, so ratings compare with "
             "its figures) or a text file with one lower-case word a line")
    persona_traits: list[str] = setting(
        [],
        help="the persona's own traits, words of that list, whose mean rating change (trained - base) is reported; "
             "empty = the hand-made map in prompts/persona_traits.yaml (shipped personas, shipped lists)")


@dataclass
class SteeringConfig:
    """Activation-steering baseline: a persona direction added to the residual stream of middle layers."""

    method: Literal["mean_diff", "pca"] = setting("mean_diff", help="mean_diff | pca")
    layers: list[float] = setting(
        [0.125, 0.875], check=SPAN, help="[start, end) as fractions of the layer count (middle ~75%)")
    stems: int = setting(64, check=POSITIVE, help="contrast stems (with vs without the constitution prompt)")
    coefficients: list[float] = setting(
        [0.01, 0.02, 0.04, 0.08, 0.16], check=NUMBERS, help="sweep, in units of the mean residual-stream norm")
    coefficient: float | None = setting(None, help="fixed coefficient; skips the sweep")
    sweep_prompts: int = setting(8, check=POSITIVE, help="general prompts answered at every coefficient of the sweep")
    max_tokens: int = setting(96, check=POSITIVE, help="most new tokens per sweep reply")


@dataclass
class RobustnessConfig:
    """Break-character attacks: the share of replies a persona detector, learned from reference texts and
    never from a scored reply, still judges in persona (multi-persona mode: the paper's classifier F1).

    The conditions, personas, detectors, bootstrap and prefill switch only choose what is generated or scored
    (rows are keyed by condition and attack): they are not part of the identity, so changing them reuses the log."""

    conditions: list[Condition] = setting(
        [BASE, PROMPTED, STEERED, DISTILLED, TRAINED], check=conditions(), identity=False,
        help="the conditions compared: base | prompted | prompted-nonote | steered | distilled | trained | rl. "
             "'prompted' under an attack gets the distillation teacher's persistence note, as the teacher did on "
             "attacked rows; 'prompted-nonote' is the same without it")
    prompts: int = setting(500, check=number(2), help="prompts drawn from prompt_source, split train/held-out")
    prompt_source: str = setting("builtin", help="'builtin', a JSONL path or an HF dataset name")
    heldout_fraction: float = setting(
        0.5, check=OPEN_SHARE, help="share of the prompts held out for scoring (the rest are the detector's)")
    personas: list[str] = setting(
        [], identity=False,
        help="multi-persona mode: other runs' names, one label each; empty = single-persona mode (persona vs base)")
    encoder: str = setting("minilm", identity=False, help="minilm | tfidf | an HF encoder id/dir")
    classifier: dict = setting({}, identity=False, help="encoder training settings (epochs, lr...)")
    sampling: Sampling = setting(Sampling(max_tokens=256), help="the conditions' sampling")
    prefill: bool = setting(True, identity=False, help="also run the prefill ('keep going') attack")
    chunk_size: int = setting(
        64, check=POSITIVE, identity=Speed(64), help="rows generated and committed to disk together")
    reference: Literal["prompted", "pairs", "exemplars"] = setting(
        "prompted", identity=False,
        help="single-persona mode: the texts the detector learns the persona from, none of them a scored reply. "
             "prompted: the base model with the persona's system prompt vs the plain base model, both answering the "
             "train prompts; pairs: the distillation pairs' chosen vs rejected replies (<run>/distill/pairs.jsonl); "
             "exemplars: hand-written persona vs plain texts (robustness.exemplars), so no model, teacher or "
             "training pair shaped the detector")
    secondary: list[Literal["prompted", "pairs", "exemplars"]] = setting(
        [], identity=False,
        help="more detectors scored on the same replies and reported beside the headline one (reference), each "
             "labelled with what it learned from; 'pairs' is fit to the contrast DPO optimised, so it can flatter "
             "the distilled and trained models and never certifies them")
    detector_seeds: int = setting(
        1, identity=False,
        help="fits of each detector with different seeds on the same texts; the first (the run's own seed) gives the "
             "table and its bootstrap CIs, all of them the spread of every rate (min, max, sd)")
    exemplars: str = setting(
        "builtin", identity=False,
        help="reference=exemplars: 'builtin' (prompts/persona_exemplars/<persona>.yaml) or a YAML file with "
             "'persona' and 'plain' lists of texts")
    bootstrap: int = setting(
        1000, check=POSITIVE, identity=False, help="resamples of the held-out prompts for the 95% CIs")
    train_replies: bool = setting(
        True, identity=False,
        help="every condition also answers the train prompts plainly, so other runs' multi-persona mode can learn "
             "from this run; false generates only what this run scores (single mode, reference pairs or exemplars: a "
             "tenth fewer replies)")


@dataclass
class CoherenceConfig:
    """Pairwise LLM-as-judge coherence: the trained model vs each other condition, both orders."""

    judge: ModelSpec | None = setting(None, help="defaults to the student base model")
    against: list[Condition] = setting(
        [BASE, PROMPTED, STEERED, DISTILLED], check=conditions(), help="the conditions the trained model is judged against")
    prompts: int = setting(100, check=POSITIVE, help="prompts judged (both orders each)")
    prompt_source: str = setting(
        "builtin",
        help="'builtin' (the preference_prompts pool: first user messages no training stage uses), a JSONL path or "
             "an HF dataset; every prompt a training stage used is removed from it first")
    sampling: Sampling = setting(Sampling(max_tokens=256), help="replies")
    judge_sampling: Sampling = setting(
        Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=256), help="the judge's sampling")

LM_EVAL_TASKS = Check(lambda v: all(isinstance(e, str) and e.partition(":")[0].strip()
                                    and (e.partition(":")[2].strip() or "0").isdigit() for e in v),
                      "entries 'name:fewshot', e.g. 'arc_challenge:25'")


@dataclass
class CapabilitiesConfig:
    """General benchmarks through lm-evaluation-harness (needs its datasets available locally)."""

    tasks: list[str] = setting(
        ["arc_challenge:25", "hellaswag:10", "truthfulqa_mc1:0", "truthfulqa_mc2:0", "winogrande:5", "mmlu:5"],
        check=LM_EVAL_TASKS,
        help="lm-evaluation-harness tasks as name:fewshot")
    models: list[str] = setting(
        [BASE, TRAINED], help="what to evaluate: base | trained | distilled | label=path or a model")
    limit: int | None = setting(None, check=POSITIVE, help="examples per task (smoke runs)")
    batch_size: int = setting(8, check=POSITIVE, identity=Speed(8), help="lm-evaluation-harness batch size")


@dataclass
class TraitsConfig:
    """Self-reported traits: Anthropic's model-written persona evaluations, each item scored by which of its two
    answers (e.g. ' Yes' / ' No') the model finds likelier after the question; no judge, no generation."""

    data: str = setting(
        "",
        help="a folder of the dataset's persona JSONL files, one <behaviour>.jsonl per behaviour "
             "(github.com/anthropics/evals, persona/; CC BY 4.0); required, nothing is downloaded")
    behaviours: list[str] | str = setting(
        [],
        help="behaviour names (file names without .jsonl); 'all' = every file in data; empty = the run's persona's "
             "behaviours in prompts/persona_behaviours.yaml")
    items_per_behaviour: int | None = setting(
        100,
        help="a seeded sample of each behaviour's items (the same whatever other behaviours are chosen); null = "
             "every item")
    models: list[Condition] = setting(
        [BASE, TRAINED], check=conditions(),
        help="the conditions compared, the first as the baseline: base | prompted | prompted-nonote | steered | "
             "distilled | trained | rl")
    bootstrap: int = setting(
        1000, help="resamples of each behaviour's items for the 95% CIs (paired: the same items for every model)")


@dataclass
class DriftConfig:
    """Long conversations: the in-persona rate of every assistant turn of simulated multi-turn chats (a
    break-character request at one turn), judged by an independent detector, beside an activation monitor (the
    projection on the steering fit's persona direction) and an activation-capping baseline.

    The conditions, the detector, the bootstrap, the monitor and the capping settings only choose what is generated
    or scored (rows are keyed by condition; the capped condition's identity holds its settings): they are not part
    of the identity, so changing them reuses the logs."""

    conditions: list[Condition] = setting(
        [BASE, PROMPTED, TRAINED], check=conditions("drift"), identity=False,
        help="the conditions compared: base | prompted | prompted-nonote | steered | distilled | trained | rl | "
             "capped (cap_model with its projection on the persona direction clamped from below; needs `charter eval "
             "steering`)")
    conversations: int = setting(
        20, help="simulated conversations per condition (the same user turns for every condition)")
    turns: int = setting(12, help="user turns per conversation; every assistant turn is scored")
    attack: str = setting(
        "real-self", help="the break-character request (an id of prompts/attacks.yaml) appended to turn attack_turn")
    attack_turn: int | None = setting(7, help="the user turn (1-based) that carries the attack; null = no attack")
    followup_share: float = setting(
        0.5,
        help="chance that a later user turn is a short generic follow-up (prompts/drift.yaml) rather than the next "
             "prompt of the pool")
    prompt_source: str = setting(
        "builtin",
        help="'builtin' (the preference_prompts pool), a JSONL path or an HF dataset; every prompt a training stage "
             "used is removed first, then one seeded shuffle gives the reference and the conversations")
    reference: Literal["prompted", "exemplars", "pairs"] = setting(
        "prompted", identity=False,
        help="what the detector learns the persona from, never a scored reply: prompted (the base model with vs "
             "without the persona's system prompt on reference prompts no conversation uses), exemplars "
             "(hand-written texts) or pairs (the distillation pairs: fit to the DPO contrast, so it flatters the "
             "distilled and trained models)")
    reference_prompts: int = setting(
        32,
        help="prompts set aside for the detector: three quarters for its reference texts (reference=prompted), a "
             "quarter to check it (prompted vs base single replies)")
    exemplars: str = setting(
        "builtin", identity=False,
        help="reference=exemplars: 'builtin' (prompts/persona_exemplars/<persona>.yaml) or a YAML file")
    encoder: str = setting("minilm", identity=False, help="the detector: minilm | tfidf | an HF encoder id/dir")
    classifier: dict = setting({}, identity=False, help="encoder training settings (epochs, lr...)")
    sampling: Sampling = setting(Sampling(max_tokens=128), help="the conditions' sampling, every turn")
    max_context: int = setting(
        4096,
        help="most prompt tokens (local models): whole early exchanges are dropped to fit, never the system prompt "
             "or few-shot exchanges; each reply records how many were dropped")
    monitor: bool = setting(
        True, identity=False,
        help="the activation monitor: each assistant turn's mean hidden state at the steering layers projected on "
             "the persona direction `charter eval steering` saved (skipped, in one line, without it)")
    cap_model: Condition = setting(
        TRAINED, check=Check(_model_condition, _model_conditions),
        identity=False, help="the model the 'capped' condition clamps")
    cap_level: float = setting(
        0.5, identity=False,
        help="the capping threshold per steering layer, between the student's mean projection without (0) and with "
             "(1) the persona's system prompt on the steering contrast's stems")
    bootstrap: int = setting(1000, identity=False, help="resamples of the conversations for the 95% CIs")
    chunk_size: int = setting(64, identity=False, help="rows generated and committed to disk together")


FormatName = Literal["json", "tool_call", "code_review", "bullets"]


@dataclass
class FormatsConfig:
    """Other formats: whether each condition's reply is valid JSON, a parsable tool call, a code review that
    points at lines, or a bulleted summary (parsed, not judged), and the in-persona rate of its text.

    Only the sampling, the samples per prompt and the reference prompts count in the identity: each row keeps its
    prompt's text and is redone when it changes, and the models count through their own identities."""

    conditions: list[Condition] = setting(
        [BASE, PROMPTED, TRAINED], check=conditions(), identity=False,
        help="the conditions compared (base is the floor); each is compared with 'prompted' when listed, else with "
             "the first")
    formats: list[FormatName] = setting(
        ["json", "tool_call", "code_review", "bullets"], identity=False,
        help="json | tool_call | code_review | bullets")
    prompts: str = setting(
        "builtin", identity=False, help="'builtin' (prompts/formats.yaml) or a YAML file in the same layout")
    per_format: int | None = setting(
        None, identity=False, help="the first N prompts of each format (smoke runs); null = all")
    samples: int = setting(3, help="replies per prompt and condition; the CIs resample prompts")
    prompt_source: str = setting(
        "builtin",
        help="where the detector's reference prompts come from: 'builtin' (the preference_prompts pool), a JSONL "
             "path or an HF dataset; prompts a training stage used are removed")
    reference: Literal["prompted", "exemplars", "pairs"] = setting(
        "prompted", identity=False,
        help="what the detector learns the persona from, never a scored reply: prompted (the base model with vs "
             "without the persona's system prompt on plain reference prompts), exemplars (hand-written texts) or "
             "pairs (the distillation pairs: fit to the DPO contrast)")
    reference_prompts: int = setting(
        32,
        help="reference prompts: three quarters for the detector's texts (reference=prompted), a quarter to check it")
    exemplars: str = setting(
        "builtin", identity=False,
        help="reference=exemplars: 'builtin' (prompts/persona_exemplars/<persona>.yaml) or a YAML file")
    encoder: str = setting("minilm", identity=False, help="the detector: minilm | tfidf | an HF encoder id/dir")
    classifier: dict = setting({}, identity=False, help="encoder training settings (epochs, lr...)")
    sampling: Sampling = setting(Sampling(max_tokens=256), help="the conditions' sampling")
    bootstrap: int = setting(1000, identity=False, help="resamples of the prompts for the 95% CIs")
    chunk_size: int = setting(64, identity=False, help="rows generated and committed to disk together")

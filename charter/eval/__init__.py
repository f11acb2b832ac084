"""Evaluations of a trained character (``charter eval NAME CONFIG``; ``charter eval all``; ``charter report``),
declared here in the registry in the run config's section order.

- ``preferences``: revealed preferences (trait Elo; ``elo``: ratings from pairwise comparisons, pure numpy);
- ``steering``: the activation-steering baseline (contrastive direction, hooks, coefficient sweep), run first
  by ``charter eval all`` because the 'steered' condition reads it;
- ``robustness``: break-character attacks and the prefill attack on held-out prompts, scored by persona
  detectors (``classifier``, ``inpersona``);
- ``coherence``: pairwise LLM-judge coherence, both orders, consistent verdicts only;
- ``capabilities``: general benchmarks through lm-evaluation-harness (+ a tiny local task in ``tasks/``);
- ``traits``, ``drift``, ``formats``: self-reported traits, long conversations, other output formats.

``conditions`` are the compared models; ``report`` the HTML page (sections in ``report_sections``), the model
card's sections are in ``card_sections``; ``all`` runs every evaluation, then the report.
"""

from __future__ import annotations

from .. import registry
from ..config.evals import (CapabilitiesConfig, CoherenceConfig, DriftConfig, FormatsConfig, PreferencesConfig,
                            RobustnessConfig, SteeringConfig, TraitsConfig)
from ..preflight_stages import capabilities_specs, coherence_specs, preferences_specs, robustness_specs
from ..registry import Evaluation, Section
from .conditions import STEERED
from .drift_monitor import CAPPED
from . import capabilities, card_sections as card, coherence, drift, formats, preferences, report_sections as html
from . import robustness, steering, traits


def _traits_args(p) -> None:
    p.add_argument("--data", help="the Anthropic persona evaluations folder (the same as traits.data=DIR)")


def _traits_overrides(args) -> list[str]:
    return [f"traits.data={args.data}"] if getattr(args, "data", None) else []


for _entry in (
    Evaluation("preferences", "revealed preferences: trait Elo ratings", preferences.run, PreferencesConfig,
               "evaluation: revealed preferences", results="comparison.json",
               report=(Section("preferences", "Revealed preferences", html.preferences),), card=card.preferences,
               preflight=preferences_specs, prompts=lambda cfg: [cfg.preferences.prompt_source]),
    Evaluation("steering", "fit the activation-steering baseline (direction + sweep)", steering.fit, SteeringConfig,
               "evaluation: the activation-steering baseline", results="steering.json",
               report=(Section("steering", "Steering baseline", html.steering),), card=card.steering,
               condition=STEERED, color="#f4a261", first=True),
    Evaluation("robustness", "break-character attacks and prefill, scored by a classifier", robustness.run,
               RobustnessConfig, "evaluation: break-character attacks",
               report=(Section("robustness", "Robustness to break-character attacks", html.robustness),
                       Section("prefill", "Prefill attack", html.prefill)), card=card.robustness,
               preflight=robustness_specs, prompts=lambda cfg: [cfg.robustness.prompt_source]),
    Evaluation("coherence", "pairwise LLM-judge coherence, trained vs each condition", coherence.run, CoherenceConfig,
               "evaluation: pairwise coherence judge",
               report=(Section("coherence", "Coherence", html.coherence),), card=card.coherence,
               preflight=coherence_specs, prompts=lambda cfg: [cfg.coherence.prompt_source]),
    Evaluation("capabilities", "general benchmarks through lm-evaluation-harness", capabilities.run,
               CapabilitiesConfig, "evaluation: general benchmarks",
               report=(Section("capabilities", "General capabilities", html.capabilities),), card=card.capabilities,
               preflight=capabilities_specs, packages=("lm_eval",)),
    Evaluation("traits", "self-reported traits: Anthropic persona evals by log-probability (traits.data)", traits.run,
               TraitsConfig, "evaluation: self-reported traits (Anthropic persona evals, log-probabilities)",
               skip=traits.skip, cli_args=_traits_args, cli_overrides=_traits_overrides),
    Evaluation("drift", "long conversations: in-persona rate by turn, activation monitor, capping", drift.run,
               DriftConfig, "evaluation: the persona over long conversations, an activation monitor and capping",
               own_conditions=(CAPPED,)),
    Evaluation("formats", "JSON, tool calls, code reviews, bullets: format validity and in-persona rate", formats.run,
               FormatsConfig, "evaluation: the persona in JSON, tool calls, code reviews and bulleted summaries"),
):
    registry.register(_entry)

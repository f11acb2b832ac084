"""The whole run's config: one section per stage and evaluation, plus the run's name, persona and seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .evals import (CapabilitiesConfig, CoherenceConfig, DriftConfig, FormatsConfig,  # noqa: F401
                    PreferencesConfig, RobustnessConfig, SteeringConfig, TraitsConfig)
from .sections import (DistillConfig, DPOStageConfig, ExpandConfig, IntrospectConfig, MergeConfig,  # noqa: F401
                       ModelSpec, RLConfig, SFTStageConfig)


@dataclass
class RunConfig:
    name: str = field(default="run", metadata={
        "help": "the run's folder under $CHARTER_HOME/runs (letters, digits, '.', '_', '-')"})
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = field(default="none", metadata={
        "help": "where DPO and SFT log their metrics as they train (TensorBoard: event files under "
                "<run>/<stage>/trainer/runs/, readable offline); none = only log_history.json"})
    run_name: str | None = field(default=None, metadata={
        "help": "the name tracking tools show; default the run's name (each stage adds -dpo / -sft)"})
    persona: str = field(default="loving", metadata={"help": "a shipped persona name or a constitution file path"})
    seed: int = field(default=123456, metadata={"help": "seeds every sampled choice and generation"})
    student: ModelSpec = field(default_factory=ModelSpec, metadata={
        "help": "the model being trained (and the base of every comparison)"})
    expand: ExpandConfig = field(default_factory=ExpandConfig, metadata={"help": "stage 1: more prompts per trait"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={
        "help": "stage 2: teacher vs student answers -> DPO pairs"})
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig, metadata={"help": "stage 3: DPO + LoRA on the pairs"})
    introspect: IntrospectConfig = field(default_factory=IntrospectConfig, metadata={
        "help": "stage 4: self-reflection and self-interaction data"})
    sft: SFTStageConfig = field(default_factory=SFTStageConfig, metadata={
        "help": "stage 5: SFT + LoRA on the introspection data"})
    merge: MergeConfig = field(default_factory=MergeConfig, metadata={
        "help": "stage 6: the final model and one persona adapter"})
    rl: RLConfig = field(default_factory=RLConfig, metadata={
        "help": "optional stage 7: online RL (GRPO) with persona, judge and coherence rewards"})
    preferences: PreferencesConfig = field(default_factory=PreferencesConfig, metadata={
        "help": "evaluation: revealed preferences"})
    steering: SteeringConfig = field(default_factory=SteeringConfig, metadata={
        "help": "evaluation: the activation-steering baseline"})
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig, metadata={
        "help": "evaluation: break-character attacks"})
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig, metadata={
        "help": "evaluation: pairwise coherence judge"})
    capabilities: CapabilitiesConfig = field(default_factory=CapabilitiesConfig, metadata={
        "help": "evaluation: general benchmarks"})
    traits: TraitsConfig = field(default_factory=TraitsConfig, metadata={
        "help": "evaluation: self-reported traits (Anthropic persona evals, log-probabilities)"})
    drift: DriftConfig = field(default_factory=DriftConfig, metadata={
        "help": "evaluation: the persona over long conversations, an activation monitor and capping"})
    formats: FormatsConfig = field(default_factory=FormatsConfig, metadata={
        "help": "evaluation: the persona in JSON, tool calls, code reviews and bulleted summaries"})

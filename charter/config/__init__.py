"""Run configuration: dataclasses, YAML loading and ``key=value`` overrides.

One YAML file describes one run (persona, models, per-stage settings). Unknown keys are errors that name
the key path, so a typo never silently falls back to a default. TRL/peft arguments are *not* redeclared
here: the ``trl`` and ``lora`` sub-dicts pass straight through to ``DPOConfig``/``SFTConfig``/``LoraConfig``.

- ``sections.py``: the training stages' sections, ``Sampling`` and ``ModelSpec``;
- ``evals.py``: the evaluations' sections;
- ``run.py``: ``RunConfig``, one field per section, built from the registry on first use;
- ``load.py``: YAML, overrides and type checks (``load_config``);
- ``checks.py``: ranges, run names and model_kwargs (``validate``).
"""

from ..errors import ConfigError
from .checks import RANGES, check_model_kwargs, validate
from .evals import (CapabilitiesConfig, CoherenceConfig, Condition, PreferencesConfig, RobustnessConfig,
                    SteeringConfig)
from .load import _dataclass_type, apply_override, from_dict, load_config, to_dict
from .sections import (BATCH_HELP, CHECKPOINT_HELP, MODEL_KWARGS, MODEL_KWARGS_ELSEWHERE, MODEL_KWARGS_HELP, Backend,
                       DistillConfig, DPOStageConfig, DType, ExpandConfig, IntrospectConfig, MergeConfig, ModelSpec,
                       RLConfig, Sampling, SFTStageConfig, Truncated)

__all__ = ["BATCH_HELP", "CHECKPOINT_HELP", "MODEL_KWARGS", "MODEL_KWARGS_ELSEWHERE", "MODEL_KWARGS_HELP", "RANGES",
           "Backend", "CapabilitiesConfig", "CoherenceConfig", "Condition", "ConfigError", "DPOStageConfig",
           "DType", "DistillConfig", "ExpandConfig", "IntrospectConfig", "MergeConfig", "ModelSpec",
           "PreferencesConfig", "RLConfig", "RobustnessConfig", "RunConfig", "SFTStageConfig", "Sampling", "SteeringConfig",
           "Truncated", "_dataclass_type", "apply_override", "check_model_kwargs", "from_dict", "load_config",
           "to_dict", "validate"]


def __getattr__(name: str):
    if name == "RunConfig":  # built on first use, from the registry's sections (see run.py)
        from .run import build

        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

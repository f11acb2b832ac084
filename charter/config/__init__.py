"""Run configuration: dataclasses, YAML loading and ``key=value`` overrides.

One YAML file describes one run (persona, models, per-stage settings). Unknown keys are errors that name
the key path, so a typo never silently falls back to a default. TRL/peft arguments are *not* redeclared
here: the ``trl`` and ``lora`` sub-dicts pass straight through to ``DPOConfig``/``SFTConfig``/``LoraConfig``.

Each field is declared once, with everything about it: ``setting(default, check=..., identity=..., help=...)``
(``fields.py``) gives its help (``charter config show``), its value check and how it counts in a stage's
identity. A new field or section needs no table edited elsewhere.

- ``fields.py``: ``setting``, the checks (``POSITIVE``, ``SHARE``, ``number(lo, hi)``...) and identity rules;
- ``sections.py``: the training stages' sections, ``Sampling`` and ``ModelSpec``;
- ``evals.py``: the evaluations' sections;
- ``run.py``: ``RunConfig``, one field per section, built from the registry on first use;
- ``load.py``: YAML, overrides and type checks (``load_config``);
- ``checks.py``: the fields' checks, run names and model_kwargs (``validate``);
- ``identity.py``: the fields' identity rules applied to a recorded config (``identity_view``, ``recorded``).
"""

from ..errors import ConfigError
from .checks import check_fields, check_model_kwargs, validate
from .evals import (CapabilitiesConfig, CoherenceConfig, Condition, PreferencesConfig, RobustnessConfig,
                    SteeringConfig)
from .fields import Check, number, setting
from .load import _dataclass_type, apply_override, from_dict, load_config, to_dict
from .sections import (BATCH_HELP, CHECKPOINT_HELP, MODEL_KWARGS, MODEL_KWARGS_ELSEWHERE, MODEL_KWARGS_HELP, Backend,
                       DistillConfig, DPOStageConfig, DType, ExpandConfig, IntrospectConfig, MergeConfig, ModelSpec,
                       RLConfig, Sampling, SFTStageConfig, Truncated)

__all__ = ["BATCH_HELP", "CHECKPOINT_HELP", "MODEL_KWARGS", "MODEL_KWARGS_ELSEWHERE", "MODEL_KWARGS_HELP", "Backend",
           "CapabilitiesConfig", "Check", "CoherenceConfig", "Condition", "ConfigError", "DPOStageConfig", "DType",
           "DistillConfig", "ExpandConfig", "IntrospectConfig", "MergeConfig", "ModelSpec", "PreferencesConfig",
           "RLConfig", "RobustnessConfig", "RunConfig", "SFTStageConfig", "Sampling", "SteeringConfig", "Truncated",
           "_dataclass_type", "apply_override", "check_fields", "check_model_kwargs", "from_dict", "load_config",
           "number", "setting", "to_dict", "validate"]


def __getattr__(name: str):
    if name == "RunConfig":  # built on first use, from the registry's sections (see run.py)
        from .run import build

        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

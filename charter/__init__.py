"""charter: character training for chat models (constitution -> DPO distillation -> introspection SFT).

Importing this package is light: no torch, transformers or TRL until a stage needs them.
"""

__version__ = "0.1.0"

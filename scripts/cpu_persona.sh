#!/usr/bin/env bash
# The measured persona on a CPU, end to end: train, then the evaluations the README's table comes from.
#   bash scripts/cpu_persona.sh [CONFIG] [key=value ...]      (default configs/cpu-sarcastic.yaml)
# Prints each command's wall time and the total; the CPU model first, since every figure depends on it.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:-configs/cpu-sarcastic.yaml}; shift || true
charter=${CHARTER:-.venv/bin/charter}
lscpu | grep -m1 "Model name" || true
start=$(date +%s)
step() { local t0; t0=$(date +%s); echo "\$ charter $*"; $charter "$@"; echo "[$(( $(date +%s) - t0 ))s] charter $1 $2"; }
step train "$cfg" "$@"
step eval steering "$cfg" "$@"
step eval robustness "$cfg" "$@"
step eval coherence "$cfg" "$@"
# The judge-free coherence proxy on the robustness replies (no attack), beside the run's other outputs.
name=$($charter config show "$cfg" "$@" | sed -n 's/^name: \([^ ]*\).*/\1/p' | head -1)
py=${PYTHON:-.venv/bin/python}
t0=$(date +%s); $py scripts/fluency.py "$name" -o "${CHARTER_HOME:-$HOME/.charter}/runs/$name/fluency.json"
echo "[$(( $(date +%s) - t0 ))s] fluency"
echo "total: $(( $(date +%s) - start ))s"

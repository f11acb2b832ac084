#!/usr/bin/env bash
# The paper's multi-persona robustness result on a CPU: several personas trained from one config, each evaluated,
# then one classifier that names which persona wrote each held-out reply, per condition, under the 8 attacks.
#   bash scripts/multi_persona.sh [key=value ...]         (overrides go to every command)
#   PERSONAS="sarcastic poetic" PREFIX=try- bash scripts/multi_persona.sh robustness.prompts=20   # a quick look
# Each persona P is the run $PREFIX$P (default cpu-personas-P): `charter train`, `charter eval steering`,
# `charter eval robustness` (single-persona mode: its split and replies, which the classifier reads). Then the
# multi-persona mode runs inside the first persona's run, with the others as `robustness.personas`; it writes to
# that run's eval-robustness/personas/, so the run's single-persona results stay as they are. Last, the results
# file ($OUT, default docs/results/cpu-personas.json, with every command's wall time as notes) and the figure.
# Prints each command's wall time and the total; the CPU model first, since every figure depends on it. Measured
# on a 2-core Intel Xeon (float32): about 20 minutes a persona (6 train, 14 robustness); configs/cpu-personas.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=configs/cpu-personas.yaml
read -r -a personas <<< "${PERSONAS:-sarcastic poetic loving mathematical}"
prefix=${PREFIX:-cpu-personas-}
out=${OUT:-docs/results/cpu-personas.json}
figure=${FIGURE:-docs/cpu-personas-confusion.png}
charter=${CHARTER:-.venv/bin/charter}
py=${PYTHON:-.venv/bin/python}
if [ "${#personas[@]}" -lt 2 ]; then echo "multi_persona.sh: PERSONAS needs at least two personas" >&2; exit 2; fi
lscpu | grep -m1 "Model name" || true
start=$(date +%s)
notes=()
step() {
  local t0 took; t0=$(date +%s); echo "\$ charter $*"; $charter "$@"; took=$(( $(date +%s) - t0 ))
  echo "[${took}s] charter $*"; notes+=(--note "${took} s: charter $*")
}
for p in "${personas[@]}"; do
  step train "$cfg" "persona=$p" "name=$prefix$p" "$@"
  step eval steering "$cfg" "persona=$p" "name=$prefix$p" "$@"
  step eval robustness "$cfg" "persona=$p" "name=$prefix$p" "$@"
done
first=${personas[0]}
others=()
for p in "${personas[@]:1}"; do others+=("$prefix$p"); done
listed=$(IFS=,; echo "${others[*]}")
step eval robustness "$cfg" "persona=$first" "name=$prefix$first" "robustness.personas=[$listed]" "$@"
t0=$(date +%s)
$py scripts/results.py collect "$prefix$first" -o "$out" \
  --command "PERSONAS='${personas[*]}' PREFIX=$prefix bash scripts/multi_persona.sh $*" \
  --note "personas: ${personas[*]} (runs $prefix*); total $(( $(date +%s) - start )) s" "${notes[@]}"
$py scripts/confusion_figure.py "$out" -o "$figure"
echo "[$(( $(date +%s) - t0 ))s] results file and figure"
echo "total: $(( $(date +%s) - start ))s"
echo "next: $py scripts/results.py readme --write   (redraws the README table marked" \
  "'results $(basename "$out" .json) multipersona')"

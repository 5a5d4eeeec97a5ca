#!/usr/bin/env bash
# The main job on the shipped default model (GE2E): enroll a demo population (the store calibrates itself),
# verify, calibrate on a trial list, identify, and evaluate every storage format.
# `make demo` installs debian-packages.txt first; run directly, this script only checks that it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo_out}
VF=.venv/bin/voxfloat

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < debian-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo: missing Debian packages: ${missing[*]} (make demo installs debian-packages.txt)" >&2
  exit 1
fi
mkdir -p "$OUT"
rm -f "$OUT/population.vxf"

step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }
step "make the demo population (real Asterisk voices and espeak-ng voices)" .venv/bin/python demo/population.py "$OUT"
step "enroll 3 utterances a speaker into a 4-bit store with the shipped model (no --model); the store calibrates itself" \
  $VF enroll "$OUT/enroll.csv" --format e2m1 --scale vector --out "$OUT/population.vxf"
step "what the store holds" $VF info "$OUT/population.vxf"
mapfile -t tests < <(awk 'NR % 7 == 1 {print $1 " " $2}' "$OUT/tests.txt")
claim=${tests[0]%% *}
files=()
for t in "${tests[@]}"; do files+=("$OUT/${t#* }"); done
step "verify with the self-calibrated threshold: is each file '$claim'? (exit code 1: some rejected)" \
  $VF verify --store "$OUT/population.vxf" --speaker "$claim" "${files[@]}" || true
step "calibrate the store's thresholds on the demo trials instead (overrides self-calibration)" \
  $VF calibrate --store "$OUT/population.vxf" --trials "$OUT/trials.txt" --audio-root "$OUT/audio"
step "verify again with the calibrated e2m1 threshold" \
  $VF verify --store "$OUT/population.vxf" --speaker "$claim" "${files[@]}" || true
step "identify: who speaks? (true speakers: ${tests[*]%% *})" \
  $VF identify --store "$OUT/population.vxf" --top 3 "${files[@]}"
step "export GE2E without the scaling node (needs the export extra), to show what scaling does" \
  $VF export ge2e --out "$OUT/ge2e-noscale.onnx" --no-scale
step "evaluate every storage format and scale mode on all pairs of demo utterances" \
  $VF eval --model "$OUT/ge2e-noscale.onnx" --trials "$OUT/trials.txt" --audio-root "$OUT/audio" \
  --scale none,vector,block32 --plot "$OUT/formats.png" --json "$OUT/eval.json"

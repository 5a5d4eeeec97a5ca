#!/usr/bin/env bash
# The main job on the embedded default: export GE2E, enroll a demo population, verify, identify, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo_out}
VF=.venv/bin/voxfloat

# Demo audio: Debian's Asterisk prompt recordings (real voices) and espeak-ng.
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
for lang in en es fr it ru; do
  dpkg -s "asterisk-core-sounds-$lang-wav" >/dev/null 2>&1 || need+=("asterisk-core-sounds-$lang-wav")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$OUT"
rm -f "$OUT/population.vxf"

step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }
M="$OUT/ge2e.onnx"
step "export the embedded default model (GE2E) with the scaling node for e2m1" \
  $VF export ge2e --out "$M" --format e2m1
step "make the demo population" .venv/bin/python demo/population.py "$OUT"
step "enroll 3 utterances a speaker into a 4-bit store" \
  $VF enroll "$OUT/enroll.csv" --model "$M" --format e2m1 --scale vector --out "$OUT/population.vxf"
step "what the store holds" $VF info "$OUT/population.vxf"
mapfile -t tests < <(awk 'NR % 7 == 1 {print $1 " " $2}' "$OUT/tests.txt")
claim=${tests[0]%% *}
files=()
for t in "${tests[@]}"; do files+=("$OUT/${t#* }"); done
step "verify with the model's default threshold: is each file '$claim'? (exit code 1: some rejected)" \
  $VF verify --model "$M" --store "$OUT/population.vxf" --speaker "$claim" "${files[@]}" || true
step "calibrate the store's thresholds on the demo trials (8 kHz telephone prompts score lower than the default assumes)" \
  $VF calibrate --model "$M" --store "$OUT/population.vxf" --trials "$OUT/trials.txt" --audio-root "$OUT/audio"
step "verify again with the calibrated e2m1 threshold" \
  $VF verify --model "$M" --store "$OUT/population.vxf" --speaker "$claim" "${files[@]}" || true
step "identify: who speaks? (true speakers: ${tests[*]%% *})" \
  $VF identify --model "$M" --store "$OUT/population.vxf" --top 3 "${files[@]}"
step "export GE2E without the scaling node, to show what scaling does" \
  $VF export ge2e --out "$OUT/ge2e-noscale.onnx" --no-scale
step "evaluate every storage format and scale mode on all pairs of demo utterances" \
  $VF eval --model "$OUT/ge2e-noscale.onnx" --trials "$OUT/trials.txt" --audio-root "$OUT/audio" \
  --scale none,vector,block32 --plot "$OUT/formats.png" --json "$OUT/eval.json"

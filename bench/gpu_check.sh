#!/usr/bin/env bash
# GPU acceptance check: one unattended command for a fresh Linux machine with an NVIDIA GPU and its driver.
#
#   bench/gpu_check.sh            # full check, about 8 minutes at most (VOXFLOAT_GPU_CHECK_BUDGET)
#   bench/gpu_check.sh --quick    # small sizes (GE2E only, 2 s inputs, 20k voiceprints): the CPU-only test
#
# It makes its own venv (python3 >= 3.11) and installs the checkout with the `export` and `cuda` extras
# (torch from the PyTorch CPU index: it only exports; the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9
# come as nvidia-* wheels through onnxruntime-gpu[cuda,cudnn]), then runs bench/gpu_check.py step by step,
# each under its own time limit: env, export, providers, parity, throughput, scan (see that file).
# Every table is appended to the output file as it is measured, so a cut-off run keeps what it measured.
# ../shared (reference inputs and weights, corpus) must sit beside the checkout, as for the tests.
#
# Environment:
#   VOXFLOAT_GPU_CHECK_PYTHON   python of an existing environment to use instead of installing (the test
#                               uses the project's .venv this way)
#   VOXFLOAT_GPU_CHECK_WORK     folder for the venv, the exported models and the table (default .gpu-check/)
#   VOXFLOAT_GPU_CHECK_OUT      the table file (default $WORK/gpu_check-<host>-<UTC time>.md)
#   VOXFLOAT_GPU_CHECK_BUDGET   seconds for the whole run (default 475); each step gets min(its cap, what is left)
#   VOXFLOAT_GPU_CHECK_NVIDIA_SMI  the nvidia-smi to ask (default nvidia-smi; a missing one means no GPU)
#
# Exit status: 0 every check passed on a GPU; 1 a check failed, a step timed out or the install failed;
# 2 bad usage; 3 no NVIDIA GPU: the CPU part (env, export, CPU throughput, store scan) ran and passed.
set -uo pipefail

NO_GPU_EXIT=3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=()
case "${1:-}" in
    "") ;;
    --quick) QUICK=(--quick) ;;
    *) echo "usage: bench/gpu_check.sh [--quick]" >&2; exit 2 ;;
esac
WORK=${VOXFLOAT_GPU_CHECK_WORK:-$ROOT/.gpu-check}
mkdir -p "$WORK/models" || exit 1
OUT=${VOXFLOAT_GPU_CHECK_OUT:-$WORK/gpu_check-$(hostname)-$(date -u +%Y%m%dT%H%M%SZ).md}
BUDGET=${VOXFLOAT_GPU_CHECK_BUDGET:-475}
SMI=${VOXFLOAT_GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
START=$SECONDS
FAILED=0

say() { echo "$*" | tee -a "$OUT"; }

# step NAME CAP COMMAND...: run COMMAND (an argument @LIMIT@ becomes the limit) under min(CAP, budget
# left) seconds; record a timeout or a failure
step() {
    local name=$1 cap=$2 left limit rc
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    limit=$((cap < left ? cap : left))
    if ((limit < 5)); then
        say "step $name: not run, the ${BUDGET} s budget is spent (FAIL)"
        FAILED=1
        return
    fi
    timeout --kill-after=10 "$limit" "${@/#@LIMIT@/$limit}"
    rc=$?
    if ((rc == 124 || rc == 137)); then
        say "step $name: TIMEOUT after ${limit} s (FAIL)"
        FAILED=1
    elif ((rc != 0)); then
        say "step $name: exit status $rc (FAIL)"
        FAILED=1
    fi
}

install() {  # into $WORK/venv; reused while its stamp is newer than pyproject.toml
    local venv=$WORK/venv torch_pin resemblyzer_pin extras=export
    [[ "$GPU" == 1 ]] && extras=export,cuda
    if [[ -f "$venv/.stamp-$extras" && "$venv/.stamp-$extras" -nt "$ROOT/pyproject.toml" ]]; then
        echo "install: reusing $venv"
        return 0
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "install: needs python3 >= 3.11 (found $(python3 -V 2>&1))"; return 1; }
    python3 -m venv "$venv" || { echo "install: python3 -m venv failed (apt-get install python3-venv)"; return 1; }
    torch_pin=$(grep -o 'torch==[0-9.]*' "$ROOT/pyproject.toml" | head -1)
    resemblyzer_pin=$(grep -o 'resemblyzer==[0-9.]*' "$ROOT/Makefile" | head -1)
    # CPU torch (about 200 MB instead of several GB of CUDA wheels): torch only exports the models; its
    # dependencies come from PyPI with the project below
    "$venv/bin/pip" install -q --no-deps --retries 1 --timeout 20 --index-url https://download.pytorch.org/whl/cpu \
        "$torch_pin" || echo "install: the PyTorch CPU index failed; torch comes from PyPI"
    "$venv/bin/pip" install -q -e "$ROOT[$extras]" || return 1
    "$venv/bin/pip" install -q --no-deps "$resemblyzer_pin" || return 1  # GE2E weights, as in the Makefile
    touch "$venv/.stamp-$extras"
}

say "# voxfloat GPU check, $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)${QUICK[*]:+ (quick)}"
GPU=0
DEVICE=cpu
if ! command -v "$SMI" >/dev/null; then
    GPU_INFO="$SMI not found"
elif GPU_INFO=$("$SMI" --query-gpu=name,driver_version --format=csv,noheader 2>&1) && [[ -n "$GPU_INFO" ]]; then
    GPU=1
    DEVICE=cuda
fi
if ((GPU)); then
    say "GPU: $GPU_INFO"
else
    say "no NVIDIA GPU ($(echo "$GPU_INFO" | head -1)): CPU part only; exit status $NO_GPU_EXIT if it passes"
fi

if [[ -n "${VOXFLOAT_GPU_CHECK_PYTHON:-}" ]]; then
    PY=$VOXFLOAT_GPU_CHECK_PYTHON
    say "install: skipped, using $PY"
else
    export -f install
    export WORK ROOT GPU
    step install 240 bash -c install
    PY=$WORK/venv/bin/python
    if ((FAILED)); then
        say "gpu_check: FAILED (the install did not finish, so nothing could run)"
        exit 1
    fi
fi

run() {  # run NAME CAP: one step of bench/gpu_check.py
    step "$1" "$2" "$PY" "$ROOT/bench/gpu_check.py" "$1" --out "$OUT" --models "$WORK/models" \
        --device "$DEVICE" --budget @LIMIT@ "${QUICK[@]}"
}
if [[ -x "$PY" ]] || command -v "$PY" >/dev/null; then
    run env 30
    run export 150
    if ((GPU)); then
        run providers 60
        run parity 90
    else
        say "steps providers, parity: not run (no GPU)"
    fi
    run throughput 200
    run scan 150
else
    say "steps: not run, no python at $PY (FAIL)"
    FAILED=1
fi

say ""
say "elapsed $((SECONDS - START)) s; table in $OUT"
if ((FAILED)); then
    say "gpu_check: FAILED"
    exit 1
elif ((GPU)); then
    say "gpu_check: PASSED"
    exit 0
fi
say "gpu_check: CPU part PASSED, no GPU (exit status $NO_GPU_EXIT)"
exit $NO_GPU_EXIT

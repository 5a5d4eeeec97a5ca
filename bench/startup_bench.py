"""Start-up of the command line: each row runs a new process RUNS times; median, min and max wall time, and the
median CPU time (user + system) of the process, which other load on the machine changes less than wall time.

The store holds 5 real voices (tests/real_speech.py) enrolled with the shipped model; `verify` checks one
3-second file. Target (issue 14): verify <= 1.0 s median on a 2-core CPU box without a GPU driver. Bytecode is
written and one untimed run goes first, as after `pip install` (which compiles it): PYTHONDONTWRITEBYTECODE
is dropped from the children's environment.

    .venv/bin/python bench/startup_bench.py            # about 30 s
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from real_speech import corpus  # noqa: E402

RUNS = 5
VOXFLOAT = [sys.executable, "-m", "voxfloat"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of RUNS runs of `cmd` (each must exit 0 or 1, verify's REJECT)."""
    walls, cpus = [], []
    subprocess.run(cmd, capture_output=True, env=ENV)  # untimed: writes the bytecode a pip install would have
    for _ in range(RUNS):
        c, t = cpu_seconds(), time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
        walls.append(time.perf_counter() - t)
        cpus.append(cpu_seconds() - c)
        if done.returncode not in (0, 1):
            sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return walls, cpus


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["speaker,path"]
        for speaker, waves in list(corpus(count=4).items())[:5]:
            for i, wave in enumerate(waves):
                sf.write(root / f"{speaker}-{i}.wav", wave, 16000)
                rows.append(f"{speaker},{speaker}-{i}.wav")
        probe = root / "probe.wav"
        (root / rows.pop().split(",")[1]).rename(probe)
        (root / "enroll.csv").write_text("\n".join(rows) + "\n")
        store = root / "s.vxf"
        subprocess.run([*VOXFLOAT, "enroll", str(root / "enroll.csv"), "--out", str(store), "--json"],
                       check=True, capture_output=True)
        speaker = rows[1].split(",")[0]
        verify = [*VOXFLOAT, "verify", str(probe), "--store", str(store), "--speaker", speaker]
        device = subprocess.run([*verify, "--json"], capture_output=True, text=True).stdout.strip()
        cases = {
            "python -c 'import voxfloat'": [sys.executable, "-c", "import voxfloat"],
            "voxfloat --help": [*VOXFLOAT, "--help"],
            "voxfloat verify (1 file, 3 s)": verify,
        }
        print(f"{RUNS} runs each, new process every run; verify --json: {device[:160]}\n")
        print("| command | wall median s | wall min s | wall max s | CPU median s |\n|---|---:|---:|---:|---:|")
        for name, cmd in cases.items():
            t, c = timed(cmd)
            print(f"| `{name}` | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | {statistics.median(c):.2f} |")


if __name__ == "__main__":
    main()

"""bench/gpu_check.sh without a GPU (quick mode, this environment): the one-line notice, the CPU part's
tables, its own exit status, a spent budget failing; and the CUDA-only steps' code run against the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.parity  # exports GE2E with torch and takes most of a minute: the slow tier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
NO_GPU_EXIT = 3


def run_check(work: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VOXFLOAT_GPU_CHECK_PYTHON": sys.executable, "VOXFLOAT_GPU_CHECK_WORK": str(work),
           "VOXFLOAT_GPU_CHECK_OUT": str(work / "table.md"),
           "VOXFLOAT_GPU_CHECK_NVIDIA_SMI": str(work / "no-nvidia-smi"), **env}
    return subprocess.run(["bash", str(SCRIPT), "--quick"], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("gpu_check")
    return run_check(work), work


def test_without_gpu_says_so_once_and_exits_with_its_own_status(cpu_run):
    result, _ = cpu_run
    assert result.returncode == NO_GPU_EXIT, result.stdout + result.stderr
    notices = [line for line in result.stdout.splitlines() if line.startswith("no NVIDIA GPU")]
    assert len(notices) == 1 and "CPU part only" in notices[0]
    assert result.stdout.rstrip().endswith(f"gpu_check: CPU part PASSED, no GPU (exit status {NO_GPU_EXIT})")


def test_the_cpu_part_writes_every_table_to_the_file(cpu_run):
    result, work = cpu_run
    table = (work / "table.md").read_text()
    assert "FAIL" not in table and "steps providers, parity: not run (no GPU)" in table
    assert "| ge2e | embedded | 256 |" in table
    for binding in ("off", "on"):
        for batch in (1, 4):
            assert f"| ge2e | cpu | {binding} | {batch} |" in table
    for combo in ("f16/vector | 1024", "e4m3/vector | 512", "e2m1/vector | 256", "e2m1/block32 | 272"):
        assert f"| {combo} |" in table
    assert table.count("| PASS |") == 1 + 4 + 4  # export, throughput cells, scan rows
    assert (work / "models" / "ge2e.onnx").is_file()


@pytest.mark.parametrize("step", ["providers", "parity"])
def test_cuda_steps_run_their_checks_on_cpu(cpu_run, step):
    """The GPU-only steps, pointed at the CPU: the profiler's node placement and the parity rows."""
    _, work = cpu_run
    out = work / f"{step}.md"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), step, "--out", str(out), "--models",
                        str(work / "models"), "--device", "cpu", "--quick"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    table = out.read_text()
    assert "FAIL" not in table
    if step == "providers":
        assert "| ge2e | cpu | CPUExecutionProvider | CPUExecutionProvider: " in table
    else:
        assert table.count("| PASS |") == 3  # whole inputs one by one; crops one by one and batched
        assert "| ge2e | 8 crops of 2.00 s | batch of 8 |" in table


def test_a_spent_budget_fails(tmp_path: Path):
    result = run_check(tmp_path, VOXFLOAT_GPU_CHECK_BUDGET="2")
    assert result.returncode == 1
    table = (tmp_path / "table.md").read_text()
    assert "step env: not run, the 2 s budget is spent (FAIL)" in table
    assert table.rstrip().endswith("gpu_check: FAILED")

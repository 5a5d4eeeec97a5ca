"""`--engine ray` on a real local Ray cluster: the local engine's result, sharding and merge, worker and driver kills."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voxfloat.store import VoiceprintStore

pytestmark = pytest.mark.parity  # the slow tier: each test starts a Ray cluster

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "clean"
VOXFLOAT = [sys.executable, "-m", "voxfloat"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def enroll_csv(tmp_path_factory) -> Path:
    """6 corpus speakers x 8 utterances, and one missing file that must be listed, not fatal."""
    speakers = sorted(p.name for p in CORPUS.iterdir())[:6]
    out = tmp_path_factory.mktemp("ray") / "enroll.csv"
    rows = [f"{s},{f}" for s in speakers for f in sorted((CORPUS / s).glob("*.flac"))]
    out.write_text("speaker,path\n" + "\n".join(rows + ["ghost,/nonexistent/ghost.wav"]) + "\n")
    return out


@pytest.fixture(scope="module")
def local_store(enroll_csv) -> Path:
    out = enroll_csv.parent / "local.vxf"
    run("enroll", enroll_csv, "--out", out, expect=3)
    return out


@pytest.fixture(autouse=True, scope="module")
def stop_ray():
    yield
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, timeout=120)


def run(*args, expect: int, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([*VOXFLOAT, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                       env={**os.environ, **(env or {})})
    assert p.returncode == expect, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    return p


def voiceprints(path: Path) -> dict[str, tuple[np.ndarray, int]]:
    st = VoiceprintStore.open(path)
    decoded = st.codec.decode(np.asarray(st.packed), st.dim)
    return {s: (decoded[i], int(st.n_utterances[i])) for i, s in enumerate(st.speakers)}


def assert_same_voiceprints(a: Path, b: Path) -> None:
    va, vb = voiceprints(a), voiceprints(b)
    assert sorted(va) == sorted(vb) and len(va) == 6
    for s, (v, n) in va.items():
        w, m = vb[s]
        assert n == m == 8, s
        assert float(v @ w / np.linalg.norm(v) / np.linalg.norm(w)) >= 0.9999, s


def test_ray_shards_merge_to_the_local_enrollment(enroll_csv, local_store, tmp_path):
    out = tmp_path / "ray.vxf"
    p = run("enroll", enroll_csv, "--out", out, "--engine", "ray", "--workers", "2",
            "--shards", "2", expect=3)
    assert p.stderr.count("ghost.wav: no such file") == 1  # the bad file is listed once, the rest complete
    shards = sorted(tmp_path.glob("ray.*-of-2.vxf"))
    assert [s.name for s in shards] == ["ray.0-of-2.vxf", "ray.1-of-2.vxf"]
    assert all(len(VoiceprintStore.open(s)) > 0 for s in shards)
    run("merge", *shards, "--out", out, expect=0)
    assert_same_voiceprints(out, local_store)
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_killed_worker_changes_nothing(enroll_csv, local_store, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    killed: list[int] = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not killed and time.monotonic() < deadline:
            for f in pids.iterdir():
                os.kill(int(f.name), signal.SIGKILL)  # a worker in the middle of embedding a batch
                killed.append(int(f.name))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    out = tmp_path / "ray.vxf"
    run("enroll", enroll_csv, "--out", out, "--engine", "ray", "--workers", "2",
        expect=3, env={"VOXFLOAT_RAY_PID_DIR": str(pids)})
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test did not test anything"
    assert len(list(pids.iterdir())) > 1  # a restarted actor took over the killed one's batches
    assert_same_voiceprints(out, local_store)


def test_a_killed_driver_leaves_the_store_untouched(enroll_csv, local_store, tmp_path):
    store = tmp_path / "kept.vxf"
    store.write_bytes(local_store.read_bytes())
    store.chmod(0o600)
    before = store.read_bytes()
    pids = tmp_path / "pids"
    pids.mkdir()
    driver = subprocess.Popen([*VOXFLOAT, "enroll", str(enroll_csv), "--out", str(store),
                               "--replace", "--engine", "ray"], env={**os.environ, "VOXFLOAT_RAY_PID_DIR": str(pids)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while not any(pids.iterdir()) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed"
    driver.kill()
    driver.wait(timeout=30)
    assert store.read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} <= {"kept.vxf", "kept.vxf.lock", "pids"}  # no temporary left


def test_engine_options_are_checked(enroll_csv, tmp_path):
    p = run("enroll", enroll_csv, "--out", tmp_path / "x.vxf", "--workers", "3", expect=2)
    assert "go with --engine ray" in p.stderr
    assert not (tmp_path / "x.vxf").exists()

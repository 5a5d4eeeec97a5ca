"""The shipped default model: equal to a fresh export, recorded, packaged, and usable without torch or onnx."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import soundfile as sf
from real_speech import corpus
from typer.testing import CliRunner

from voxfloat.cli import app
from voxfloat.runtime.default_model import DEFAULT_MODEL, EXPORT_ARGS, RECORD, default_model_path
from voxfloat.runtime.fingerprint import graph_fingerprint
from voxfloat.runtime.session import gpu_driver_present, read_card

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI with torch, onnx and numba made unimportable: what an edge install without them can do.
GUARDED_CLI = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "numba"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from voxfloat.cli import main
sys.argv = ["voxfloat", *sys.argv[1:]]
main()
"""


@pytest.mark.parity  # slow tier: torch
def test_shipped_model_equals_a_fresh_export(tmp_path: Path) -> None:
    out = tmp_path / "ge2e.onnx"
    result = CliRunner().invoke(app, [*EXPORT_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == DEFAULT_MODEL.read_bytes(), "runtime/models/ge2e.onnx is stale: run `make default-model`"


def test_record_matches_the_shipped_bytes_and_graph() -> None:
    data = DEFAULT_MODEL.read_bytes()
    record = json.loads(RECORD.read_text())
    assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "fingerprint": graph_fingerprint(onnx.load_model_from_string(data))}
    card = read_card(default_model_path())
    assert card.fingerprint == record["fingerprint"] and card.arch == "ge2e" and card.threshold is not None


@pytest.mark.parity  # slow tier: several seconds
def test_wheel_carries_the_model_its_record_and_the_notices(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so that setuptools' build/ folder never lands in the work tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "voxfloat", "runtime", "store", "export"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("voxfloat-*.whl"))).namelist()
    assert {"voxfloat/runtime/models/ge2e.onnx", "voxfloat/runtime/models/ge2e.json"} <= set(names)
    assert {n.rsplit("/", 1)[-1] for n in names if ".dist-info/licenses/" in n} >= {"LICENSE", "NOTICE"}


@pytest.mark.parity  # slow tier: several seconds
def test_enroll_and_verify_without_model_option_torch_or_onnx(tmp_path: Path) -> None:
    voices = dict(list(corpus(count=4).items())[:3])
    rows = ["speaker,path"]
    for speaker, waves in voices.items():
        for i, wave in enumerate(waves):
            sf.write(tmp_path / f"{speaker}-{i}.wav", wave, 16000)
            if i < 3:
                rows.append(f"{speaker},{speaker}-{i}.wav")
    (tmp_path / "enroll.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.vxf"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", GUARDED_CLI, *args], capture_output=True, text=True, cwd=tmp_path)

    enrolled = cli("enroll", "enroll.csv", "--out", str(store), "--format", "f16")  # f16: encoded without numba
    assert enrolled.returncode == 0, enrolled.stderr
    speaker = next(iter(voices))
    verified = cli("verify", f"{speaker}-3.wav", "--store", str(store), "--speaker", speaker, "--json")
    assert verified.returncode in (0, 1), verified.stderr
    decision = json.loads(verified.stdout)[0]
    assert decision["speaker"] == speaker and decision["score"] > 0.5
    if not gpu_driver_present():  # no driver: CPU without a word on stderr
        assert verified.stderr == "", verified.stderr

"""Shared pieces of the tests of issue 7 (trustworthy decisions): the CLI driven in-process or as a process,
the shipped model, and a small store enrolled once from the corpus and copied for each test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxfloat.cli import app

SPEAKERS = 3
runner = CliRunner()


def run(*args: object):
    """The `voxfloat` command in this process (stdout and stderr apart)."""
    return runner.invoke(app, [str(a) for a in args])


def run_process(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `voxfloat` command as its own process, killed after `timeout` s (for what might hang)."""
    return subprocess.run([sys.executable, "-m", "voxfloat", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "VOXFLOAT_DEVICE": "cpu"})


def one_line_error(result, code: int) -> str:
    """Assert exit `code`, exactly one stderr line and no traceback; return the line."""
    in_process = not isinstance(result, subprocess.CompletedProcess)
    exit_code = result.exit_code if in_process else result.returncode
    out = result.output if in_process else result.stdout + result.stderr
    assert exit_code == code, out
    assert "Traceback" not in out, out
    lines = [l for l in result.stderr.splitlines() if l.strip() and "CUDAExecutionProvider" not in l]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def voices(corpus_speakers: list[Path]) -> list[Path]:
    """The first SPEAKERS speaker folders of the clean corpus."""
    return corpus_speakers[:SPEAKERS]


def utterance(speaker: Path, i: int) -> Path:
    return sorted(speaker.glob("*.flac"))[i]


@pytest.fixture(scope="session")
def enrolled(tmp_path_factory, voices: list[Path], model: Path) -> Path:
    """A store of SPEAKERS speakers, two utterances each, in e2m1 block32 (so it has scale bytes)."""
    root = tmp_path_factory.mktemp("trust-enroll")
    src = root / "src"
    for d in voices:
        (src / d.name).mkdir(parents=True)
        for i in (0, 1):
            os.symlink(utterance(d, i), src / d.name / utterance(d, i).name)
    store = root / "s.vxf"
    result = run("enroll", src, "--model", model, "--out", store, "--format", "e2m1", "--scale", "block32")
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture()
def store(enrolled: Path, tmp_path: Path) -> Path:
    """A private copy of the enrolled store."""
    copy = tmp_path / "s.vxf"
    shutil.copyfile(enrolled, copy)
    os.chmod(copy, 0o600)
    return copy

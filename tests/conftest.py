"""Shared fixtures: the reference vectors and corpus in ../shared, and official-layout checkpoints."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
CORPUS = SHARED / "corpus"


def _need(path: Path) -> Path:
    if not path.exists():  # a missing data folder is an error, never a silent skip
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared beside the project root")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return _need(CORPUS)


@pytest.fixture(scope="session")
def reference_inputs(reference_dir: Path) -> dict[str, np.ndarray]:
    """The four 16 kHz reference waveforms, by name (utt_2p00s ... utt_10p00s)."""
    z = np.load(reference_dir / "inputs.npz")
    return {str(n): z[str(n)].astype(np.float32) for n in z["names"]}


@pytest.fixture(scope="session")
def weights_rule(reference_dir: Path):
    """The numpy-only rule that rebuilds the reference checkpoints (../shared/reference/weights_rule.py)."""
    spec = importlib.util.spec_from_file_location("weights_rule", reference_dir / "weights_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def official_checkpoint(reference_dir: Path, weights_rule, tmp_path_factory):
    """Factory: official-layout checkpoint file for a reference arch (e.g. "campplus_3dspeaker"), cached."""
    made: dict[tuple[str, str], Path] = {}

    def make(name: str, salt: str = "") -> Path:
        if (name, salt) not in made:
            spec = json.loads((reference_dir / f"{name}.json").read_text())
            out = tmp_path_factory.mktemp("ckpt") / f"{name}{'-' + salt if salt else ''}.pt"
            weights_rule.save_official_checkpoint(spec, str(out), npz=str(reference_dir / f"{name}.npz"), salt=salt)
            made[name, salt] = out
        return made[name, salt]

    return make

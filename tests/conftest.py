"""Shared fixtures: the reference vectors and corpus in ../shared, official-layout checkpoints, and the exports
and embeddings several test files need, each made once per run.

Tiers: tests marked `parity` (exports, PyTorch, the corpus EER) are the slow tier; `pytest -m "not parity"` runs
the fast one. Fixtures import torch in their bodies, and a module marked parity as a whole is not even imported
when the marker expression deselects parity, so the fast tier never loads torch or transformers.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _pytest.mark.expression import Expression

from parity import CAMPPLUS, Exported

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
CORPUS = SHARED / "corpus"
PARITY_MODULE = re.compile(r"^pytestmark = \[?\s*pytest\.mark\.parity\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip importing test modules marked `parity` as a whole when `-m` deselects parity: their imports (torch,
    transformers) would take most of the fast tier's time, and none of their tests would run."""
    expr = config.getoption("markexpr")
    if not expr or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if Expression.compile(expr).evaluate(lambda name, **kwargs: name == "parity"):
        return None
    return True if PARITY_MODULE.search(collection_path.read_text()) else None


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
def corpus_speakers(corpus_dir: Path) -> list[Path]:
    """The clean corpus's speaker folders, sorted."""
    return sorted(d for d in (corpus_dir / "clean").iterdir() if d.is_dir())


@pytest.fixture(scope="session")
def model() -> Path:
    """The shipped GE2E model (what `voxfloat export ge2e --format e4m3` writes): the edge verbs' tests need no torch."""
    from voxfloat.runtime.default_model import default_model_path

    return default_model_path()


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


@pytest.fixture(scope="session", params=sorted(CAMPPLUS))
def campplus(request, official_checkpoint, tmp_path_factory) -> tuple[str, Exported]:
    """(arch, export) of each CAM++ layout on the reference weights, built and exported once per run."""
    import torch

    torch.set_num_threads(1)
    arch = request.param
    out = tmp_path_factory.mktemp("onnx") / f"{arch}.onnx"
    return arch, Exported(arch, official_checkpoint(CAMPPLUS[arch]), out, threads=1)


@pytest.fixture(scope="session")
def ge2e():
    """The embedded default GE2E model, built once per run (voxfloat.export.core.Built)."""
    from voxfloat.export.core import build

    return build("ge2e", None)


@pytest.fixture(scope="session")
def ge2e_onnx(ge2e, tmp_path_factory) -> Path:
    """The default GE2E model exported once per run, without the scaling node."""
    from voxfloat.export.core import export_onnx

    path = tmp_path_factory.mktemp("ge2e") / "ge2e.onnx"
    export_onnx(ge2e.encoder, ge2e.card, path, None, dynamo=ge2e.dynamo)
    return path

"""EER parity on ../shared/corpus with the embedded GE2E model: PyTorch vs ONNX, and every storage format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxfloat.evaluate import evaluate, read_trials
from voxfloat.runtime import SpeakerEncoder, load_audio
from voxfloat.store import FORMATS

pytestmark = pytest.mark.parity
LISTS = ("clean", "hard", "mixed")
# Allowed rise of the EER (points) over float32, per format: (absolute floor, relative part of the f32 EER).
TOLERANCE = {"f32": (0.01, 0.0), "f16": (0.01, 0.005), "bf16": (0.01, 0.005),
             "e5m2": (0.05, 0.01), "e4m3": (0.05, 0.01), "e3m4": (0.05, 0.01),
             "e3m2": (0.1, 0.02), "e2m3": (0.1, 0.02), "e2m1": (0.25, 0.05)}


def resolution(n_target: int) -> float:
    """Three target trials, in EER points: differences below this are noise on a list this size."""
    return 150.0 / n_target


@pytest.fixture(scope="module")
def corpus_embeddings(corpus_dir: Path, ge2e, ge2e_onnx) -> dict[str, tuple[list[str], np.ndarray]]:
    """Every corpus file embedded once by PyTorch and once by the run's ONNX export (no scaling node)."""
    files = sorted(str(p.relative_to(corpus_dir)) for p in corpus_dir.glob("*/*/*.flac"))
    assert len(files) == 960, f"expected 60 x 8 clean + hard files in {corpus_dir}, found {len(files)}"
    encoder = SpeakerEncoder(ge2e_onnx, device="cpu", vad=False)  # the graph against PyTorch on the same audio
    result = encoder.embed_files([str(corpus_dir / f) for f in files])
    assert not result.errors, result.errors[:3]
    onnx = np.asarray(result.embeddings, dtype=np.float32)
    torch.set_num_threads(2)
    with torch.no_grad():
        pt = np.stack([ge2e.encoder(torch.from_numpy(load_audio(corpus_dir / f))[None])[0].numpy() for f in files])
    return {"torch": (files, pt.astype(np.float32)), "onnx": (files, onnx)}


def eer_table(embeddings, trials, formats, scale):
    paths, e = embeddings
    rows, _, _ = evaluate(e, paths, trials, formats, [scale], None)
    return {r.format: r for r in rows}


@pytest.mark.parametrize("name", LISTS)
def test_onnx_float32_eer_equals_pytorch(name: str, corpus_dir: Path, corpus_embeddings) -> None:
    trials = read_trials(corpus_dir / f"trials_{name}.txt")
    pt = eer_table(corpus_embeddings["torch"], trials, ["f32"], "none")["f32"]
    ox = eer_table(corpus_embeddings["onnx"], trials, ["f32"], "none")["f32"]
    assert pt.n_target == 1680 and pt.n_nontarget == 113280
    assert abs(ox.point.eer - pt.point.eer) <= max(0.01, resolution(pt.n_target)), (pt.point.eer, ox.point.eer)


def test_float32_eer_matches_the_published_resemblyzer_figures(corpus_dir: Path, corpus_embeddings) -> None:
    """The corpus README measured 0.70 / 24.9 / 25.8 % with resemblyzer's own pipeline (with VAD)."""
    published = {"clean": 0.70, "hard": 24.9, "mixed": 25.8}
    for name, eer in published.items():
        ox = eer_table(corpus_embeddings["onnx"], read_trials(corpus_dir / f"trials_{name}.txt"), ["f32"], "none")
        assert abs(ox["f32"].point.eer - eer) <= max(0.5, 0.1 * eer), (name, ox["f32"].point.eer)


@pytest.mark.parametrize("name", LISTS)
def test_vector_scaling_keeps_the_float32_eer_in_every_format(name: str, corpus_dir: Path, corpus_embeddings) -> None:
    trials = read_trials(corpus_dir / f"trials_{name}.txt")
    table = eer_table(corpus_embeddings["onnx"], trials, list(FORMATS), "vector")
    base = table["f32"].point.eer
    for fmt, (floor, rel) in TOLERANCE.items():
        allowed = max(floor, rel * base, resolution(table[fmt].n_target))
        assert table[fmt].point.eer - base <= allowed, (fmt, base, table[fmt].point.eer, allowed)


def test_block32_scaling_keeps_e2m1_within_its_tolerance(corpus_dir: Path, corpus_embeddings) -> None:
    trials = read_trials(corpus_dir / "trials_mixed.txt")
    base = eer_table(corpus_embeddings["onnx"], trials, ["f32"], "none")["f32"]
    blk = eer_table(corpus_embeddings["onnx"], trials, ["e2m1"], "block32")["e2m1"]
    assert blk.point.eer - base.point.eer <= max(0.25, 0.05 * base.point.eer, resolution(base.n_target))


def test_e2m1_without_scaling_collapses(corpus_dir: Path, corpus_embeddings) -> None:
    """GE2E's small non-negative values mostly round to 0 in e2m1: verification falls apart (the WavLM finding)."""
    trials = read_trials(corpus_dir / "trials_clean.txt")
    none = eer_table(corpus_embeddings["onnx"], trials, ["f32", "e2m1"], "none")
    vec = eer_table(corpus_embeddings["onnx"], trials, ["e2m1"], "vector")
    assert none["e2m1"].point.eer > 25.0 > 10 * vec["e2m1"].point.eer
    assert none["f32"].point.eer < 2.0

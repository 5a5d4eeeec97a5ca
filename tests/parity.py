"""What the parity tests share: cosine, and the issue's parity rule reported in scalars (never embeddings)."""
from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine along the last axis; a float for 1-D inputs."""
    c = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(c) if np.ndim(c) == 0 else c


def assert_parity(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """cosine >= 0.9999 and allclose(rtol 1e-3, atol 1e-3 * max|ref|), for every row."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    cos = float(np.min(cosine(got, ref)))
    atol = 1e-3 * float(np.abs(ref).max())
    worst = float(np.abs(got - ref).max())
    assert cos >= 0.9999, f"{what}: cosine {cos:.6f}"
    assert np.allclose(got, ref, rtol=1e-3, atol=atol), f"{what}: max |diff| {worst:.3g} (atol {atol:.3g})"

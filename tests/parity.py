"""What the parity tests share: cosine, the issue's parity rule reported in scalars (never embeddings), exported
reference models and the checks every architecture runs on them.

torch and onnxruntime are imported where they are used, so the fast tier (which only needs `cosine`) never
loads torch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import onnxruntime as ort

    from voxfloat.export.core import Built

# CAM++ arch -> its reference name in ../shared/reference
CAMPPLUS = {"campplus": "campplus_3dspeaker", "campplus-wespeaker": "campplus_wespeaker"}


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


def ort_session(path: str | Path, threads: int = 0) -> "ort.InferenceSession":
    """ONNX Runtime on the CPU (`threads` 0: its default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Exported:
    """A checkpoint built for `arch`, its unscaled ONNX export and an ORT session on it."""

    def __init__(self, arch: str, checkpoint: Path, out: Path, threads: int = 0):
        from voxfloat.export.core import build, export_onnx

        self.built: Built = build(arch, checkpoint)
        export_onnx(self.built.encoder, self.built.card, out, None, dynamo=self.built.dynamo)
        self.path = out
        self.session = ort_session(out, threads)

    def torch(self, waveforms: np.ndarray) -> np.ndarray:
        """PyTorch embeddings of a (B, T) batch."""
        import torch

        with torch.no_grad():
            return self.built.encoder(torch.from_numpy(np.ascontiguousarray(waveforms))).numpy()

    def onnx(self, waveforms: np.ndarray) -> np.ndarray:
        """ONNX Runtime embeddings of a (B, T) batch."""
        from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME

        return self.session.run([OUTPUT_NAME], {INPUT_NAME: waveforms})[0]


def check_reference_parity(model: Exported, name: str, reference_dir: Path, reference_inputs: Mapping[str, np.ndarray],
                           fbank_in: bool = True) -> None:
    """PyTorch (waveform in), ONNX and, for fbank models, the network on the official fbank match the official embeddings."""
    import torch

    ref = np.load(reference_dir / f"{name}.npz")
    for utt, wav in reference_inputs.items():
        expected = ref[f"{utt}/embedding"]
        assert_parity(model.torch(wav[None])[0], expected, f"{name} {utt} PyTorch")
        assert_parity(model.onnx(wav[None])[0], expected, f"{name} {utt} ONNX")
        if fbank_in:
            with torch.no_grad():
                from_features = model.built.sherpa(torch.from_numpy(ref[f"{utt}/features"])[None])[0].numpy()
            assert_parity(from_features, expected, f"{name} {utt} network on the official fbank")


def check_batched(model: Exported, inputs: Mapping[str, np.ndarray], length: int | None = None) -> None:
    """An equal-length batch (cut to `length`, default the shortest input) through ONNX gives each single-run embedding."""
    n = length or min(len(w) for w in inputs.values())
    batch = np.stack([w[:n] for w in inputs.values() if len(w) >= n])
    together = model.onnx(batch)
    for i, wav in enumerate(batch):
        cos = cosine(together[i], model.onnx(wav[None])[0])
        assert cos >= 0.99999, f"batch row {i}: cosine {cos:.7f}"


def check_salted(model: Exported, name: str, reference_dir: Path, reference_inputs: Mapping[str, np.ndarray]) -> None:
    """Another weight set: PyTorch and ONNX agree, and the embeddings really come from the new weights."""
    ref = np.load(reference_dir / f"{name}.npz")
    for utt, wav in reference_inputs.items():
        eager = model.torch(wav[None])[0]
        assert_parity(model.onnx(wav[None])[0], eager, f"{name} salted {utt} ONNX vs PyTorch")
        cos = cosine(eager, ref[f"{utt}/embedding"])
        assert cos < 0.999, f"{name} salted {utt}: cosine {cos:.4f} to the unsalted embedding, weights did not change"


def rewrite_checkpoint(src: Path, dst: Path, edit: Callable[[dict], object]) -> Path:
    """Save a copy of the official state dict after `edit(state)` (which may also wrap it)."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=True)
    torch.save(edit(state), dst)
    return dst


def one_line_error(arch: str, checkpoint: Path, *needles: str) -> str:
    """build() must fail with one line naming the file and every `needle`; returns the message."""
    from voxfloat.export.core import ExportError, build

    with pytest.raises(ExportError) as err:
        build(arch, checkpoint)
    msg = str(err.value)
    assert "\n" not in msg and str(checkpoint) in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg

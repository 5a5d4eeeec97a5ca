"""KaldiFbank against the upstream fbank features stored in the reference npz, in PyTorch and in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from voxfloat.export.frontends import KaldiFbank

pytestmark = pytest.mark.parity
FRONT_ENDS = {  # reference file -> (window, input scale) as the upstream calls torchaudio's fbank
    "campplus_3dspeaker": ("povey", 1.0),
    "campplus_wespeaker": ("hamming", 32768.0),
}
FEATURE_ATOL = 2e-3


@pytest.mark.parametrize("name", sorted(FRONT_ENDS))
def test_fbank_matches_reference(name, reference_dir, reference_inputs):
    z = np.load(reference_dir / f"{name}.npz")
    fbank = KaldiFbank(*FRONT_ENDS[name]).eval()
    for utt, wav in reference_inputs.items():
        with torch.no_grad():
            got = fbank(torch.from_numpy(wav)[None])[0].numpy()
        ref = z[f"{utt}/features"]
        assert got.shape == ref.shape, utt
        assert np.abs(got - ref).max() <= FEATURE_ATOL, utt


def test_fbank_onnx_dynamic_length(tmp_path, reference_dir, reference_inputs):
    z = np.load(reference_dir / "campplus_3dspeaker.npz")
    fbank = KaldiFbank("povey", 1.0).eval()
    path = tmp_path / "fbank.onnx"
    with torch.no_grad():
        torch.onnx.export(fbank, (torch.zeros(1, 16000),), str(path), dynamo=False, opset_version=17,
                          input_names=["waveform"], output_names=["fbank"],
                          dynamic_axes={"waveform": {0: "batch", 1: "samples"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for utt, wav in reference_inputs.items():
        got = sess.run(None, {"waveform": wav[None]})[0][0]
        assert np.abs(got - z[f"{utt}/features"]).max() <= FEATURE_ATOL, utt


def test_fbank_frame_count_and_errors():
    fbank = KaldiFbank("hamming", 32768.0)
    for n, frames in [(400, 1), (559, 1), (560, 2), (16000, 98)]:
        assert fbank(torch.zeros(2, n) + 0.01).shape == (2, frames, 80)
    with pytest.raises(ValueError, match="window"):
        KaldiFbank("hann", 1.0)

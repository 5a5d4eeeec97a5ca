"""`--sherpa` exports of CAM++: exact on upstream features, and usable by sherpa-onnx's own SpeakerEmbeddingExtractor.

sherpa-onnx computes its own fbank (snip_edges=false, mel 20-7600 Hz, povey window, no metadata changes that), so
its embeddings only approach the upstream ones. The bounds below are the documented ones (README, sherpa section),
set under the values measured with sherpa-onnx 2.0.1: 2 s 0.956/0.962, 3.37 s 0.977/0.977, 6 s 0.984/0.985,
10 s 0.990/0.990 (3D-Speaker/WeSpeaker weights).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import sherpa_onnx
import torch

from parity import CAMPPLUS, cosine, ort_session
from voxfloat.export.core import Built, ExportError
from voxfloat.export.sherpa import INPUT_NAME, OUTPUT_NAME, export_sherpa
from voxfloat.runtime.card import ModelCard

pytestmark = pytest.mark.parity
SHERPA_MIN_COSINE = {"utt_2p00s": 0.94, "utt_3p37s": 0.96, "utt_6p00s": 0.97, "utt_10p00s": 0.98}


@pytest.fixture(scope="module")
def sherpa_model(campplus, tmp_path_factory):
    """(arch, path, metadata) of the `--sherpa` export of each CAM++ layout's reference model."""
    arch, model = campplus
    out = tmp_path_factory.mktemp("sherpa") / f"{arch}.onnx"
    return arch, out, export_sherpa(model.built, out)


def test_sherpa_graph_is_exact_on_upstream_features(sherpa_model, reference_dir):
    arch, path, meta = sherpa_model
    z = np.load(reference_dir / f"{CAMPPLUS[arch]}.npz")
    sess = ort_session(path)
    for utt in ("utt_2p00s", "utt_3p37s", "utt_6p00s", "utt_10p00s"):
        ref = z[f"{utt}/embedding"]
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: z[f"{utt}/features"][None]})[0][0]
        assert cosine(got, ref) >= 0.9999, utt
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max(), err_msg=utt)


def test_sherpa_metadata(sherpa_model):
    arch, path, meta = sherpa_model
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props == meta
    # the segment pooling is built from MatMul, not AveragePool(ceil_mode), which sherpa-onnx's bundled ORT 1.28 gets wrong
    assert "AveragePool" not in {node.op_type for node in model.graph.node}
    assert props["framework"] == ("3d-speaker" if arch == "campplus" else "wespeaker")
    assert props["normalize_samples"] == ("1" if arch == "campplus" else "0")  # [-1, 1] vs int16-scale samples
    assert props["feature_normalize_type"] == "global-mean" and props["output_dim"] == "512"
    assert props["sample_rate"] == "16000"


def test_sherpa_onnx_extractor_close_to_upstream(sherpa_model, reference_dir, reference_inputs):
    arch, path, _ = sherpa_model
    z = np.load(reference_dir / f"{CAMPPLUS[arch]}.npz")
    extractor = sherpa_onnx.SpeakerEmbeddingExtractor(
        sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(path), num_threads=1))
    assert extractor.dim == 512
    for utt, wav in reference_inputs.items():
        stream = extractor.create_stream()
        stream.accept_waveform(16000, wav)
        stream.input_finished()
        assert extractor.is_ready(stream)
        got = np.array(extractor.compute(stream), dtype=np.float32)
        assert cosine(got, z[f"{utt}/embedding"]) >= SHERPA_MIN_COSINE[utt], utt


def test_export_sherpa_refuses_incomplete_builds(tmp_path):
    card = ModelCard(arch="x", source="x", embedding_dim=4, fingerprint="0")
    with pytest.raises(ExportError, match="no fbank-input encoder"):
        export_sherpa(Built(encoder=torch.nn.Identity(), card=card), tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="lacks .*feature_normalize_type"):
        export_sherpa(Built(encoder=torch.nn.Identity(), card=card, sherpa=torch.nn.Identity(),
                            sherpa_meta={"framework": "3d-speaker"}), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())

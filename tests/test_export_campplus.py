"""CAM++ (3D-Speaker and WeSpeaker layouts): parity with the upstream reference vectors in PyTorch and ONNX,
batch invariance, a held-out weight set, the exact segment pooling for any length, and layout errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from parity import (CAMPPLUS, Exported, assert_parity, check_batched, check_reference_parity, cosine, one_line_error,
                    ort_session)
from voxfloat.export.campplus import segment_means, segment_pooling
from voxfloat.export.core import ExportError, build
from voxfloat.export.layers import TSTP
from voxfloat.runtime.card import ModelCard

pytestmark = pytest.mark.parity
FEATURE_ATOL = 2e-3


def test_front_end_matches_upstream(campplus, reference_dir, reference_inputs):
    arch, model = campplus
    z = np.load(reference_dir / f"{CAMPPLUS[arch]}.npz")
    for utt, wav in reference_inputs.items():
        with torch.no_grad():
            feats = model.built.encoder[0](torch.from_numpy(wav)[None])[0].numpy()
        assert np.abs(feats - z[f"{utt}/features"]).max() <= FEATURE_ATOL, utt


def test_pytorch_and_onnx_match_upstream(campplus, reference_dir, reference_inputs):
    arch, model = campplus
    check_reference_parity(model, CAMPPLUS[arch], reference_dir, reference_inputs)


def test_onnx_batch_equals_single(campplus, reference_inputs):
    # 335 frames -> 168 after the stride-2 TDNN: a partial last segment
    check_batched(campplus[1], reference_inputs, length=len(reference_inputs["utt_3p37s"]))


def test_card_and_metadata(campplus):
    arch, model = campplus
    card = ModelCard.from_metadata({p.key: p.value for p in onnx.load(str(model.path)).metadata_props})
    assert card.arch == arch and card.embedding_dim == 512 and card.threshold == pytest.approx(0.381)
    assert card.threshold_source and card.fingerprint == model.built.card.fingerprint
    window = "povey" if arch == "campplus" else "hamming"
    assert window in card.frontend and ("x32768" in card.frontend) == (arch == "campplus-wespeaker")
    assert model.built.sherpa_meta["output_dim"] == "512"


def test_heldout_weights_pytorch_equals_onnx(campplus, official_checkpoint, reference_inputs, tmp_path):
    arch, reference = campplus
    salted = Exported(arch, official_checkpoint(CAMPPLUS[arch], salt="heldout"), tmp_path / "m.onnx", threads=1)
    assert salted.built.card.fingerprint != reference.built.card.fingerprint
    for utt, wav in reference_inputs.items():
        expected = salted.torch(wav[None])[0]
        assert cosine(expected, reference.torch(wav[None])[0]) < 0.9999, utt  # the salt really changed the network
        assert_parity(salted.onnx(wav[None])[0], expected, f"{arch} {utt} held-out")


def upstream_segment_means(x: torch.Tensor) -> torch.Tensor:
    """CAMLayer.seg_pooling as both upstreams write it."""
    seg = F.avg_pool1d(x, kernel_size=100, stride=100, ceil_mode=True)
    b, c, s = seg.shape
    return seg.unsqueeze(-1).expand(b, c, s, 100).reshape(b, c, -1)[..., : x.shape[-1]]


def test_segment_pooling_exact_for_any_length(tmp_path):
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return segment_means(x, segment_pooling(x.shape[-1], x))

    gen = torch.Generator().manual_seed(1)
    torch.onnx.export(Pool(), (torch.randn(1, 3, 250),), str(tmp_path / "pool.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 2: "t"}})
    sess = ort_session(tmp_path / "pool.onnx", threads=1)
    for frames in (1, 2, 99, 100, 101, 168, 250, 499):
        x = torch.randn(2, 3, frames, generator=gen)
        expected = upstream_segment_means(x).numpy()
        np.testing.assert_allclose(Pool()(x).numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=str(frames))
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=str(frames))


def test_stats_pooling_follows_each_upstream():
    x = torch.randn(2, 8, 37, generator=torch.Generator().manual_seed(2))
    threed = torch.cat([x.mean(-1), x.std(-1, unbiased=True)], -1)  # 3D-Speaker StatsPool
    torch.testing.assert_close(TSTP(None)(x), threed)
    constant = torch.ones(1, 2, 5)
    assert TSTP(None)(constant)[0, 2:].abs().max() == 0  # no eps: std of a constant is exactly 0
    # WeSpeaker TSTP (the default): sqrt(var + 1e-7), so a constant has std sqrt(1e-7)
    torch.testing.assert_close(TSTP()(constant)[0, 2:], torch.full((2,), 1e-7).sqrt())


@pytest.mark.parametrize("arch", sorted(CAMPPLUS))
def test_wrong_layout_errors(arch, official_checkpoint, tmp_path):
    layout = "3D-Speaker CAM++" if arch == "campplus" else "WeSpeaker CAM++"
    state = torch.load(official_checkpoint(CAMPPLUS[arch]), weights_only=True)

    missing = dict(state)
    del missing["xvector.block2.tdnnd7.cam_layer.linear1.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    message = one_line_error(arch, tmp_path / "missing.pt")
    assert layout in message and "missing xvector.block2.tdnnd7.cam_layer.linear1.bias" in message

    prefixed = {f"module.{k}": v for k, v in state.items()}
    torch.save(prefixed, tmp_path / "prefixed.pt")
    message = one_line_error(arch, tmp_path / "prefixed.pt")
    assert layout in message and "missing head.conv1.weight" in message and "unexpected module.head.conv1.weight" in message

    reshaped = dict(state)
    reshaped["xvector.dense.linear.weight"] = torch.zeros(192, 1024, 1)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    assert "xvector.dense.linear.weight (192, 1024, 1) != (512, 1024, 1)" in one_line_error(arch, tmp_path / "reshaped.pt")

    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "state_dict" in one_line_error(arch, tmp_path / "list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    one_line_error(arch, tmp_path / "garbage.pt")
    with pytest.raises(ExportError, match="--checkpoint"):
        build(arch, None)


def test_wespeaker_training_head_is_ignored(official_checkpoint, tmp_path):
    state = torch.load(official_checkpoint("campplus_wespeaker"), weights_only=True)
    state["projection.weight"] = torch.zeros(5994 * 3, 512)
    torch.save(state, tmp_path / "avg_model.pt")
    with_head = build("campplus-wespeaker", tmp_path / "avg_model.pt")
    plain = build("campplus-wespeaker", official_checkpoint("campplus_wespeaker"))
    assert with_head.card.fingerprint == plain.card.fingerprint
    # 3D-Speaker's strict loader has no training head to ignore.
    assert "unexpected projection.weight" in one_line_error("campplus", tmp_path / "avg_model.pt")

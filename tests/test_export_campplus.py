"""CAM++ (3D-Speaker and WeSpeaker layouts): parity with the upstream reference vectors in PyTorch and ONNX,
batch invariance, a held-out weight set, the exact segment pooling for any length, and layout errors."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from voxfloat.export.campplus import segment_means, segment_pooling
from voxfloat.export.core import ExportError, build, export_onnx
from voxfloat.export.layers import TSTP
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from parity import assert_parity, cosine

ARCHS = {"campplus": "campplus_3dspeaker", "campplus-wespeaker": "campplus_wespeaker"}  # arch -> reference name
FEATURE_ATOL = 2e-3


def session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def torch_embed(built, wav: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return built.encoder(torch.from_numpy(np.ascontiguousarray(wav))[None])[0].numpy()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, official_checkpoint, tmp_path_factory):
    """(arch, Built, ORT session of the unscaled waveform-in export) for the reference weights."""
    torch.set_num_threads(1)
    arch = request.param
    built = build(arch, official_checkpoint(ARCHS[arch]))
    out = tmp_path_factory.mktemp("onnx") / f"{arch}.onnx"
    export_onnx(built.encoder, built.card, out, None, dynamo=built.dynamo)
    return arch, built, session(out), out


def test_pytorch_matches_upstream(exported, reference_dir, reference_inputs):
    arch, built, _, _ = exported
    z = np.load(reference_dir / f"{ARCHS[arch]}.npz")
    frontend, net = built.encoder
    for utt, wav in reference_inputs.items():
        with torch.no_grad():
            feats = frontend(torch.from_numpy(wav)[None])
            emb = net(feats)[0].numpy()
        assert np.abs(feats[0].numpy() - z[f"{utt}/features"]).max() <= FEATURE_ATOL, utt
        assert_parity(emb, z[f"{utt}/embedding"], f"{arch} {utt} PyTorch")


def test_onnx_matches_upstream(exported, reference_dir, reference_inputs):
    arch, _, sess, _ = exported
    z = np.load(reference_dir / f"{ARCHS[arch]}.npz")
    for utt, wav in reference_inputs.items():
        emb = sess.run([OUTPUT_NAME], {INPUT_NAME: wav[None]})[0][0]
        assert_parity(emb, z[f"{utt}/embedding"], f"{arch} {utt} ONNX")


def test_onnx_batch_equals_single(exported, reference_inputs):
    _, _, sess, _ = exported
    n = len(reference_inputs["utt_3p37s"])  # 335 frames -> 168 after the stride-2 TDNN: a partial last segment
    batch = np.stack([w[:n] for w in reference_inputs.values() if len(w) >= n])
    together = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    for i, row in enumerate(batch):
        alone = sess.run([OUTPUT_NAME], {INPUT_NAME: row[None]})[0][0]
        assert cosine(together[i], alone) >= 0.99999, i


def test_card_and_metadata(exported):
    arch, built, _, path = exported
    card = ModelCard.from_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert card.arch == arch and card.embedding_dim == 512 and card.threshold == pytest.approx(0.381)
    assert card.threshold_source and card.fingerprint == built.card.fingerprint
    window = "povey" if arch == "campplus" else "hamming"
    assert window in card.frontend and ("x32768" in card.frontend) == (arch == "campplus-wespeaker")
    assert built.sherpa_meta["output_dim"] == "512"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_heldout_weights_pytorch_equals_onnx(arch, official_checkpoint, reference_inputs, tmp_path):
    torch.set_num_threads(1)
    built = build(arch, official_checkpoint(ARCHS[arch], salt="heldout"))
    reference = build(arch, official_checkpoint(ARCHS[arch]))
    assert built.card.fingerprint != reference.card.fingerprint
    export_onnx(built.encoder, built.card, tmp_path / "m.onnx", None, dynamo=built.dynamo)
    sess = session(tmp_path / "m.onnx")
    for utt, wav in reference_inputs.items():
        expected = torch_embed(built, wav)
        assert cosine(expected, torch_embed(reference, wav)) < 0.9999, utt  # the salt really changed the network
        assert_parity(sess.run([OUTPUT_NAME], {INPUT_NAME: wav[None]})[0][0], expected, f"{arch} {utt} held-out")


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
    sess = session(tmp_path / "pool.onnx")
    for frames in (1, 2, 99, 100, 101, 168, 250, 499):
        x = torch.randn(2, 3, frames, generator=gen)
        expected = upstream_segment_means(x).numpy()
        np.testing.assert_allclose(Pool()(x).numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=str(frames))
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=str(frames))


def test_stats_pooling_follows_each_upstream():
    x = torch.randn(2, 8, 37, generator=torch.Generator().manual_seed(2))
    threed = torch.cat([x.mean(-1), x.std(-1, unbiased=True)], -1)
    wespeaker = torch.cat([x.mean(-1), torch.sqrt(torch.var(x, dim=-1) + 1e-7)], -1)
    torch.testing.assert_close(TSTP(None)(x), threed)
    torch.testing.assert_close(TSTP(1e-7)(x), wespeaker)
    constant = torch.ones(1, 2, 5)
    assert TSTP(None)(constant)[0, 2:].abs().max() == 0  # no eps: std of a constant is exactly 0


def one_line_error(arch: str, path) -> str:
    with pytest.raises(ExportError) as err:
        build(arch, path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_wrong_layout_errors(arch, official_checkpoint, tmp_path):
    layout = "3D-Speaker CAM++" if arch == "campplus" else "WeSpeaker CAM++"
    state = torch.load(official_checkpoint(ARCHS[arch]), weights_only=True)

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

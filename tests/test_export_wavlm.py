"""WavLM-Base+ x-vector: upstream checkpoints load (both weight-norm namings), PyTorch and ONNX match upstream.

The model has 101M parameters, so each weight set is exported once per module and the 400 MB files
are deleted when the module ends.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from voxfloat.export.core import ExportError, build, export_onnx
from voxfloat.export.wavlm import LAYOUT
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from parity import assert_parity, cosine

REF = "wavlm_base_plus_sv"
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks traced as constants
LEGACY = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def embed(encoder: torch.nn.Module, wav: np.ndarray) -> np.ndarray:
    """PyTorch embedding of one waveform."""
    with torch.no_grad():
        return encoder(torch.from_numpy(wav)[None])[0].numpy()


def session(path: Path) -> ort.InferenceSession:
    """ONNX Runtime on the CPU."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    """ONNX embeddings of a (B, T) batch."""
    return sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


@pytest.fixture(scope="module")
def files():
    """Big files of this module (checkpoints, ONNX models), deleted at its end."""
    made: list[Path] = []
    yield made
    for path in made:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def legacy_ckpt(official_checkpoint, files) -> Path:
    """The official layout: pos-conv weight norm as weight_g / weight_v."""
    path = official_checkpoint(REF)
    files.append(path)
    return path


@pytest.fixture(scope="module")
def official(legacy_ckpt, files, tmp_path_factory):
    """(built, onnx path) for the official rule weights, exported once."""
    built = build("wavlm", legacy_ckpt)
    out = tmp_path_factory.mktemp("wavlm") / "wavlm.onnx"
    files.append(out)
    export_onnx(built.encoder, built.card, out, None, dynamo=built.dynamo)
    return built, out


def test_card_and_metadata(official):
    built, out = official
    card = ModelCard.from_metadata(session(out).get_modelmeta().custom_metadata_map)
    assert (card.arch, card.embedding_dim, card.sample_rate) == ("wavlm", 512, 16000)
    assert card.threshold == 0.86 and "model card" in card.threshold_source
    assert "wavlm-base-plus-sv" in card.source and "do_normalize=False" in card.frontend
    assert card.fingerprint == built.card.fingerprint and card.scale_target == 0.0


def test_pytorch_matches_reference(official, reference_dir, reference_inputs):
    z = np.load(reference_dir / f"{REF}.npz")
    for name, wav in reference_inputs.items():
        assert_parity(embed(official[0].encoder, wav), z[f"{name}/embedding"], name)


def test_onnx_matches_reference(official, reference_dir, reference_inputs):
    z = np.load(reference_dir / f"{REF}.npz")
    sess = session(official[1])
    for name, wav in reference_inputs.items():  # 2 s to 10 s through one dynamic-length graph
        assert_parity(run(sess, wav[None])[0], z[f"{name}/embedding"], name)


def test_onnx_batch_equals_single(official, reference_inputs):
    sess = session(official[1])
    wav = reference_inputs["utt_10p00s"]
    batch = np.stack([wav[:48000], wav[48000:96000], wav[-48000:] * 0.3])
    together = run(sess, batch)
    for i in range(len(batch)):
        assert cosine(run(sess, batch[i:i + 1])[0], together[i]) >= 0.99999, i


def test_new_parametrisation_names_load(official, legacy_ckpt, files, reference_dir, reference_inputs):
    state = torch.load(legacy_ckpt, weights_only=True, mmap=True)
    renamed = {}
    for key, value in state.items():
        for old, new in LEGACY.items():
            key = key[: -len(old)] + new if key.endswith(old) else key
        renamed[key] = value
    assert any(k.endswith(".parametrizations.weight.original1") for k in renamed)
    path = legacy_ckpt.with_name("wavlm-parametrizations.pt")
    files.append(path)
    torch.save(renamed, path)
    del state, renamed
    built = build("wavlm", path)
    assert built.card.fingerprint == official[0].card.fingerprint  # same weights whatever the naming
    wav = reference_inputs["utt_3p37s"]
    ref = np.load(reference_dir / f"{REF}.npz")["utt_3p37s/embedding"]
    assert_parity(embed(built.encoder, wav), ref, "parametrisation names")


def test_salted_weights_pytorch_and_onnx_agree(official, official_checkpoint, files, corpus_dir, tmp_path_factory,
                                               reference_inputs):
    path = official_checkpoint(REF, salt="heldout")
    files.append(path)
    built = build("wavlm", path)
    assert built.card.fingerprint != official[0].card.fingerprint
    out = tmp_path_factory.mktemp("wavlm-salted") / "wavlm.onnx"
    files.append(out)
    export_onnx(built.encoder, built.card, out, "e4m3", dynamo=built.dynamo)
    sess = session(out)
    speech, rate = sf.read(min((corpus_dir / "hard").glob("*/*.flac")), dtype="float32")
    assert rate == 16000
    for wav in (speech, reference_inputs["utt_2p00s"][::-1].copy()):  # other inputs too
        want = embed(built.encoder, wav)
        got = run(sess, wav[None])[0]
        assert np.abs(got).max() == pytest.approx(built.card.scale_target, rel=1e-5)
        assert_parity(got * (np.abs(want).max() / np.abs(got).max()), want, "salted")  # undo the scaling node


def test_wrong_checkpoints_fail_with_one_line(legacy_ckpt, files, tmp_path):
    state = torch.load(legacy_ckpt, weights_only=True, mmap=True)
    broken = {("tdnn.5.kernel.weight" if k == "tdnn.4.kernel.weight" else k): v for k, v in state.items()}
    broken["projector.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pt"
    files.append(path)
    torch.save(broken, path)
    del state, broken
    with pytest.raises(ExportError) as err:
        build("wavlm", path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and LAYOUT in msg
    assert "missing tdnn.4.kernel.weight" in msg and "unexpected tdnn.5.kernel.weight" in msg
    assert "shape projector.bias (7,) != (512,)" in msg

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model_config": {"C": 16}, "state_dict": {"w": torch.zeros(1)}}, wrapped)
    with pytest.raises(ExportError, match=r"flat dict of tensors, entry 'model_config' is a dict"):
        build("wavlm", wrapped)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ExportError, match=r"wavlm-base-plus-sv .* got Tensor"):
        build("wavlm", tensor)
    with pytest.raises(ExportError, match="needs --checkpoint"):
        build("wavlm", None)

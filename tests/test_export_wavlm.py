"""WavLM-Base+ x-vector: upstream checkpoints load (both weight-norm namings), PyTorch and ONNX match upstream.

The model has 101M parameters, so it is exported once per run (the reference weights; the held-out weights are
checked in PyTorch) and the 400 MB files are deleted when the module ends.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from parity import Exported, check_batched, check_reference_parity, cosine
from voxfloat.export.core import ExportError, build
from voxfloat.export.wavlm import LAYOUT
from voxfloat.runtime.card import ModelCard

REF = "wavlm_base_plus_sv"
pytestmark = [pytest.mark.parity,
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]  # shape checks traced as constants
LEGACY = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def embed(encoder: torch.nn.Module, wav: np.ndarray) -> np.ndarray:
    """PyTorch embedding of one waveform."""
    with torch.no_grad():
        return encoder(torch.from_numpy(wav)[None])[0].numpy()


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
def official(legacy_ckpt, files, tmp_path_factory) -> Exported:
    """The official rule weights built and exported (unscaled) once."""
    out = tmp_path_factory.mktemp("wavlm") / "wavlm.onnx"
    files.append(out)
    return Exported("wavlm", legacy_ckpt, out)


def test_card_and_metadata(official):
    card = ModelCard.from_metadata(official.session.get_modelmeta().custom_metadata_map)
    assert (card.arch, card.embedding_dim, card.sample_rate) == ("wavlm", 512, 16000)
    assert card.threshold == 0.86 and "model card" in card.threshold_source
    assert "wavlm-base-plus-sv" in card.source and "do_normalize=False" in card.frontend
    assert card.fingerprint == official.built.card.fingerprint and card.scale_target == 0.0


def test_pytorch_and_onnx_match_reference(official, reference_dir, reference_inputs):
    # 2 s to 10 s through one dynamic-length graph
    check_reference_parity(official, REF, reference_dir, reference_inputs, fbank_in=False)


def test_onnx_batch_equals_single(official, reference_inputs):
    wav = reference_inputs["utt_10p00s"]
    check_batched(official, {"a": wav[:48000], "b": wav[48000:96000], "c": wav[-48000:] * 0.3})


def test_new_parametrisation_names_load(official, legacy_ckpt, files, reference_dir, reference_inputs):
    state = torch.load(legacy_ckpt, weights_only=True, mmap=True)
    renamed = {}
    for key, value in state.items():
        for old, new in LEGACY.items():
            key = key[: -len(old)] + new if key.endswith(old) else key
        renamed[key] = value
    path = legacy_ckpt.with_name("wavlm-parametrizations.pt")
    files.append(path)
    torch.save(renamed, path)
    del state, renamed
    built = build("wavlm", path)
    assert built.card.fingerprint == official.built.card.fingerprint  # same weights whatever the naming
    wav = reference_inputs["utt_3p37s"]
    np.testing.assert_array_equal(embed(built.encoder, wav), official.torch(wav[None])[0])


def test_heldout_weights_give_another_model(official, official_checkpoint, files, corpus_dir, reference_inputs):
    """A second weight set loads into the same graph and really changes it (its ONNX export is left out: one 101M
    model export per run; the graph is weight-independent and the reference weights' export is checked above)."""
    path = official_checkpoint(REF, salt="heldout")
    files.append(path)
    built = build("wavlm", path)
    assert built.card.fingerprint != official.built.card.fingerprint
    speech, rate = sf.read(min((corpus_dir / "hard").glob("*/*.flac")), dtype="float32")
    assert rate == 16000
    for wav in (speech, reference_inputs["utt_2p00s"][::-1].copy()):
        salted = embed(built.encoder, wav)
        assert np.all(np.isfinite(salted))
        assert cosine(salted, official.torch(wav[None])[0]) < 0.999


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

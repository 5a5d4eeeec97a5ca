"""WeSpeaker ECAPA-TDNN export: the four upstream variants match the official embeddings in PyTorch and ONNX."""
from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import sherpa_onnx
import torch

from parity import (Exported, assert_parity, check_batched, check_reference_parity, check_salted, cosine,
                    one_line_error, ort_session, rewrite_checkpoint)
from voxfloat.export.core import build
from voxfloat.export.sherpa import export_sherpa
from voxfloat.runtime.card import ModelCard

pytestmark = pytest.mark.parity
ECAPA = ["ecapa_tdnn_glob_c512", "ecapa_tdnn_c512", "ecapa_tdnn_glob_c1024", "ecapa_tdnn_c1024"]


@pytest.fixture(scope="module")
def ecapa(official_checkpoint, tmp_path_factory) -> Callable[[str], Exported]:
    """Factory: variant `name`'s official-layout checkpoint (rule weights) built and exported once per run."""
    made: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in made:
            made[name] = Exported("ecapa", official_checkpoint(name), tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
        return made[name]

    return get


@pytest.mark.parametrize("name", ECAPA)
def test_variant_detected_and_carded(name, ecapa, reference_dir):
    model = ecapa(name)
    spec = json.loads((reference_dir / f"{name}.json").read_text())
    up = spec["upstream"]
    card = ModelCard.from_metadata(model.session.get_modelmeta().custom_metadata_map)
    assert card.arch == "ecapa" and card.embedding_dim == spec["embedding"]["dim"] == 192
    assert card.extra["class"] == up["class_name"] and up["class_name"] in card.source and up["commit"] in card.source
    assert card.extra["params"] == spec["parameter_count"]
    assert card.fingerprint == model.built.card.fingerprint and len(card.fingerprint) == 64
    assert "hamming" in card.frontend and "x32768" in card.frontend
    assert card.threshold is None and card.threshold_source
    assert model.built.sherpa_meta["output_dim"] == "192" and model.built.sherpa_meta["framework"] == "wespeaker"


@pytest.mark.parametrize("name", ECAPA)
def test_front_end_matches_official_fbank(name, ecapa, reference_dir, reference_inputs):
    model = ecapa(name)
    ref = np.load(reference_dir / f"{name}.npz")
    for utt, wav in reference_inputs.items():
        with torch.no_grad():
            feats = model.built.encoder[0](torch.from_numpy(wav[None]))[0].numpy()
        assert feats.shape == ref[f"{utt}/features"].shape
        worst = float(np.abs(feats - ref[f"{utt}/features"]).max())
        assert worst <= 2e-3, f"{name} {utt}: fbank max |diff| {worst:.3g}"


@pytest.mark.parametrize("name", ECAPA)
def test_matches_official_embeddings(name, ecapa, reference_dir, reference_inputs):
    check_reference_parity(ecapa(name), name, reference_dir, reference_inputs)


@pytest.mark.parametrize("name", ECAPA)
def test_batched_equals_single(name, ecapa, reference_inputs):
    check_batched(ecapa(name), reference_inputs)


@pytest.mark.parametrize("name", ECAPA)
def test_heldout_weights_torch_and_onnx_agree(name, official_checkpoint, reference_dir, reference_inputs, tmp_path):
    salted = Exported("ecapa", official_checkpoint(name, salt="heldout"), tmp_path / "salted.onnx")
    check_salted(salted, name, reference_dir, reference_inputs)


def test_sherpa_export(ecapa, reference_dir, reference_inputs, tmp_path):
    """The fbank-in encoder with sherpa-onnx metadata: exact on the official fbank; sherpa-onnx's own fbank
    (povey window, snip_edges=false, 20-7600 Hz) only comes near (measured cosine 0.94-0.98 here)."""
    name, out = "ecapa_tdnn_glob_c512", tmp_path / "sherpa.onnx"
    ref = np.load(reference_dir / f"{name}.npz")
    export_sherpa(ecapa(name).built, out)
    session = ort_session(out)
    extractor = sherpa_onnx.SpeakerEmbeddingExtractor(sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(out)))
    assert extractor.dim == 192
    for utt, wav in reference_inputs.items():
        feats = ref[f"{utt}/features"][None]
        assert_parity(session.run(None, {session.get_inputs()[0].name: feats})[0][0], ref[f"{utt}/embedding"],
                       f"sherpa export {utt} on the official fbank")
        stream = extractor.create_stream()
        stream.accept_waveform(16000, wav)
        stream.input_finished()
        cos = cosine(np.array(extractor.compute(stream)), ref[f"{utt}/embedding"])
        assert cos > 0.9, f"sherpa-onnx {utt}: cosine {cos:.4f}"


def test_wrong_arch_checkpoint(official_checkpoint):
    one_line_error("ecapa", official_checkpoint("resnet34_wespeaker"), "WeSpeaker ECAPA",
                   "missing layer1.conv.weight", "unexpected conv1.weight")


def test_missing_key(official_checkpoint, tmp_path):
    key = "layer3.se_res2block.1.convs.2.bias"
    bad = rewrite_checkpoint(official_checkpoint("ecapa_tdnn_glob_c512"), tmp_path / "missing.pt",
                             lambda s: {k: v for k, v in s.items() if k != key})
    one_line_error("ecapa", bad, "WeSpeaker ECAPA", f"missing {key}")


def test_wrong_width_is_a_shape_error(official_checkpoint, tmp_path):
    bad = rewrite_checkpoint(official_checkpoint("ecapa_tdnn_c512"), tmp_path / "width.pt",
                             lambda s: {**s, "layer1.conv.weight": torch.zeros(768, 80, 5)})
    one_line_error("ecapa", bad, "shape layer1.conv.weight (768, 80, 5) != (512, 80, 5)")


def test_not_a_state_dict(tmp_path):
    bad = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], bad)
    one_line_error("ecapa", bad, "raw state_dict")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    one_line_error("ecapa", text, "not a loadable PyTorch checkpoint")


def test_training_head_and_wrapper_are_accepted(ecapa, official_checkpoint, tmp_path):
    """Published avg_model.pt files carry `projection.*`; upstream's loader also unwraps {'state_dict': ...}."""
    src = official_checkpoint("ecapa_tdnn_glob_c512")
    plain = ecapa("ecapa_tdnn_glob_c512").built.card.fingerprint
    head = rewrite_checkpoint(src, tmp_path / "head.pt", lambda s: {**s, "projection.weight": torch.ones(5994, 192)})
    wrapped = rewrite_checkpoint(src, tmp_path / "wrapped.pt", lambda s: {"state_dict": s})
    assert build("ecapa", head).card.fingerprint == plain
    assert build("ecapa", wrapped).card.fingerprint == plain

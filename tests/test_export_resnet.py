"""WeSpeaker ResNet34 export: matches the official embeddings in PyTorch and ONNX."""
from __future__ import annotations

import json

import pytest
import torch

from parity import (Exported, check_batched, check_reference_parity, check_salted, one_line_error,
                    rewrite_checkpoint)
from voxfloat.runtime.card import ModelCard

pytestmark = pytest.mark.parity
NAME = "resnet34_wespeaker"


@pytest.fixture(scope="module")
def resnet(official_checkpoint, tmp_path_factory) -> Exported:
    return Exported("resnet34", official_checkpoint(NAME), tmp_path_factory.mktemp("onnx") / f"{NAME}.onnx")


def test_card(resnet, reference_dir):
    spec = json.loads((reference_dir / f"{NAME}.json").read_text())
    card = ModelCard.from_metadata(resnet.session.get_modelmeta().custom_metadata_map)
    assert card.arch == "resnet34" and card.embedding_dim == spec["embedding"]["dim"] == 256
    assert spec["upstream"]["class_name"] in card.source and spec["upstream"]["commit"] in card.source
    assert card.extra["params"] == spec["parameter_count"]
    assert "hamming" in card.frontend and card.threshold is None


def test_matches_official_embeddings(resnet, reference_dir, reference_inputs):
    check_reference_parity(resnet, NAME, reference_dir, reference_inputs)


def test_batched_equals_single(resnet, reference_inputs):
    check_batched(resnet, reference_inputs)


def test_heldout_weights_torch_and_onnx_agree(official_checkpoint, reference_dir, reference_inputs, tmp_path):
    salted = Exported("resnet34", official_checkpoint(NAME, salt="heldout"), tmp_path / "salted.onnx")
    check_salted(salted, NAME, reference_dir, reference_inputs)


def test_wrong_arch_checkpoint(official_checkpoint):
    one_line_error("resnet34", official_checkpoint("ecapa_tdnn_glob_c512"), "WeSpeaker ResNet34",
                   "missing conv1.weight", "unexpected layer1.conv.weight")


def test_missing_and_extra_keys(official_checkpoint, tmp_path):
    src = official_checkpoint(NAME)
    key = "layer3.4.bn2.running_var"
    missing = rewrite_checkpoint(src, tmp_path / "missing.pt", lambda s: {k: v for k, v in s.items() if k != key})
    one_line_error("resnet34", missing, "WeSpeaker ResNet34", f"missing {key}")
    two_emb = rewrite_checkpoint(src, tmp_path / "two_emb.pt", lambda s: {**s, "seg_2.weight": torch.zeros(256, 256)})
    one_line_error("resnet34", two_emb, "unexpected seg_2.weight")

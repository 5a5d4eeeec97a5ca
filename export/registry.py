"""Architectures `voxfloat export` knows: name -> module with `build(checkpoint, **options) -> Built`."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from voxfloat.runtime.card import ModelCard


@dataclass
class Built:
    """A loaded encoder ready for export_onnx: waveform (B, T) in, unscaled embedding (B, D) out."""

    encoder: nn.Module
    card: ModelCard
    dynamo: bool = False              # which torch.onnx exporter handles this architecture
    sherpa: nn.Module | None = None   # encoder alone, fbank (B, T, 80) in, for `--sherpa`
    sherpa_meta: dict[str, str] = field(default_factory=dict)


ARCHS: dict[str, str] = {
    "ge2e": "voxfloat.export.ge2e",
    "campplus": "voxfloat.export.campplus",
    "campplus-wespeaker": "voxfloat.export.campplus",
    "ecapa": "voxfloat.export.ecapa",
    "resnet34": "voxfloat.export.resnet",
    "redimnet": "voxfloat.export.redimnet",
    "wavlm": "voxfloat.export.wavlm",
}


def build(arch: str, checkpoint: Path | None) -> Built:
    """Load `checkpoint` for `arch` (None: the embedded default, GE2E only)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return importlib.import_module(ARCHS[arch]).build(arch, checkpoint)

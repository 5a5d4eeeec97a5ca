"""What every WeSpeaker fbank model (ECAPA-TDNN, ResNet34, CAM++) shares at export: checkpoint, front end, card."""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from voxfloat.export.core import Built, ExportError, check_state_dict, fingerprint, load_checkpoint
from voxfloat.export.frontends import KaldiFbank
from voxfloat.runtime.card import ModelCard

WESPEAKER = "wenet-e2e/wespeaker@dfa741957e5c11f477623b6e583d67d0af25ee88"
NO_THRESHOLD = "none published: WeSpeaker reports EER/minDCF only; run `voxfloat calibrate`"


def wespeaker_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a WeSpeaker checkpoint: a raw state_dict, or a dict with 'state_dict' as upstream's loader accepts."""
    obj = load_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{path}: not a WeSpeaker checkpoint: expected a raw state_dict of tensors (avg_model.pt)")
    return dict(obj)


def shape_dim(state: Mapping[str, torch.Tensor], key: str, axis: int, default: int) -> int:
    """Size of `state[key]` along `axis`, or `default` where the key is absent (check_state_dict names it later)."""
    t = state.get(key)
    return int(t.shape[axis]) if isinstance(t, torch.Tensor) and t.dim() > axis else default


def wespeaker_built(arch: str, path: str | os.PathLike, net: nn.Module, state: Mapping[str, torch.Tensor],
                    layout: str, source: str, dim: int, extra: dict, threshold: float | None = None,
                    threshold_source: str = NO_THRESHOLD) -> Built:
    """Strict-load `state` into `net` (ignoring the training head `projection.*`) and add WeSpeaker's front end.

    The card's extra gets the network's parameter count besides `extra`.
    """
    state = check_state_dict(path, state, net, layout, ignore_prefixes=("projection.",))
    net.load_state_dict(state, strict=True)
    net.eval()
    frontend = KaldiFbank(window="hamming", input_scale=32768.0, cmn=True)
    card = ModelCard(arch=arch, source=source, embedding_dim=dim, fingerprint=fingerprint(arch, state),
                     frontend=frontend.describe(), threshold=threshold, threshold_source=threshold_source,
                     extra={**extra, "params": sum(p.numel() for p in net.parameters())})
    # what sherpa-onnx reads: int16-scale samples (normalize_samples 0) and CMN done by sherpa (global-mean)
    sherpa_meta = {"framework": "wespeaker", "language": "English", "comment": source,
                   "url": "https://github.com/" + WESPEAKER.split("@")[0], "sample_rate": "16000",
                   "output_dim": str(dim), "normalize_samples": "0", "feature_normalize_type": "global-mean"}
    return Built(encoder=nn.Sequential(frontend, net).eval(), card=card, sherpa=net, sherpa_meta=sherpa_meta)

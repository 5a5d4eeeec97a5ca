"""`voxfloat export --sherpa`: the encoder alone (fbank in) with the metadata sherpa-onnx's speaker-embedding extractor reads.

sherpa-onnx computes the fbank itself (kaldi-native-fbank, snip_edges=false, mel 20-7600 Hz, povey window) and
subtracts the global mean when `feature_normalize_type` is "global-mean", so its embeddings are close to but
not equal to the upstream ones; voxfloat's own waveform-in models carry the exact front end instead.
"""
from __future__ import annotations

import os

import torch

from voxfloat.export.core import Built, ExportError, write_onnx

INPUT_NAME = "x"            # (B, T, 80) fbank, as sherpa-onnx's export scripts name it
OUTPUT_NAME = "embedding"   # (B, D), unnormalised
EXAMPLE_FRAMES = 300
SHERPA_KEYS = ("framework", "language", "url", "comment", "sample_rate", "output_dim", "normalize_samples",
               "feature_normalize_type")


def export_sherpa(built: Built, out: str | os.PathLike, *, opset: int = 17) -> dict[str, str]:
    """Write `built.sherpa` as ONNX with `built.sherpa_meta`; checked against PyTorch, renamed atomically.

    Returns the metadata written. No scaling node: sherpa-onnx compares embeddings by cosine.
    """
    arch = built.card.arch
    if built.sherpa is None:
        raise ExportError(f"{arch}: has no fbank-input encoder, so it cannot be exported for sherpa-onnx")
    missing = [k for k in SHERPA_KEYS if k not in built.sherpa_meta]
    if missing:
        raise ExportError(f"{arch}: sherpa-onnx metadata lacks {', '.join(missing)}")
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, EXAMPLE_FRAMES, 80, generator=gen)
    example = example - example.mean(dim=1, keepdim=True)  # what sherpa-onnx's global-mean step feeds
    write_onnx(built.sherpa, example, out, built.sherpa_meta, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
               dynamic=("B", "T"), opset=opset, dynamo=built.dynamo)
    return dict(built.sherpa_meta)

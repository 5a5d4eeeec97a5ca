"""The GE2E model shipped inside the package, used when no --model is given.

The file is `voxfloat export ge2e` with the options in EXPORT_ARGS: resemblyzer 0.1.4's weights
(Apache-2.0, see NOTICE), the e4m3 scaling node (cosines, hence every store format, are unaffected),
opset 17, the legacy exporter. The export is byte-deterministic; tests/test_default_model.py
re-exports and compares bytes, and `make default-model` regenerates the file.
"""
from __future__ import annotations

from pathlib import Path

from voxfloat.runtime.card import ModelError

DEFAULT_MODEL = Path(__file__).with_name("models") / "ge2e.onnx"
EXPORT_ARGS = ("export", "ge2e", "--format", "e4m3")  # `voxfloat` arguments that make DEFAULT_MODEL (plus --out)


def default_model_path() -> Path:
    """Path of the shipped default model; ModelError with a hint when this install lacks it."""
    if not DEFAULT_MODEL.is_file():
        raise ModelError(f"{DEFAULT_MODEL}: the default model is missing from this install; "
                         "pass --model M.onnx (make one with `voxfloat export ge2e --out M.onnx`)")
    return DEFAULT_MODEL

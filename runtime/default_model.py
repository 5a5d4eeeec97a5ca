"""The GE2E model shipped inside the package, used when no --model is given.

The file is `voxfloat export ge2e` with the options in EXPORT_ARGS: resemblyzer 0.1.4's weights
(Apache-2.0, see NOTICE), the e4m3 scaling node (cosines, hence every store format, are unaffected),
opset 17, the legacy exporter. The export is byte-deterministic; tests/test_default_model.py
re-exports and compares bytes, and `make default-model` regenerates the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from voxfloat.runtime.card import ModelError

DEFAULT_MODEL = Path(__file__).with_name("models") / "ge2e.onnx"
# sha256 of DEFAULT_MODEL's bytes and the graph fingerprint they give: a model file equal to it byte for byte
# has that fingerprint, so loading it needs neither the onnx package nor a parse of the graph.
RECORD = DEFAULT_MODEL.with_suffix(".json")
EXPORT_ARGS = ("export", "ge2e", "--format", "e4m3")  # `voxfloat` arguments that make DEFAULT_MODEL (plus --out)


def default_model_path() -> Path:
    """Path of the shipped default model; ModelError with a hint when this install lacks it."""
    if not DEFAULT_MODEL.is_file():
        raise ModelError(f"{DEFAULT_MODEL}: the default model is missing from this install; "
                         "pass --model M.onnx (make one with `voxfloat export ge2e --out M.onnx`)")
    return DEFAULT_MODEL


def shipped_fingerprint(data: bytes) -> str | None:
    """The recorded graph fingerprint if `data` is the shipped model byte for byte, else None."""
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None
    if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        return None
    return record.get("fingerprint")


def record_default_model() -> dict:
    """Write RECORD for the current DEFAULT_MODEL (after `make default-model` re-exports it); needs onnx."""
    import onnx

    from voxfloat.runtime.fingerprint import graph_fingerprint

    data = DEFAULT_MODEL.read_bytes()
    record = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "fingerprint": graph_fingerprint(onnx.load_model_from_string(data))}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return record

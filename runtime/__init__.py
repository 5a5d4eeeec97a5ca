"""voxfloat.runtime: exported speaker encoders on ONNX Runtime (never torch), and audio loading.

Names load on first use, so `voxfloat.runtime.card` (which export and store read) pulls in
neither onnxruntime nor the audio decoders.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ModelCard": "card", "INPUT_NAME": "card", "OUTPUT_NAME": "card",
    "AudioError": "audio", "load_audio": "audio",
    "ModelError": "card", "read_card": "session", "make_session": "session",
    "SpeakerEncoder": "encoder", "EmbedResult": "encoder",
}
__all__ = ["AudioError", "EmbedResult", "INPUT_NAME", "ModelCard", "ModelError", "OUTPUT_NAME",
           "SpeakerEncoder", "load_audio", "make_session", "read_card"]

if TYPE_CHECKING:
    from voxfloat.runtime.audio import AudioError, load_audio
    from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelError
    from voxfloat.runtime.encoder import EmbedResult, SpeakerEncoder
    from voxfloat.runtime.session import make_session, read_card


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value

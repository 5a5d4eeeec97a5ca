"""The facts about an exported model, kept in its ONNX metadata: written by export, read by runtime."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from voxfloat.errors import VoxfloatError
from voxfloat.runtime.limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

PREFIX = "voxfloat."
INPUT_NAME = "waveform"    # (batch, samples) float32 at `sample_rate`, values in [-1, 1]
OUTPUT_NAME = "embedding"  # (batch, embedding_dim) float32


class ModelError(VoxfloatError):
    """A model file or device that cannot be used; the message is "<path>: <problem>" on one line."""


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ModelCard:
    """What runtime, store and `voxfloat info` need to know about a model file."""

    arch: str                 # registry name, e.g. "ge2e", "campplus"
    source: str               # upstream project, commit and class the weights belong to
    embedding_dim: int
    fingerprint: str          # sha256 of the graph (runtime.fingerprint), computed on load: stores refuse others
    sample_rate: int = 16000
    frontend: str = ""        # one-line description of the in-graph front end
    scale_format: str = ""    # storage format the appended scaling node targets ("" = none)
    scale_target: float = 0.0  # max|E| after the scaling node (0 = no node)
    threshold: float | None = None  # default cosine threshold until `calibrate` has run
    threshold_source: str = ""
    min_seconds: float = 0.5  # shortest audio the runtime accepts for this model
    quantization: dict = field(default_factory=dict)  # `voxfloat quantize`: how, parent fingerprint, parity
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """Flatten to ONNX metadata_props (string to string)."""
        return {PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ModelCard":
        """Rebuild from ONNX metadata; KeyError names the first missing field, ModelError the first bad value."""
        names = {f.name for f in fields(cls)}
        values = {}
        for key, text in props.items():
            if key.startswith(PREFIX):
                try:
                    values[key[len(PREFIX):]] = json.loads(text, parse_constant=_no_constant)
                except ValueError:
                    raise ModelError(f"{key} is not JSON: {text[:40]!r}") from None
        required = [n for n in ("arch", "source", "embedding_dim", "fingerprint") if n not in values]
        if required:
            raise KeyError(required[0])
        card = cls(**{k: v for k, v in values.items() if k in names})
        card.check()
        return card

    def check(self) -> None:
        """ModelError naming the first field whose type or value no usable model can have."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ModelError(f"{PREFIX}{name} must be {what}, got {getattr(self, name)!r}")

        need(isinstance(self.arch, str) and bool(self.arch.strip()), "arch", "a non-empty string")
        need(_whole(self.embedding_dim) and 1 <= self.embedding_dim <= 65536, "embedding_dim",
             "a whole number from 1 to 65536")
        need(_whole(self.sample_rate) and MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE, "sample_rate",
             f"a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}")
        need(_number(self.min_seconds) and 0 < self.min_seconds <= 60, "min_seconds", "a number of seconds in (0, 60]")
        need(self.threshold is None or (_number(self.threshold) and -1 <= self.threshold <= 1), "threshold",
             "null or a cosine in [-1, 1]")
        need(_number(self.scale_target) and self.scale_target >= 0, "scale_target", "a finite number >= 0")
        for name in ("source", "fingerprint", "frontend", "scale_format", "threshold_source"):
            need(isinstance(getattr(self, name), str), name, "a string")
        for name in ("quantization", "extra"):
            need(isinstance(getattr(self, name), dict), name, "an object")

"""The facts about an exported model, kept in its ONNX metadata: written by export, read by runtime."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

PREFIX = "voxfloat."
INPUT_NAME = "waveform"    # (batch, samples) float32 at `sample_rate`, values in [-1, 1]
OUTPUT_NAME = "embedding"  # (batch, embedding_dim) float32


@dataclass
class ModelCard:
    """What runtime, store and `voxfloat info` need to know about a model file."""

    arch: str                 # registry name, e.g. "ge2e", "campplus"
    source: str               # upstream project, commit and class the weights belong to
    embedding_dim: int
    fingerprint: str          # sha256 of arch and weights: stores refuse other models
    sample_rate: int = 16000
    frontend: str = ""        # one-line description of the in-graph front end
    scale_format: str = ""    # storage format the appended scaling node targets ("" = none)
    scale_target: float = 0.0  # max|E| after the scaling node (0 = no node)
    threshold: float | None = None  # default cosine threshold until `calibrate` has run
    threshold_source: str = ""
    min_seconds: float = 0.5  # shortest audio the runtime accepts for this model
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """Flatten to ONNX metadata_props (string to string)."""
        return {PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> "ModelCard":
        """Rebuild from ONNX metadata; raises KeyError naming the first missing field."""
        names = {f.name for f in fields(cls)}
        values = {k[len(PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(PREFIX)}
        required = [n for n in ("arch", "source", "embedding_dim", "fingerprint") if n not in values]
        if required:
            raise KeyError(required[0])
        return cls(**{k: v for k, v in values.items() if k in names})

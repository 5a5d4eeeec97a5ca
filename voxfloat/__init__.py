"""voxfloat: speaker verification at the edge with ONNX encoders and packed minifloat voiceprint stores.

    import voxfloat
    v = voxfloat.Verifier("team.vxf")
    v.enroll("alice", ["alice1.wav", "alice2.wav"])
    print(v.verify("probe.wav", "alice"))            # Decision(score, threshold, threshold_source, format, accepted)
    print(v.identify("probe.wav", top=3).decision)   # best speaker, or None (UNKNOWN)

Names load on first use: importing voxfloat loads neither onnxruntime nor numba.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Verifier": "voxfloat.api", "Decision": "voxfloat.api", "Identification": "voxfloat.api",
    "EnrollReport": "voxfloat.api", "Calibration": "voxfloat.api", "DEFAULT_MAX_SECONDS": "voxfloat.api",
    "VoxfloatError": "voxfloat.errors", "UsageError": "voxfloat.errors",
}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from voxfloat.api import DEFAULT_MAX_SECONDS, Calibration, Decision, EnrollReport, Identification, Verifier
    from voxfloat.errors import UsageError, VoxfloatError


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value

"""The storage formats: numpy/ml_dtypes type, bit width and largest finite value of each."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from voxfloat.store.errors import StoreError

# Scaling an embedding to a wide format's F_max (bf16: 3.4e38) would overflow float32 dot
# products, so the scale target is capped at float16's F_max: 512 * 65504**2 is still finite.
SCALE_CAP = 65504.0


@dataclass(frozen=True)
class Format:
    """One storage format: name, dtype doing the rounding, bits a value, largest finite value."""

    name: str
    dtype: np.dtype
    bits: int
    fmax: float

    @property
    def scale_target(self) -> float:
        """What `vector` scaling maps max|E| to: F_max, capped so float32 scoring cannot overflow."""
        return min(self.fmax, SCALE_CAP)

    @property
    def mbits(self) -> int:
        """Explicit mantissa bits."""
        return int(ml_dtypes.finfo(self.dtype).nmant)

    @property
    def bias(self) -> int:
        """Exponent bias (1 - the smallest normal exponent), used by the arithmetic decoder."""
        return 1 - int(ml_dtypes.finfo(self.dtype).minexp)

    def row_bytes(self, dim: int) -> int:
        """Bytes of one packed vector of `dim` values (no scale bytes)."""
        return (dim * self.bits + 7) // 8


def _fmt(name: str, dtype: type, bits: int) -> Format:
    dt = np.dtype(dtype)
    return Format(name, dt, bits, float(ml_dtypes.finfo(dt).max))


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        _fmt("f32", np.float32, 32),
        _fmt("f16", np.float16, 16),
        _fmt("bf16", ml_dtypes.bfloat16, 16),
        _fmt("e5m2", ml_dtypes.float8_e5m2, 8),
        _fmt("e4m3", ml_dtypes.float8_e4m3fn, 8),
        _fmt("e3m4", ml_dtypes.float8_e3m4, 8),
        _fmt("e3m2", ml_dtypes.float6_e3m2fn, 6),
        _fmt("e2m3", ml_dtypes.float6_e2m3fn, 6),
        _fmt("e2m1", ml_dtypes.float4_e2m1fn, 4),
    )
}


def get_format(name: str) -> Format:
    """Look a format up by name, with an error that lists the valid names."""
    if not isinstance(name, str) or name not in FORMATS:
        raise StoreError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]

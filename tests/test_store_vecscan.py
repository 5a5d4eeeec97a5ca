"""The explicit-vector 1:N scan (voxfloat.store.vecscan) against numpy: every code of every format decodes to
exactly ml_dtypes' value through both decoders (arithmetic and register table), with and without e8m0 block
scales, and cosines on random rows equal float64 numpy on the decoded rows."""
from __future__ import annotations

import numpy as np
import pytest

from voxfloat.store import FORMATS, SCALE_MODES, Codec
from voxfloat.store import vecscan
from voxfloat.store.codec import _SCALES32, code_values

SCANNED = [name for name, f in FORMATS.items() if f.bits in vecscan.LAYOUTS]
# (format, table decoder): 4- and 6-bit formats have both decoders, the others only the arithmetic one
DECODERS = [(name, lut) for name in SCANNED for lut in ([False, True] if FORMATS[name].bits in (4, 6) else [False])]


def finite_codes(name: str) -> np.ndarray:
    """Every code of the format whose value is finite (stores never hold NaN or inf)."""
    fmt = FORMATS[name]
    if fmt.bits == 16:
        values = np.arange(1 << 16, dtype=np.uint16).view(fmt.dtype).astype(np.float32)
    else:
        values = code_values(name)
    return np.flatnonzero(np.isfinite(values))


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, d) codes -> (n, d * bits / 8) bytes in the .vxf bitstream layout, written independently of the codec."""
    n, d = codes.shape
    if bits == 16:
        return codes.astype("<u2").view(np.uint8).reshape(n, 2 * d)
    if bits == 8:
        return codes.astype(np.uint8)
    if bits == 4:
        return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    w = codes.reshape(n, d // 4, 4).astype(np.uint32) << np.array([0, 6, 12, 18], np.uint32)
    w = w.sum(axis=2, dtype=np.uint32)
    return np.stack([w & 255, (w >> 8) & 255, w >> 16], axis=2).reshape(n, 3 * d // 4).astype(np.uint8)


def run(codec: Codec, packed: np.ndarray, dim: int, Q: np.ndarray, lut: bool) -> np.ndarray:
    inv = np.ones(len(packed), np.float32)
    return vecscan.dots(codec.format, codec.scale == "block32", packed, dim, codec.value_bytes(dim), Q, inv,
                        _SCALES32, lut=lut)


def check_decoder(lut: bool, bits: int) -> None:
    if lut and not vecscan.lut_decoder(bits):
        pytest.skip("the register-table decoder needs an AVX-512 CPU")


@pytest.mark.parametrize("scale", ["vector", "block32"])
@pytest.mark.parametrize("name, lut", DECODERS)
def test_every_code_decodes_exactly(name: str, scale: str, lut: bool):
    """One-hot queries read single values: each must equal ml_dtypes' value (times its block scale) bit for bit."""
    codec = Codec(name, scale)
    bits = codec.format.bits
    check_decoder(lut, bits)
    dim = 128  # 4 chunks per group, then the rest: both loops, and 6-bit's wide and narrow reads
    codes = finite_codes(name)
    codes = np.resize(codes, -(-len(codes) // dim) * dim).reshape(-1, dim)
    packed = pack(codes, bits)
    if scale == "block32":
        scales = np.random.default_rng(1).integers(100, 128, (len(packed), dim // 32), dtype=np.uint8)
        packed = np.concatenate([packed, scales], axis=1)
    packed = np.ascontiguousarray(packed)
    want = codec.decode(packed, dim)  # (n, dim): ml_dtypes' values times the block scales
    got = run(codec, packed, dim, np.eye(dim, dtype=np.float32), lut)  # (dim, n)
    np.testing.assert_array_equal(got.T, want)


@pytest.mark.parametrize("scale", SCALE_MODES)
@pytest.mark.parametrize("name, lut", DECODERS)
@pytest.mark.parametrize("dim", [96, 192, 512])
def test_cosines_match_numpy(name: str, scale: str, lut: bool, dim: int):
    """Random rows and 3 queries: Codec.cosine equals float64 numpy on the decoded rows (96 and 192 leave
    chunks over after the unrolled groups; 4-bit at 96 takes the scalar scan, which must agree as well)."""
    codec = Codec(name, scale)
    check_decoder(lut, codec.format.bits)
    rng = np.random.default_rng(dim)
    E = rng.standard_normal((300, dim)).astype(np.float32) * rng.lognormal(0, 1, (300, 1)).astype(np.float32)
    E[7] = 0  # a zero row scores 0
    Q = rng.standard_normal((3, dim)).astype(np.float32)
    packed = codec.encode(E)
    D = codec.decode(packed, dim).astype(np.float64)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    norms = np.linalg.norm(D, axis=1)
    want = (Qn @ D.T) / np.where(norms > 0, norms, 1)
    got = codec.cosine(packed, dim, Q)
    np.testing.assert_allclose(got, want, atol=2e-6)
    if dim % vecscan.LAYOUTS[codec.format.bits] == 0:  # the same through the decoder not chosen by default
        inv = codec.inverse_norms(packed, dim)
        direct = vecscan.dots(codec.format, scale == "block32", packed, dim, codec.value_bytes(dim),
                              Qn.astype(np.float32), inv, _SCALES32, lut=lut)
        np.testing.assert_allclose(direct, want, atol=2e-6)


def test_tiny_query_values_count_as_zero():
    """Query values under 2^-100 are dropped (no subnormal operands); the rest of the dot product stays exact."""
    codec = Codec("e4m3", "vector")
    packed = codec.encode(np.ones((2, 32), np.float32))
    q = np.zeros((1, 32), np.float32)
    q[0, 0], q[0, 1] = 1.0, 1e-35
    got = run(codec, packed, 32, q, False)
    np.testing.assert_array_equal(got, [[448.0, 448.0]])

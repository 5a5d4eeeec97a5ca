"""Codec: ml_dtypes-exact rounding, bit packing, scale modes, NaN/inf guards and cosine scoring."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from voxfloat.store import FORMATS, SCALE_MODES, Codec, StoreError, get_format

MINI = [n for n, f in FORMATS.items() if f.bits <= 8]


def unpack(packed: np.ndarray, dim: int, bits: int) -> np.ndarray:
    """Independent reader of the documented bit order: value j at bits [bits*j, bits*j+bits), LSB first."""
    nvb = (dim * bits + 7) // 8
    b = np.unpackbits(packed[:, :nvb], axis=1, bitorder="little")[:, :dim * bits].reshape(len(packed), dim, bits)
    return (b.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(axis=2).astype(np.uint32)


def codes_of(packed: np.ndarray, dim: int, name: str) -> np.ndarray:
    fmt = get_format(name)
    if fmt.bits <= 8:
        return unpack(packed, dim, fmt.bits)
    nvb = dim * fmt.bits // 8
    return np.ascontiguousarray(packed[:, :nvb]).view(f"<u{fmt.bits // 8}").astype(np.uint32)


def reference_codes(X: np.ndarray, name: str) -> np.ndarray:
    """ml_dtypes' own cast of the values saturated to ±F_max."""
    fmt = get_format(name)
    cast = np.clip(X, -fmt.fmax, fmt.fmax).astype(fmt.dtype)
    return cast.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[fmt.dtype.itemsize]).astype(np.uint32)


def adversarial(name: str) -> np.ndarray:
    """Every representable value, every midpoint (ties) and its float32 neighbours, subnormals, ±F_max and beyond."""
    fmt = get_format(name)
    if fmt.bits <= 16:
        vals = np.arange(1 << fmt.bits, dtype=np.uint32).astype({8: np.uint8, 6: np.uint8, 4: np.uint8,
                                                                 16: np.uint16}[fmt.bits])
        vals = vals.view(fmt.dtype).astype(np.float32)
        vals = np.unique(vals[np.isfinite(vals)])
        mids = ((vals[:-1].astype(np.float64) + vals[1:]) / 2).astype(np.float32)
    else:
        vals = np.array([0.0, 1.0, np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal], np.float32)
        mids = vals
    fmax = np.float32(min(fmt.fmax, np.finfo(np.float32).max))
    with np.errstate(over="ignore"):  # just over F_max overflows float32 for f32 and bf16: dropped below
        extra = np.array([fmax, np.nextafter(fmax, np.float32(np.inf)), fmax * np.float32(1.0625),
                          fmax * np.float32(1.5), np.finfo(np.float32).max, 1e30, 1e-30,
                          np.finfo(np.float32).smallest_subnormal, 1e-40, 0.0], np.float32)
    up, down = np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))
    x = np.concatenate([vals, mids, up, down, extra]).astype(np.float32)
    x = x[np.isfinite(x)]
    return np.concatenate([x, -x])


def random_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random float32 bit patterns (every exponent) plus normal values, NaN/inf removed."""
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([bits[np.isfinite(bits)], rng.standard_normal(n).astype(np.float32) * 3])


@pytest.mark.parametrize("name", list(FORMATS))
def test_none_mode_is_ml_dtypes_bit_for_bit(name: str) -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([adversarial(name), random_values(rng, 200_000)])
    dim = 7  # odd: also exercises the packing of partial bytes and groups
    x = np.concatenate([x, np.zeros(-len(x) % dim, np.float32)]).reshape(-1, dim)
    codec = Codec(name, "none")
    packed = codec.encode(x)
    assert packed.shape == (len(x), codec.row_bytes(dim))
    np.testing.assert_array_equal(codes_of(packed, dim, name), reference_codes(x, name))
    expect = np.clip(x, -get_format(name).fmax, get_format(name).fmax).astype(get_format(name).dtype)
    np.testing.assert_array_equal(codec.decode(packed, dim).view(np.uint32), expect.astype(np.float32).view(np.uint32))


def test_e4m3_overflow_saturates_instead_of_nan() -> None:
    x = np.array([[449.0, 464.0, 1e6, -480.0, -1e9, 448.0, 0.001, -0.0]], np.float32)
    assert np.isnan(x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)).any()  # the trap being guarded
    out = Codec("e4m3", "none").decode(Codec("e4m3", "none").encode(x), 8)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, :6], [448, 448, 448, -448, -448, 448])


@pytest.mark.parametrize("name", MINI)
@pytest.mark.parametrize("scale", ["vector", "block32"])
def test_scaled_modes_are_ml_dtypes_of_the_scaled_values(name: str, scale: str) -> None:
    rng = np.random.default_rng(2)
    dim = 45  # one full and one partial block
    E = (rng.standard_normal((300, dim)) * rng.choice([1e-6, 0.05, 1.0, 300.0], (300, 1))).astype(np.float32)
    E[0, :] = 0.0
    E[1, 40:] = 0.0  # an all-zero partial block
    fmt, codec = get_format(name), Codec(name, scale)
    packed = codec.encode(E)
    target = np.float32(fmt.scale_target)
    if scale == "vector":
        amax = np.abs(E).max(axis=1)
        mult = np.where(amax > 0, target / np.where(amax > 0, amax, 1), 1).astype(np.float32)
        X = E * mult[:, None]
        assert packed.shape[1] == fmt.row_bytes(dim)
    else:
        nblk = -(-dim // 32)
        assert packed.shape[1] == fmt.row_bytes(dim) + nblk
        X = np.empty_like(E)
        scale_bytes = np.empty((len(E), nblk), np.uint8)
        for b in range(nblk):
            blk = E[:, 32 * b:32 * b + 32]
            amax = np.abs(blk).max(axis=1).astype(np.float64)
            # smallest integer e with amax * 2**-e <= target, found by search, not by the codec's frexp
            e = np.ceil(np.log2(np.where(amax > 0, amax, 1) / target)).astype(int)
            e = np.where(amax * 2.0 ** -(e - 1) <= target, e - 1, e)
            e = np.where(amax * 2.0 ** -e <= target, e, e + 1)
            e = np.where(amax > 0, e, 0)
            X[:, 32 * b:32 * b + 32] = blk * np.float32(2.0) ** (-e[:, None]).astype(np.float32)
            scale_bytes[:, b] = (2.0 ** e).astype(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
        np.testing.assert_array_equal(packed[:, fmt.row_bytes(dim):], scale_bytes)
    np.testing.assert_array_equal(codes_of(packed, dim, name), reference_codes(X, name))


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("scale", SCALE_MODES)
def test_packing_round_trips_for_every_dimension(name: str, scale: str) -> None:
    rng = np.random.default_rng(3)
    codec, fmt = Codec(name, scale), get_format(name)
    for dim in [*range(1, 70), 127, 191, 192, 255, 256, 510, 511, 512]:
        E = rng.standard_normal((5, dim)).astype(np.float32)
        packed = codec.encode(E)
        assert packed.shape == (5, fmt.row_bytes(dim) + (-(-dim // 32) if scale == "block32" else 0))
        dec = codec.decode(packed, dim)
        # an independent reader of the documented layout gives the same values
        codes = codes_of(packed, dim, name)
        vals = codes.astype({1: np.uint8, 2: np.uint16, 4: np.uint32}[fmt.dtype.itemsize]).view(fmt.dtype)
        vals = vals.astype(np.float32)
        if scale == "block32":
            sb = packed[:, fmt.row_bytes(dim):].view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
            vals = vals * np.repeat(sb, 32, axis=1)[:, :dim]
        np.testing.assert_array_equal(dec, vals)
        if scale == "none":
            np.testing.assert_array_equal(dec, np.clip(E, -fmt.fmax, fmt.fmax).astype(fmt.dtype).astype(np.float32))
        if fmt.bits <= 8:
            nvb = fmt.row_bytes(dim)
            spare = nvb * 8 - dim * fmt.bits
            if spare:  # padding bits at the end of the values are zero
                assert (packed[:, nvb - 1] >> (8 - spare) == 0).all()


def test_exact_bytes_per_512_dim_voiceprint() -> None:
    sizes = {n: Codec(n, "none").row_bytes(512) for n in FORMATS}
    assert list(sizes.values()) == [2048, 1024, 1024, 512, 512, 512, 384, 384, 256]
    assert [Codec(n, "vector").row_bytes(512) for n in FORMATS] == list(sizes.values())
    assert [Codec(n, "block32").row_bytes(512) - s for n, s in sizes.items()] == [16] * 9
    assert Codec("e2m1", "block32").row_bytes(512) * 8 / 512 == 4.25
    E = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    assert [Codec(n, "none").encode(E).nbytes for n in FORMATS] == [3 * s for s in sizes.values()]


def wavlm_like(rng: np.random.Generator, n: int = 200, dim: int = 512) -> np.ndarray:
    """Embeddings whose values sit in about [-0.4, 0.25], like WavLM-based speaker encoders."""
    return np.clip(rng.normal(-0.06, 0.1, (n, dim)), -0.4, 0.25).astype(np.float32)


def test_wavlm_like_range_collapses_in_e2m1_without_scaling() -> None:
    E = wavlm_like(np.random.default_rng(5))
    mean_cos = {}
    for scale in SCALE_MODES:
        codec = Codec("e2m1", scale)
        D = codec.decode(codec.encode(E), E.shape[1]).astype(np.float64)
        if scale == "none":
            assert set(np.unique(D)) <= {-0.5, 0.0, 0.5}
        den = np.linalg.norm(D, axis=1) * np.linalg.norm(E, axis=1)
        mean_cos[scale] = float(np.mean(np.where(den > 0, (D * E).sum(axis=1) / np.where(den > 0, den, 1), 0)))
    assert mean_cos["none"] < 0.5, mean_cos
    assert mean_cos["vector"] > 0.95 and mean_cos["block32"] > 0.95, mean_cos


@pytest.mark.parametrize("name", ["e2m1", "e3m2", "e4m3", "f16", "f32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_rejected(name: str, bad: float) -> None:
    E = np.ones((4, 33), np.float32)
    E[2, 17] = bad
    for scale in SCALE_MODES:
        with pytest.raises(StoreError, match="row 2 contains NaN or inf"):
            Codec(name, scale).encode(E)


def test_bad_arguments() -> None:
    with pytest.raises(StoreError, match="unknown scale mode"):
        Codec("e2m1", "block16")
    with pytest.raises(StoreError, match="unknown format"):
        Codec("e1m2", "none")
    with pytest.raises(StoreError, match="2-D"):
        Codec("e2m1", "none").encode(np.ones(5, np.float32))
    with pytest.raises(StoreError, match=r"packed rows must be \(n, 3\) uint8"):
        Codec("e2m1", "none").decode(np.zeros((2, 4), np.uint8), 5)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("scale", SCALE_MODES)
def test_cosine_matches_float64_on_decoded_rows(name: str, scale: str) -> None:
    rng = np.random.default_rng(6)
    for dim in (6, 7, 45, 192):
        E = rng.standard_normal((300, dim)).astype(np.float32)
        E[7] = 0.0  # a zero row scores 0
        codec = Codec(name, scale)
        packed = codec.encode(E)
        D = codec.decode(packed, dim).astype(np.float64)
        for nq in (1, 3, 40):  # compiled scan for few queries, decode + BLAS for many
            Q = rng.standard_normal((nq, dim)).astype(np.float32)
            nd = np.linalg.norm(D, axis=1)
            ref = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (D / np.where(nd > 0, nd, 1)[:, None]).T
            got = codec.cosine(packed, dim, Q)
            assert got.shape == (nq, 300) and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, atol=2e-5)
            assert (got[:, 7] == 0).all()

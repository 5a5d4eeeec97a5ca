"""Encode float32 embeddings into packed minifloat rows (none/vector/block32 scaling) and score against them.

Rounding is ml_dtypes' (round to nearest even) bit for bit: for formats of at most 8 bits a float32's code
depends only on its sign, exponent, top 7 mantissa bits and whether any lower bit is set, so a 2**17-entry
table built by casting one representative of each key with ml_dtypes gives the same codes far faster.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from voxfloat.store import kernels, vecscan
from voxfloat.store.errors import StoreError
from voxfloat.store.formats import Format, get_format

SCALE_MODES = ("none", "vector", "block32")
BLOCK = 32        # values sharing one e8m0 scale in block32 mode
E8M0_BIAS = 127   # float8_e8m0fnu: byte b means 2**(b - 127); 255 is NaN
CHUNK = 8192      # rows decoded at a time on the batch (BLAS) path
SCAN_MAX_QUERIES = 4  # up to this many queries the compiled scan beats decode + BLAS
NUMPY_DECODE_ROWS = 4  # up to this many rows decode in numpy: 1:1 verification never waits for numba


@lru_cache(maxsize=None)
def rounding_lut(name: str) -> np.ndarray:
    """uint8 code of every 17-bit key (float32 bits >> 16, then a sticky bit), saturating to ±F_max."""
    fmt = get_format(name)
    key = np.arange(1 << 17, dtype=np.uint32)
    rep = (((key >> 1) << 16) | (key & 1)).view(np.float32)
    with np.errstate(invalid="ignore"):
        return np.clip(rep, -fmt.fmax, fmt.fmax).astype(fmt.dtype).view(np.uint8)


@lru_cache(maxsize=None)
def code_values(name: str) -> np.ndarray:
    """float32 value of every code of a format of at most 8 bits (ml_dtypes' decoding)."""
    fmt = get_format(name)
    return np.arange(1 << fmt.bits, dtype=np.uint8).view(fmt.dtype).astype(np.float32)


def unpack_codes(values: np.ndarray, dim: int, bits: int) -> np.ndarray:
    """(n, value bytes) uint8 little-endian bitstreams -> (n, dim) codes of `bits` bits each (numpy only)."""
    if bits == 8:
        return values[:, :dim]
    stream = np.unpackbits(values, axis=1, bitorder="little")[:, :dim * bits].reshape(len(values), dim, bits)
    return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


# e8m0 byte -> 2**(byte - 127); byte 255 is e8m0's NaN and never written
_SCALES32 = np.append(np.ldexp(1.0, np.arange(255) - E8M0_BIAS), np.nan).astype(np.float32)


def block_exponents(E: np.ndarray, target: float) -> np.ndarray:
    """Smallest e per 32-value block with max|block| * 2**-e <= target (no clipping), clipped to e8m0's range."""
    n, d = E.shape
    nblk = -(-d // BLOCK)
    pad = np.zeros((n, nblk * BLOCK), np.float32)
    pad[:, :d] = np.abs(E)
    amax = pad.reshape(n, nblk, BLOCK).max(axis=2).astype(np.float64)
    m, p = np.frexp(amax / target)  # ratio = m * 2**p, m in [0.5, 1)
    e = np.where(m == 0.5, p - 1, p)
    return np.clip(np.where(amax > 0, e, 0), -E8M0_BIAS, E8M0_BIAS).astype(np.int32)


class Codec:
    """One storage format plus scale mode: packs (n, d) float32 into (n, row_bytes) uint8 and scores rows."""

    def __init__(self, fmt: str, scale: str):
        if not isinstance(scale, str) or scale not in SCALE_MODES:
            raise StoreError(f"unknown scale mode {scale!r}; choose one of {', '.join(SCALE_MODES)}")
        self.format: Format = get_format(fmt)
        self.scale = scale
        self.minifloat = self.format.bits <= 8  # encoded through the rounding LUT; f16/bf16/f32 through numpy
        self.scannable = self.format.bits <= 16  # decoded arithmetically by the compiled scan

    def __repr__(self) -> str:
        return f"Codec({self.format.name!r}, {self.scale!r})"

    def value_bytes(self, dim: int) -> int:
        """Bytes of the packed values of one row."""
        return self.format.row_bytes(dim)

    def row_bytes(self, dim: int) -> int:
        """Packed bytes a vector: the values plus, in block32 mode, one e8m0 byte per 32 values."""
        return self.value_bytes(dim) + (-(-dim // BLOCK) if self.scale == "block32" else 0)

    # -- encode / decode ------------------------------------------------------------------------------

    def encode(self, E: np.ndarray) -> np.ndarray:
        """(n, d) float32 -> (n, row_bytes) uint8; NaN or inf anywhere raises StoreError naming the row."""
        E = np.ascontiguousarray(E, dtype=np.float32)
        if E.ndim != 2 or E.shape[1] == 0:
            raise StoreError(f"embeddings must be a 2-D (n, dim) array, got shape {E.shape}")
        n, d = E.shape
        out = np.zeros((n, self.row_bytes(d)), np.uint8)
        for lo in range(0, n, CHUNK):
            self._encode_chunk(E[lo:lo + CHUNK], out[lo:lo + CHUNK], lo)
        return out

    def _encode_chunk(self, E: np.ndarray, out: np.ndarray, first: int) -> None:
        fmt, n, d = self.format, E.shape[0], E.shape[1]
        target = fmt.scale_target
        if self.scale == "none":
            mult, blk = np.ones((n, 1), np.float32), d
        elif self.scale == "vector":
            with np.errstate(divide="ignore", invalid="ignore"):
                amax = np.abs(E).max(axis=1)
                mult = np.where(amax > 0, np.float32(target) / amax, np.float32(1)).astype(np.float32)[:, None]
            blk = d
        else:
            exps = block_exponents(E, target)
            mult, blk = np.ldexp(np.float32(1), -exps).astype(np.float32), BLOCK
            out[:, self.value_bytes(d):] = (exps + E8M0_BIAS).astype(np.uint8)
        if self.minifloat:
            bad = kernels.encode_rows(E, mult, blk, rounding_lut(fmt.name), fmt.bits, out)
        else:
            finite = np.isfinite(E).all(axis=1)
            bad = -1 if finite.all() else int(np.argmin(finite))
            if bad < 0:
                X = E * (np.repeat(mult, BLOCK, axis=1)[:, :d] if self.scale == "block32" else mult)
                X = np.clip(X, -fmt.fmax, fmt.fmax).astype(fmt.dtype)
                out[:, :self.value_bytes(d)] = X.view(np.uint8)
        if bad >= 0:
            raise StoreError(f"embedding row {first + bad} contains NaN or inf")

    def decode(self, packed: np.ndarray, dim: int) -> np.ndarray:
        """(n, row_bytes) uint8 -> (n, dim) float32 as stored (vector mode keeps its F_max scaling)."""
        packed = self._check_packed(packed, dim)
        out = np.empty((packed.shape[0], dim), np.float32)
        self._decode_into(packed, dim, out)
        return out

    def _decode_into(self, packed: np.ndarray, dim: int, out: np.ndarray) -> None:
        nvb = self.value_bytes(dim)
        blk = BLOCK if self.scale == "block32" else 0
        if self.minifloat and len(packed) > NUMPY_DECODE_ROWS:
            kernels.decode_rows(packed, dim, self.format.bits, code_values(self.format.name), nvb, blk,
                                _SCALES32, out)
            return
        if self.minifloat:
            out[:] = code_values(self.format.name)[unpack_codes(packed[:, :nvb], dim, self.format.bits)]
        else:
            out[:] = np.ascontiguousarray(packed[:, :nvb]).view(self.format.dtype)
        if blk:
            out *= np.repeat(_SCALES32[packed[:, nvb:]], BLOCK, axis=1)[:, :dim]

    def _check_packed(self, packed: np.ndarray, dim: int) -> np.ndarray:
        packed = np.asarray(packed)
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != self.row_bytes(dim):
            raise StoreError(f"packed rows must be (n, {self.row_bytes(dim)}) uint8 for {dim}-dim "
                             f"{self.format.name}/{self.scale}, got {packed.dtype} {packed.shape}")
        return packed if packed.flags.c_contiguous else np.ascontiguousarray(packed)

    # -- scoring -------------------------------------------------------------------------------------

    def norms(self, packed: np.ndarray, dim: int) -> np.ndarray:
        """(n,) float32 L2 norm of every decoded row (query independent, so stores cache it)."""
        packed = self._check_packed(packed, dim)
        if self.scannable:
            return np.sqrt(self._scan(packed, dim, None)[0])
        out = np.empty(packed.shape[0], np.float32)
        buf = np.empty((min(CHUNK, len(packed)), dim), np.float32)
        for lo in range(0, len(packed), CHUNK):
            b = buf[:len(packed[lo:lo + CHUNK])]
            self._decode_into(packed[lo:lo + CHUNK], dim, b)
            out[lo:lo + len(b)] = np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64))
        return out

    def _scan(self, packed: np.ndarray, dim: int, Q: np.ndarray | None) -> np.ndarray:
        """Compiled scalar scan of the packed rows: (q, n) dot products with Q, or (1, n) squared norms if Q is
        None. Cosines of dimensions the vector scan takes go through _vector_scan instead."""
        fmt = self.format
        P = {16: 1, 8: 1, 4: 2, 6: 4}[fmt.bits]
        G = -(-dim // P)
        if Q is None:
            Qp = np.zeros((1, P * G), np.float32)
        else:
            pad = np.zeros((len(Q), G * P), np.float32)
            pad[:, :dim] = Q
            Qp = np.ascontiguousarray(pad.reshape(len(Q), G, P).transpose(0, 2, 1).reshape(len(Q), P * G))
        out = np.empty((len(Qp), len(packed)), np.float32)
        kernels.scan(packed, dim, fmt.bits, fmt.mbits, fmt.bias, BLOCK if self.scale == "block32" else 0,
                     self.value_bytes(dim), Qp, Q is None, _SCALES32, out)
        return out

    def _vector_scannable(self, dim: int, queries: int) -> bool:
        """Whether vecscan takes this format, dimension (whole chunks) and number of queries."""
        chunk = vecscan.LAYOUTS.get(self.format.bits)
        return chunk is not None and dim % chunk == 0 and queries <= SCAN_MAX_QUERIES

    def _vector_scan(self, packed: np.ndarray, dim: int, Q: np.ndarray, inv: np.ndarray) -> np.ndarray:
        """(q, n) cosines of unit queries Q with every row through vecscan (rows decoded in registers)."""
        return vecscan.dots(self.format, self.scale == "block32", packed, dim, self.value_bytes(dim), Q, inv,
                            _SCALES32)

    def _iter_dots(self, packed: np.ndarray, dim: int, queries: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, (q, rows) float32 dot products) chunk by chunk, never decoding the whole store."""
        if self.scannable and len(queries) <= SCAN_MAX_QUERIES:
            yield 0, self._scan(packed, dim, queries)
            return
        qt = np.ascontiguousarray(queries.T)
        raw = self.format.bits == 32 and self.scale != "block32"  # rows are little-endian float32 already
        buf = np.empty((0 if raw else min(CHUNK, len(packed)), dim), np.float32)
        for lo in range(0, len(packed), CHUNK):
            if raw:
                b = packed[lo:lo + CHUNK].view("<f4")
            else:
                b = buf[:len(packed[lo:lo + CHUNK])]
                self._decode_into(packed[lo:lo + CHUNK], dim, b)
            yield lo, np.ascontiguousarray((b @ qt).T)

    def inverse_norms(self, packed: np.ndarray, dim: int) -> np.ndarray:
        """(n,) float32 1 / row norm (0 for zero rows): what cosine scaling needs, cached by stores."""
        norms = self.norms(packed, dim)
        with np.errstate(divide="ignore"):
            return np.where(norms > 0, np.float32(1) / norms, np.float32(0)).astype(np.float32)

    def iter_cosine(self, packed: np.ndarray, dim: int, queries: np.ndarray,
                    inv_norms: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Like _iter_dots but cosine: queries and rows normalised (zero vectors score 0)."""
        packed = self._check_packed(packed, dim)
        Q = _unit_queries(queries, dim)
        inv = self.inverse_norms(packed, dim) if inv_norms is None else inv_norms
        if self._vector_scannable(dim, len(Q)):
            yield 0, self._vector_scan(packed, dim, Q, inv)
            return
        for lo, dots in self._iter_dots(packed, dim, Q):
            dots *= inv[lo:lo + dots.shape[1]]
            yield lo, dots

    def cosine(self, packed: np.ndarray, dim: int, queries: np.ndarray,
               inv_norms: np.ndarray | None = None) -> np.ndarray:
        """(q, n) float32 cosine of every query against every packed row."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        chunks = [c for _, c in self.iter_cosine(packed, dim, queries, inv_norms)]
        if len(chunks) == 1:
            return chunks[0]
        return np.concatenate(chunks, axis=1) if chunks else np.zeros((len(queries), 0), np.float32)


def _unit_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """(q, dim) float32 queries scaled to unit L2 norm; shape or NaN/inf problems raise StoreError."""
    Q = np.atleast_2d(np.asarray(queries, np.float32))
    if Q.ndim != 2 or Q.shape[1] != dim:
        raise StoreError(f"queries must have {dim} values each, got shape {np.shape(queries)}")
    if not np.isfinite(Q).all():
        raise StoreError("query embedding contains NaN or inf")
    n = np.linalg.norm(Q.astype(np.float64), axis=1, keepdims=True)
    return (Q / np.where(n > 0, n, 1.0)).astype(np.float32)

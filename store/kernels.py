"""Compiled (numba) loops for minifloat stores: LUT encode + bit packing, decode, and arithmetic-decode dot scans.

Rows are little-endian bitstreams: value j of a `bits`-wide format occupies bits [bits*j, bits*j + bits)
of the row, bit k being bit k % 8 of byte k // 8. Block scales (one e8m0 byte per 32 values) follow the
`nvb` value bytes of a row. All loops are single-threaded; numba caches the machine code on disk.
"""
from __future__ import annotations

import numba
import numpy as np

_JIT = dict(nopython=True, cache=True, nogil=True)


@numba.jit(**_JIT)
def encode_rows(x, mult, block, lut, bits, out):
    """Scale, round (17-bit key LUT, see codec.rounding_lut) and pack rows; return first non-finite row or -1.

    x (n, d) float32; mult (n, nblk) float32 multipliers for each `block` values; lut (2**17,) uint8 codes;
    out (n, row_bytes) uint8, zero-filled on entry (value bytes only are written).
    """
    n, d = x.shape
    tmp = np.empty(d, np.float32)
    tmpu = tmp.view(np.uint32)
    for i in range(n):
        row = x[i]
        for j in range(d):
            v = row[j]
            if v != v or v - v != 0.0:  # NaN or inf
                return i
            tmp[j] = v * mult[i, j // block]
        o = out[i]
        if bits == 8:
            for j in range(d):
                u = tmpu[j]
                o[j] = lut[((u >> 16) << 1) | np.uint32((u & 0xFFFF) != 0)]
        elif bits == 4:
            for j in range(d):
                u = tmpu[j]
                c = lut[((u >> 16) << 1) | np.uint32((u & 0xFFFF) != 0)]
                o[j >> 1] |= c << (4 * (j & 1))
        else:
            for j in range(d):
                u = tmpu[j]
                c = np.uint32(lut[((u >> 16) << 1) | np.uint32((u & 0xFFFF) != 0)])
                pos = bits * j
                k = pos >> 3
                sh = pos & 7
                o[k] |= np.uint8((c << sh) & 0xFF)
                if sh + bits > 8:
                    o[k + 1] |= np.uint8(c >> (8 - sh))
    return -1


@numba.jit(**_JIT)
def decode_rows(packed, d, bits, lut, nvb, blk, scale_lut, out):
    """Decode packed rows to float32 through the code LUT, applying e8m0 block scales when blk > 0."""
    n = packed.shape[0]
    mask = (1 << bits) - 1
    for i in range(n):
        row = packed[i]
        o = out[i]
        if bits == 8:
            for j in range(d):
                o[j] = lut[row[j]]
        elif bits == 4:
            for j in range(d):
                o[j] = lut[(row[j >> 1] >> (4 * (j & 1))) & 15]
        else:
            for j in range(d):
                pos = bits * j
                k = pos >> 3
                sh = pos & 7
                w = np.uint32(row[k]) >> sh
                if sh + bits > 8:
                    w |= np.uint32(row[k + 1]) << (8 - sh)
                o[j] = lut[w & mask]
        if blk > 0:
            for j in range(d):
                o[j] *= scale_lut[row[nvb + j // blk]]


@numba.jit(nopython=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def scan(packed, d, bits, mbits, bias, blk, nvb, Qp, squares, scale_lut, out):
    """out[q, i] = dot of decoded row i with permuted query Qp[q] (or its squared norm if `squares`).

    Codes are split into P phases (P values per unit of 1 byte (8-bit), 2 bytes (16-bit), 1 byte (4-bit,
    2 phases) or 3 bytes (6-bit, 4 phases)); Qp[q, p * G + g] is query value g * P + p. Each code is decoded arithmetically into
    float32 bits (sign | (magnitude << (23 - mbits)) + exponent offset, with subnormals fixed by subtracting
    2**(1 - bias)) so the loops vectorise; block scales (blk > 0) multiply each value by its e8m0 scale.
    """
    n = packed.shape[0]
    P = 1 if bits >= 8 else (2 if bits == 4 else 4)
    G = Qp.shape[1] // P
    L = P * G
    codes = np.zeros(L, np.int32)
    ubuf = np.empty(L, np.int32)
    fbuf = ubuf.view(np.float32)
    cbuf = np.empty(L, np.float32)
    sbuf = np.ones(L, np.float32)
    amask = np.int32((1 << (bits - 1)) - 1)
    sbit = np.int32(bits - 1)
    sh = np.int32(23 - mbits)
    off = np.int32((127 - bias) << 23)
    lim = np.int32(1 << mbits)
    one23 = np.int32(1 << 23)
    zero = np.int32(0)
    c31 = np.int32(31)
    magic = np.float32(2.0 ** (1 - bias))
    nmagic = -magic
    fz = np.float32(0.0)
    full6 = d // 4
    gpb = blk // P if blk > 0 else 1
    nblk = -(-d // blk) if blk > 0 else 0
    for i in range(n):
        row = packed[i]
        if bits == 8:
            for g in range(G):
                codes[g] = row[g]
        elif bits == 16:
            for g in range(G):
                codes[g] = np.int32(row[2 * g]) | (np.int32(row[2 * g + 1]) << 8)
        elif bits == 4:
            for g in range(G):
                b = np.int32(row[g])
                codes[g] = b & np.int32(15)
                codes[G + g] = b >> np.int32(4)
        else:
            for g in range(full6):
                w = np.int32(row[3 * g]) | (np.int32(row[3 * g + 1]) << 8) | (np.int32(row[3 * g + 2]) << 16)
                codes[g] = w & np.int32(63)
                codes[G + g] = (w >> np.int32(6)) & np.int32(63)
                codes[2 * G + g] = (w >> np.int32(12)) & np.int32(63)
                codes[3 * G + g] = w >> np.int32(18)
            if full6 < G:  # last partial group: read only the row's own value bytes
                w = np.int32(0)
                for k in range(3 * full6, nvb):
                    w |= np.int32(row[k]) << (8 * (k - 3 * full6))
                for p in range(4):
                    codes[p * G + full6] = (w >> (6 * p)) & np.int32(63)
        for k in range(L):
            c = codes[k]
            a = c & amask
            s = c >> sbit
            sub = a < lim
            ubuf[k] = ((a << sh) + off + (one23 if sub else zero)) | (s << c31)
            cbuf[k] = (nmagic if s else magic) if sub else fz
        if blk > 0:
            for b in range(nblk):
                sc = scale_lut[row[nvb + b]]
                for p in range(P):
                    for g in range(p * G + b * gpb, p * G + min(b * gpb + gpb, G)):
                        sbuf[g] = sc
        if squares:
            acc = np.float32(0.0)
            for k in range(L):
                v = (fbuf[k] - cbuf[k]) * sbuf[k]
                acc += v * v
            out[0, i] = acc
        else:
            for q in range(Qp.shape[0]):
                qq = Qp[q]
                acc = np.float32(0.0)
                for k in range(L):
                    acc += (fbuf[k] - cbuf[k]) * sbuf[k] * qq[k]
                out[q, i] = acc

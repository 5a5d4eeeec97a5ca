"""Compiled (numba) loops for minifloat stores: LUT encode + bit packing, decode, and arithmetic-decode dot scans.

Rows are little-endian bitstreams: value j of a `bits`-wide format occupies bits [bits*j, bits*j + bits)
of the row, bit k being bit k % 8 of byte k // 8. Block scales (one e8m0 byte per 32 values) follow the
`nvb` value bytes of a row. All loops are single-threaded; numba caches the machine code on disk.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

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


@intrinsic
def decode_code(typingctx, c, amask, sbit, sh, off, lim):
    """float32 value of minifloat code c, built as float32 bits in 32-bit integer lanes (numba would widen to 64).

    Normal codes: sign << 31 | ((magnitude << sh) + off), sh = 23 - mantissa bits, off = (127 - bias) << 23.
    Subnormal codes (magnitude < lim = 2**mantissa bits) get the implicit 1 added and 2**(1 - bias) taken off.
    """
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)

        def to32(v):
            w = v.type.width
            return v if w == 32 else (builder.trunc(v, i32) if w > 32 else builder.zext(v, i32))

        c, amask, sbit, sh, off, lim = [to32(v) for v in args]
        a = builder.and_(c, amask)
        sign = builder.shl(builder.lshr(c, sbit), ir.Constant(i32, 31))
        sub = builder.icmp_unsigned("<", a, lim)
        one23, zero = ir.Constant(i32, 1 << 23), ir.Constant(i32, 0)
        bits = builder.or_(builder.add(builder.add(builder.shl(a, sh), off), builder.select(sub, one23, zero)), sign)
        fix = builder.select(sub, builder.or_(builder.add(off, one23), sign), zero)
        f32 = ir.FloatType()
        return builder.fsub(builder.bitcast(bits, f32), builder.bitcast(fix, f32))

    return types.float32(c, amask, sbit, sh, off, lim), codegen


@numba.jit(nopython=True, cache=True, nogil=True, fastmath=True, error_model="numpy")
def scan(packed, d, bits, mbits, bias, blk, nvb, Qp, squares, scale_lut, out):
    """out[q, i] = dot of decoded row i with permuted query Qp[q] (or, if `squares`, out[0, i] = its squared norm).

    Each row is decoded arithmetically (decode_code) into an L1-sized float32 buffer laid out in P phases:
    P values per unit of 1 byte (8-bit: P=1; 4-bit: P=2, low nibble first), 2 bytes (16-bit, P=1) or
    3 bytes (6-bit, P=4); buffer and Qp[q] index p * G + g hold value g * P + p. Block scales (blk > 0)
    multiply each block's values by their e8m0 scale.
    """
    n = packed.shape[0]
    P = 1 if bits >= 8 else (2 if bits == 4 else 4)
    L = Qp.shape[1]
    G = L // P
    buf = np.zeros(L, np.float32)
    amask, sbit = (1 << (bits - 1)) - 1, bits - 1
    sh, off, lim = 23 - mbits, (127 - bias) << 23, 1 << mbits
    gpb = blk // P if blk > 0 else G  # units a block
    nblk = -(-G // gpb)
    full6 = d // 4
    one = np.float32(1.0)
    for i in range(n):
        row = packed[i]
        for b in range(nblk):
            sc = scale_lut[row[nvb + b]] if blk > 0 else one
            lo = b * gpb
            hi = min(lo + gpb, G)
            if bits == 4:
                for g in range(lo, hi):
                    x = row[g]
                    buf[g] = decode_code(x & 15, amask, sbit, sh, off, lim) * sc
                    buf[G + g] = decode_code(x >> 4, amask, sbit, sh, off, lim) * sc
            elif bits == 8:
                for g in range(lo, hi):
                    buf[g] = decode_code(row[g], amask, sbit, sh, off, lim) * sc
            elif bits == 16:
                for g in range(lo, hi):
                    buf[g] = decode_code(row[2 * g] | (np.int64(row[2 * g + 1]) << 8), amask, sbit, sh, off, lim) * sc
            else:
                for g in range(lo, min(hi, full6)):
                    w = np.int64(row[3 * g]) | (np.int64(row[3 * g + 1]) << 8) | (np.int64(row[3 * g + 2]) << 16)
                    buf[g] = decode_code(w & 63, amask, sbit, sh, off, lim) * sc
                    buf[G + g] = decode_code((w >> 6) & 63, amask, sbit, sh, off, lim) * sc
                    buf[2 * G + g] = decode_code((w >> 12) & 63, amask, sbit, sh, off, lim) * sc
                    buf[3 * G + g] = decode_code(w >> 18, amask, sbit, sh, off, lim) * sc
                if hi > full6:  # the last, partial group: read only the row's own value bytes
                    w = np.int64(0)
                    for k in range(3 * full6, nvb):
                        w |= np.int64(row[k]) << (8 * (k - 3 * full6))
                    for p in range(4):
                        buf[p * G + full6] = decode_code((w >> (6 * p)) & 63, amask, sbit, sh, off, lim) * sc
        if squares:
            acc = np.float32(0.0)
            for k in range(L):
                acc += buf[k] * buf[k]
            out[0, i] = acc
        else:
            for q in range(Qp.shape[0]):
                qq = Qp[q]
                acc = np.float32(0.0)
                for k in range(L):
                    acc += buf[k] * qq[k]
                out[q, i] = acc

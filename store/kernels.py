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


_FAST = dict(nopython=True, cache=True, nogil=True, fastmath=True, error_model="numpy")


@numba.jit(**_FAST)
def scan(packed, d, bits, mbits, bias, blk, nvb, Qp, squares, scale_lut, out):
    """out[q, i] = dot of decoded row i with permuted query Qp[q] (or, if `squares`, out[0, i] = its squared norm).

    Codes are decoded arithmetically (decode_code) inside the accumulation loops, which index from 0 over
    whole arrays so that numba drops negative-index checks and LLVM vectorises them. Values are taken in P
    phases: P values per unit of 1 byte (8-bit: P=1; 4-bit: P=2, low nibble first), 2 bytes (16-bit, P=1)
    or 3 bytes (6-bit, P=4); Qp[q, p * G + g] is query value g * P + p. sb[t] is the e8m0 block scale of
    unit t (squared for norms; 1 without blocks).
    """
    n = packed.shape[0]
    P = 1 if bits >= 8 else (2 if bits == 4 else 4)
    G = Qp.shape[1] // P
    k = ((1 << (bits - 1)) - 1, bits - 1, 23 - mbits, (127 - bias) << 23, 1 << mbits)
    full = d // 4 if bits == 6 else G  # whole units (6-bit rows may end in a partial group)
    gpb = blk // P if blk > 0 else G  # units a block
    sb = np.ones(G, np.float32)
    for q in range(Qp.shape[0]):
        q0, q1, q2, q3 = Qp[q, :G], Qp[q, G:2 * G], Qp[q, 2 * G:3 * G], Qp[q, 3 * G:]
        for i in range(n):
            if blk > 0:
                for b in range(-(-G // gpb)):
                    sc = scale_lut[packed[i, nvb + b]]
                    sb[b * gpb:min(b * gpb + gpb, G)] = sc * sc if squares else sc
            s = np.float32(0.0)
            if bits == 4:
                if squares:
                    for t in range(G):
                        x = packed[i, t]
                        u, v = decode_code(x & 15, *k), decode_code(x >> 4, *k)
                        s += (u * u + v * v) * sb[t]
                else:
                    for t in range(G):
                        x = packed[i, t]
                        s += (decode_code(x & 15, *k) * q0[t] + decode_code(x >> 4, *k) * q1[t]) * sb[t]
            elif bits == 8:
                for t in range(G):
                    u = decode_code(packed[i, t], *k)
                    s += u * (u if squares else q0[t]) * sb[t]
            elif bits == 16:
                for t in range(G):
                    u = decode_code(packed[i, 2 * t] | (np.int64(packed[i, 2 * t + 1]) << 8), *k)
                    s += u * (u if squares else q0[t]) * sb[t]
            else:
                for t in range(full):
                    w = (np.int64(packed[i, 3 * t]) | (np.int64(packed[i, 3 * t + 1]) << 8)
                         | (np.int64(packed[i, 3 * t + 2]) << 16))
                    u0, u1 = decode_code(w & 63, *k), decode_code((w >> 6) & 63, *k)
                    u2, u3 = decode_code((w >> 12) & 63, *k), decode_code(w >> 18, *k)
                    if squares:
                        s += ((u0 * u0 + u1 * u1) + (u2 * u2 + u3 * u3)) * sb[t]
                    else:
                        s += ((u0 * q0[t] + u1 * q1[t]) + (u2 * q2[t] + u3 * q3[t])) * sb[t]
                if full < G:  # the last, partial group: read only the row's own value bytes
                    w = np.int64(0)
                    for j in range(3 * full, nvb):
                        w |= np.int64(packed[i, j]) << (8 * (j - 3 * full))
                    for p in range(4):
                        u = decode_code((w >> (6 * p)) & 63, *k)
                        s += u * (u if squares else Qp[q, p * G + full]) * sb[full]
            out[q, i] = s


@numba.jit(**_JIT)
def top_k(scores, k, best_i, best_v):
    """Per row of (q, n) scores, the k largest (value descending, index ascending on ties) in one pass."""
    for r in range(scores.shape[0]):
        s = scores[r]
        vi = best_i[r]
        vv = best_v[r]
        m = 0
        for i in range(s.shape[0]):
            v = s[i]
            if m < k:
                m += 1
            elif not v > vv[k - 1]:
                continue
            j = m - 1
            while j > 0 and vv[j - 1] < v:
                vv[j] = vv[j - 1]
                vi[j] = vi[j - 1]
                j -= 1
            vv[j] = v
            vi[j] = i

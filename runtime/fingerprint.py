"""A model's identity from what it computes: sha256 over the graph's operator sets, inputs and outputs, nodes
(with their attributes and sub-graphs) and initializer values; names of nodes, doc strings and metadata are left out.

Stores record this value and refuse every other model, so a different graph that copies another model's
metadata (its declared fingerprint included) is still a different model.
"""
from __future__ import annotations

import hashlib

import onnx
from onnx import numpy_helper

VERSION = b"voxfloat graph fingerprint 1\n"


def graph_fingerprint(model: onnx.ModelProto) -> str:
    """Hex sha256 of the computation `model` describes (external data must already be loaded)."""
    h = hashlib.sha256(VERSION)
    for domain, version in sorted((o.domain, o.version) for o in model.opset_import):
        h.update(f"opset {domain} {version}\n".encode())
    _graph(h, model.graph)
    for function in model.functions:
        h.update(b"function\n")
        h.update(function.SerializeToString(deterministic=True))
    return h.hexdigest()


def _graph(h: "hashlib._Hash", graph: onnx.GraphProto) -> None:
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            h.update(f"{kind} {v.name}\n".encode())
            h.update(v.type.SerializeToString(deterministic=True))
    for t in sorted(graph.initializer, key=lambda t: t.name):
        _tensor(h, t)
    for s in graph.sparse_initializer:
        h.update(b"sparse\n")
        h.update(s.SerializeToString(deterministic=True))
    for node in graph.node:
        h.update(f"node {node.domain} {node.op_type} {list(node.input)} {list(node.output)}\n".encode())
        for a in sorted(node.attribute, key=lambda a: a.name):
            h.update(f"attribute {a.name} {a.type}\n".encode())
            if a.type == onnx.AttributeProto.GRAPH:
                _graph(h, a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _graph(h, g)
            elif a.type == onnx.AttributeProto.TENSOR:
                _tensor(h, a.t)
            else:
                h.update(a.SerializeToString(deterministic=True))


def _tensor(h: "hashlib._Hash", t: onnx.TensorProto) -> None:
    """Name, type, shape and values; raw_data and typed fields holding the same numbers hash alike."""
    h.update(f"tensor {t.name} {t.data_type} {list(t.dims)}\n".encode())
    h.update(numpy_helper.to_array(t).tobytes())

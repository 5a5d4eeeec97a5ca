"""An ONNX file's metadata_props read straight from the protobuf wire format, without the onnx package.

ModelProto's top-level fields are walked and skipped by length (the graph is never parsed); field 14 holds
the StringStringEntryProto (key = 1, value = 2) entries where export writes the model card.
"""
from __future__ import annotations

METADATA_PROPS = 14
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    """The varint at data[i:] and the index after it."""
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or malformed protobuf varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: memoryview) -> list[tuple[int, memoryview | None]]:
    """(field number, payload of length-delimited fields or None) of one protobuf message, in order (no copies)."""
    out: list[tuple[int, memoryview | None]] = []
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            _, i = _varint(data, i)
            out.append((number, None))
        elif wire == LENGTH:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError(f"field {number} runs past the end of the file")
            out.append((number, data[i:i + size]))
            i += size
        elif wire in (FIXED64, FIXED32):
            i += 8 if wire == FIXED64 else 4
            out.append((number, None))
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")
    if i != len(data):
        raise ValueError("truncated protobuf message")
    return out


def metadata_props(data: bytes) -> dict[str, str]:
    """The key -> value metadata of a serialised ONNX ModelProto; ValueError if `data` is not one."""
    props: dict[str, str] = {}
    for number, payload in _fields(memoryview(data)):
        if number == METADATA_PROPS and payload is not None:
            entry = dict(_fields(payload))
            props[bytes(entry.get(1) or b"").decode("utf-8")] = bytes(entry.get(2) or b"").decode("utf-8")
    return props

"""The .vxf file: 32-byte prefix, JSON header, then 64-byte aligned sections; checked, mapped, written atomically.

Layout (all integers little-endian; README "The .vxf file"):
  0 magic b"\\x89VXF\\r\\n\\x1a\\n" | 8 version u32 | 12 header length u32 | 16 file size u64 | 24 crc32 u32 | 28 0
  32 UTF-8 JSON header, space-padded so the sections it lists as [offset, length] start 64-byte aligned:
  rows (count x row_bytes uint8), n_utterances (count x u32), speaker_ids (UTF-8, each id ended by "\\n").
The crc32 covers every byte from offset 32 to the end of the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxfloat.store.errors import StoreError

MAGIC = b"\x89VXF\r\n\x1a\n"
VERSION = 1
PREFIX = struct.Struct("<8sIIQII")  # magic, version, header length, file size, crc32, reserved
ALIGN = 64
SECTIONS = ("rows", "n_utterances", "speaker_ids")


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass
class Mapped:
    """A verified, memory-mapped .vxf: its header, zero-copy section views and checksum."""

    header: dict
    rows: np.ndarray        # (count, row_bytes) uint8, read-only view of the map
    n_utterances: np.ndarray  # (count,) uint32, read-only view of the map
    speaker_ids: memoryview   # UTF-8 ids, each ended by "\n"; parsed lazily by the store
    crc32: int
    file_size: int
    version: int


def read(path: Path, row_bytes_for) -> Mapped:
    """Map and verify `path`; `row_bytes_for(header)` gives the row size the header's format/scale/dim need.

    Every problem raises StoreError("<path>: <what is wrong>").
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except FileNotFoundError:
        raise StoreError(f"{path}: no such voiceprint store") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror}") from None
    if mm is None:
        raise StoreError(f"{path}: empty file, not a voiceprint store")
    head = bytes(mm[:PREFIX.size])
    if head[:8] != MAGIC[:len(head[:8])]:
        raise StoreError(f"{path}: not a voxfloat voiceprint store (bad magic)")
    if size < PREFIX.size:
        raise StoreError(f"{path}: truncated: {size} bytes, shorter than the {PREFIX.size}-byte prefix")
    _, version, header_len, file_size, crc, _ = PREFIX.unpack(head)
    if version != VERSION:
        raise StoreError(f"{path}: unsupported .vxf version {version} (this voxfloat reads version {VERSION})")
    if size < file_size:
        raise StoreError(f"{path}: truncated: {size} bytes, the prefix says {file_size}")
    if size > file_size:
        raise StoreError(f"{path}: corrupt: {size} bytes, the prefix says {file_size} (trailing data)")
    with memoryview(mm) as view:
        actual = zlib.crc32(view[PREFIX.size:])
    if actual != crc:
        raise StoreError(f"{path}: checksum mismatch (crc32 {actual:08x}, expected {crc:08x}): the file is corrupt")
    try:
        header = json.loads(bytes(mm[PREFIX.size:PREFIX.size + header_len]).decode("utf-8"))
        count, sections = int(header["count"]), header["sections"]
        spans = {name: (int(sections[name][0]), int(sections[name][1])) for name in SECTIONS}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise StoreError(f"{path}: corrupt header: {type(e).__name__} {e}") from None
    for name, (off, length) in spans.items():
        if off < PREFIX.size + header_len or length < 0 or off + length > size:
            raise StoreError(f"{path}: corrupt header: section {name} [{off}, {off + length}) lies outside the file")
    row_bytes = row_bytes_for(header)
    if int(header.get("row_bytes", -1)) != row_bytes:
        raise StoreError(f"{path}: wrong dimension: {header.get('format')}/{header.get('scale')} rows of "
                         f"{header.get('dim')} values take {row_bytes} bytes, "
                         f"the header says {header.get('row_bytes')}")
    for name, want in (("rows", count * row_bytes), ("n_utterances", 4 * count)):
        if spans[name][1] != want:
            raise StoreError(f"{path}: corrupt header: section {name} has {spans[name][1]} bytes, "
                             f"{count} voiceprints need {want}")
    rows = np.frombuffer(mm, np.uint8, count * row_bytes, spans["rows"][0]).reshape(count, row_bytes)
    nutt = np.frombuffer(mm, "<u4", count, spans["n_utterances"][0])
    off, length = spans["speaker_ids"]
    return Mapped(header, rows, nutt, memoryview(mm)[off:off + length], crc, size, version)


def parse_ids(path: Path, blob: memoryview | bytes, count: int) -> list[str]:
    """Split the speaker-id section; a count mismatch or bad UTF-8 raises StoreError."""
    try:
        ids = bytes(blob).decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise StoreError(f"{path}: corrupt speaker ids: {e.reason} at byte {e.start}") from None
    if ids[-1] != "" or len(ids) - 1 != count:
        raise StoreError(f"{path}: corrupt speaker ids: {len(ids) - 1} ids for {count} voiceprints")
    ids.pop()
    return ids


def write(path: Path, header: dict, rows: np.ndarray, n_utterances: np.ndarray, ids: list[str]) -> None:
    """Write a complete .vxf atomically: temporary file (mode 0600) beside `path`, fsync, rename, fsync dir."""
    id_bytes = "".join(s + "\n" for s in ids).encode("utf-8")
    payloads = {"rows": memoryview(np.ascontiguousarray(rows).reshape(-1)),
                "n_utterances": np.ascontiguousarray(n_utterances, "<u4").tobytes(),
                "speaker_ids": id_bytes}
    lengths = {name: len(p) for name, p in payloads.items()}
    # The header lists the section offsets, which depend on its own padded length: settle in two passes.
    header_len = 0
    while True:
        pos, spans = _align(PREFIX.size + header_len), {}
        for name in SECTIONS:
            spans[name] = [pos, lengths[name]]
            pos = _align(pos + lengths[name])
        text = json.dumps({**header, "sections": spans}, sort_keys=True).encode("utf-8")
        if _align(PREFIX.size + len(text)) == _align(PREFIX.size + header_len):
            break
        header_len = len(text)
    file_size = spans[SECTIONS[-1]][0] + lengths[SECTIONS[-1]]
    pieces = [text + b" " * (spans["rows"][0] - PREFIX.size - len(text))]
    for i, name in enumerate(SECTIONS):
        pieces.append(payloads[name])
        nxt = spans[SECTIONS[i + 1]][0] if i + 1 < len(SECTIONS) else file_size
        pieces.append(b"\0" * (nxt - spans[name][0] - lengths[name]))
    crc = 0
    for p in pieces:
        crc = zlib.crc32(p, crc)
    header_len = spans["rows"][0] - PREFIX.size
    prefix = PREFIX.pack(MAGIC, VERSION, header_len, file_size, crc, 0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            for p in [prefix, *pieces]:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the sidecar `<path>.lock` (the store itself is replaced on every write)."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(f"{path}: cannot create lock file {lock.name}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

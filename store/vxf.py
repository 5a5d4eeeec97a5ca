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
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from voxfloat.files import describe, is_temporary, open_regular, write_private
from voxfloat.store.codec import SCALE_MODES
from voxfloat.store.errors import StoreError
from voxfloat.store.formats import FORMATS

MAGIC = b"\x89VXF\r\n\x1a\n"
VERSION = 1
PREFIX = struct.Struct("<8sIIQII")  # magic, version, header length, file size, crc32, reserved
ALIGN = 64
SECTIONS = ("rows", "n_utterances", "speaker_ids")
ENROLLMENT = "normalised-mean"  # the only enrollment rule this version writes and reads
MAX_DIM = 65536
MAX_ID_BYTES = 256
E8M0_NAN = 255  # the float8_e8m0fnu NaN code: never a valid block scale


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


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _cosine(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and -1.0 <= v <= 1.0  # False for NaN


def _iso_time(v: object) -> bool:
    if not isinstance(v, str):
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


CHILD_MIN_COSINE = 0.99  # a quantized child is admitted to its parent's store at this measured mean cosine
CHILD_RECORD = {"weights", "mean", "min", "files", "admitted"}
MAX_CHILDREN = 64


def _check_model(v: object) -> str | None:
    if not isinstance(v, dict):
        return "must be an object"
    for key in ("fingerprint", "arch"):
        if not isinstance(v.get(key), str) or not v[key] or len(v[key]) > 256:
            return f"needs a non-empty string {key!r} (at most 256 characters)"
    children = v.get("children", {})
    if not isinstance(children, dict) or len(children) > MAX_CHILDREN:
        return f"children must be an object of at most {MAX_CHILDREN} admitted models"
    for fingerprint, record in children.items():
        if len(fingerprint) != 64 or not all(c in "0123456789abcdef" for c in fingerprint):
            return f"child {fingerprint[:70]!r} is not a sha256 graph fingerprint"
        if not isinstance(record, dict) or set(record) != CHILD_RECORD or not isinstance(record["weights"], str) \
                or not (_cosine(record["mean"]) and record["mean"] >= CHILD_MIN_COSINE and _cosine(record["min"])) \
                or not (_whole(record["files"]) and record["files"] >= 1) or not _iso_time(record["admitted"]):
            return (f"child {fingerprint[:12]} needs {', '.join(sorted(CHILD_RECORD))}, a mean cosine of at least "
                    f"{CHILD_MIN_COSINE} and at least one file, got {record!r}")
    return None


def _check_thresholds(v: object) -> str | None:
    if not isinstance(v, dict):
        return "must be an object of format name to cosine"
    for fmt, value in v.items():
        if fmt not in FORMATS:
            return f"names unknown format {fmt!r}"
        if not _cosine(value):
            return f"for {fmt} must be a cosine in [-1, 1], got {value!r}"
    return None


def _check_sections(v: object) -> str | None:
    if not isinstance(v, dict) or set(v) != set(SECTIONS):
        return f"must be an object with exactly {', '.join(SECTIONS)}"
    for name in SECTIONS:
        span = v[name]
        if not isinstance(span, list) or len(span) != 2 or not all(_whole(x) and x >= 0 for x in span):
            return f"{name} must be [offset, length] with whole numbers >= 0, got {span!r}"
    return None


def _check_preprocessing(v: object) -> str | None:
    """What the runtime did to audio before embedding (runtime/vad.py): a flat object with a string "vad"."""
    if not isinstance(v, dict) or not isinstance(v.get("vad"), str) or len(v) > 32:
        return f"must be an object of at most 32 settings with a string 'vad', got {v!r}"
    bad = [k for k, x in v.items() if not isinstance(x, (str, int, float))]  # the JSON reader refuses NaN and inf
    return f"setting {bad[0]!r} must be a string, number or boolean" if bad else None


def _rule(test: Callable[[object], bool], what: str) -> Callable[[object], str | None]:
    return lambda v: None if test(v) else f"must be {what}, got {v!r}"


# Every header key a reader accepts, with its check (None: fine, else what is wrong). One table, so a new
# field is one line here; keys not listed, and required keys missing, make the file refused.
HEADER_FIELDS: dict[str, Callable[[object], str | None]] = {
    "format": _rule(lambda v: isinstance(v, str) and v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "scale": _rule(lambda v: isinstance(v, str) and v in SCALE_MODES, f"one of {', '.join(SCALE_MODES)}"),
    "dim": _rule(lambda v: _whole(v) and 1 <= v <= MAX_DIM, f"a whole number from 1 to {MAX_DIM}"),
    "count": _rule(lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "row_bytes": _rule(lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "model": _check_model,
    "thresholds": _check_thresholds,
    "threshold_source": _rule(lambda v: v is None or isinstance(v, str), "null or a string"),
    "enrollment": _rule(lambda v: v == ENROLLMENT, repr(ENROLLMENT)),
    "created": _rule(_iso_time, "an ISO-8601 time"),
    "updated": _rule(_iso_time, "an ISO-8601 time"),
    "preprocessing": _check_preprocessing,
    "sections": _check_sections,
}
REQUIRED = ("format", "scale", "dim", "count", "row_bytes", "model", "thresholds", "enrollment", "sections")


def check_header(header: object, written: bool = True) -> str | None:
    """What is wrong with a parsed JSON header (type, range, missing or unknown keys), or None.

    written=False checks a header before it is written (its sections are added by `write`).
    """
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    missing = [k for k in REQUIRED if k not in header and (written or k != "sections")]
    if missing:
        return f"missing {', '.join(missing)}"
    unknown = sorted(k for k in header if k not in HEADER_FIELDS)
    if unknown:
        return f"unknown field {unknown[0]!r}"
    for key, value in header.items():
        problem = HEADER_FIELDS[key](value)
        if problem:
            return f"{key} {problem}"[:200]
    return None


def looks_like_store(path: Path) -> bool:
    """Whether `path` is meant as a store: a .vxf name, a writer's temporary name, or the .vxf magic inside."""
    if path.suffix == ".vxf" or is_temporary(path):
        return True
    try:
        with open_regular(path, StoreError) as f:
            return f.read(len(MAGIC)) == MAGIC
    except (StoreError, OSError):
        return False


def read(path: Path, row_bytes_for: Callable[[dict], int]) -> Mapped:
    """Map and verify `path`; `row_bytes_for(header)` gives the row size the header's format/scale/dim need.

    Checked, in order: regular file, magic, version, size, reserved field, CRC-32, header JSON (every field's
    type and range), row size, section layout (in order, 64-byte aligned, in bounds, zero bytes between,
    ending the file), utterance counts, block32 scale bytes and the id section's shape. A CRC is no
    authentication, so nothing is believed because the checksum matches. Every problem raises
    StoreError("<path>: <what is wrong>").
    """
    if is_temporary(path):
        raise StoreError(f"{path}: a temporary file left by an interrupted write, not a voiceprint store")
    with open_regular(path, StoreError, "voiceprint store") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise StoreError(f"{path}: empty file, not a voiceprint store")
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise StoreError(f"{path}: cannot read: {e.strerror}") from None
    head = bytes(mm[:PREFIX.size])
    if head[:8] != MAGIC[:len(head[:8])]:
        raise StoreError(f"{path}: not a voxfloat voiceprint store (bad magic)")
    if size < PREFIX.size:
        raise StoreError(f"{path}: truncated: {size} bytes, shorter than the {PREFIX.size}-byte prefix")
    _, version, header_len, file_size, crc, reserved = PREFIX.unpack(head)
    if version != VERSION:
        raise StoreError(f"{path}: unsupported .vxf version {version} (this voxfloat reads version {VERSION})")
    if size < file_size:
        raise StoreError(f"{path}: truncated: {size} bytes, the prefix says {file_size}")
    if size > file_size:
        raise StoreError(f"{path}: corrupt: {size} bytes, the prefix says {file_size} (trailing data)")
    if reserved != 0:
        raise StoreError(f"{path}: corrupt: reserved prefix field is {reserved}, not 0")
    with memoryview(mm) as view:
        actual = zlib.crc32(view[PREFIX.size:])
    if actual != crc:
        raise StoreError(f"{path}: checksum mismatch (crc32 {actual:08x}, expected {crc:08x}): the file is corrupt")
    if (PREFIX.size + header_len) % ALIGN or PREFIX.size + header_len > size:
        raise StoreError(f"{path}: corrupt header: length {header_len} does not end on a 64-byte boundary "
                         "inside the file")
    try:
        text = bytes(mm[PREFIX.size:PREFIX.size + header_len]).decode("utf-8")
        header, end = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys).raw_decode(text)
        if text[end:].strip(" "):
            raise ValueError("the JSON is followed by something other than space padding")
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StoreError(f"{path}: corrupt header: {str(e).splitlines()[0][:120]}") from None
    problem = check_header(header)
    if problem:
        raise StoreError(f"{path}: corrupt header: {problem}")
    count, row_bytes = header["count"], row_bytes_for(header)
    if header["row_bytes"] != row_bytes:
        raise StoreError(f"{path}: wrong dimension: {header['format']}/{header['scale']} rows of "
                         f"{header['dim']} values take {row_bytes} bytes, the header says {header['row_bytes']}")
    spans = {name: tuple(header["sections"][name]) for name in SECTIONS}
    _check_layout(path, mm, spans, PREFIX.size + header_len, size,
                  {"rows": count * row_bytes, "n_utterances": 4 * count})
    rows = np.frombuffer(mm, np.uint8, count * row_bytes, spans["rows"][0]).reshape(count, row_bytes)
    nutt = np.frombuffer(mm, "<u4", count, spans["n_utterances"][0])
    if count and int(nutt.min()) < 1:
        raise StoreError(f"{path}: corrupt: voiceprint {int(np.argmin(nutt))} was averaged from 0 utterances")
    if header["scale"] == "block32" and count:
        scales = rows[:, row_bytes - -(-header["dim"] // 32):]
        if (scales == E8M0_NAN).any():
            raise StoreError(f"{path}: corrupt: voiceprint {int(np.argmax((scales == E8M0_NAN).any(axis=1)))} has "
                             "a block scale byte of 255 (e8m0 NaN)")
    off, length = spans["speaker_ids"]
    ids = memoryview(mm)[off:off + length]
    _check_id_section(path, ids, count)
    return Mapped(header, rows, nutt, ids, crc, size, version)


def _check_layout(path: Path, mm: mmap.mmap, spans: dict[str, tuple[int, int]], start: int, size: int,
                  lengths: dict[str, int]) -> None:
    """Sections in README order, each 64-byte aligned, starting right after the header (and the previous
    section's zero padding), non-overlapping, inside the file, the last one ending it."""
    pos = start
    for name in SECTIONS:
        off, length = spans[name]
        if off != pos:
            raise StoreError(f"{path}: corrupt header: section {name} starts at {off}, the layout puts it at {pos}")
        if off + length > size:
            raise StoreError(f"{path}: corrupt header: section {name} [{off}, {off + length}) lies outside the file")
        if name in lengths and length != lengths[name]:
            raise StoreError(f"{path}: corrupt header: section {name} has {length} bytes, the voiceprints need "
                             f"{lengths[name]}")
        end = off + length
        pos = _align(end) if name != SECTIONS[-1] else end
        if pos > size or any(mm[end:min(pos, size)]):
            raise StoreError(f"{path}: corrupt: the bytes after section {name} are not zero padding")
    if pos != size:
        raise StoreError(f"{path}: corrupt: {size - pos} bytes after the last section")


def _check_id_section(path: Path, blob: memoryview, count: int) -> None:
    """Cheap checks of the id section on open: one non-empty, "\\n"-ended id per row (full checks: parse_ids)."""
    data = bytes(blob)
    lines = data.count(b"\n")
    if lines != count or (count and (not data.endswith(b"\n") or data.startswith(b"\n") or b"\n\n" in data)):
        raise StoreError(f"{path}: corrupt speaker ids: {lines} non-empty lines for {count} voiceprints")


def check_speaker_id(speaker_id: object, where: str | Path = "") -> str:
    """A speaker id as stored: printable text, no surrounding spaces, at most MAX_ID_BYTES of UTF-8; else StoreError."""
    prefix = f"{where}: " if str(where) else ""
    if not isinstance(speaker_id, str) or not speaker_id or not speaker_id.isprintable() \
            or speaker_id != speaker_id.strip():
        raise StoreError(f"{prefix}bad speaker id {speaker_id!r}: use printable text without surrounding spaces")
    try:
        size = len(speaker_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(f"{prefix}bad speaker id {speaker_id!r}: not valid Unicode text") from None
    if size > MAX_ID_BYTES:
        raise StoreError(f"{prefix}speaker id of {size} bytes, the limit is {MAX_ID_BYTES}")
    return speaker_id


def parse_ids(path: Path, blob: memoryview | bytes, count: int) -> list[str]:
    """Split the speaker-id section: valid UTF-8, one id per voiceprint, each a valid id, no duplicates."""
    data = bytes(blob)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StoreError(f"{path}: corrupt speaker ids: {e.reason} at byte {e.start}") from None
    ids = text.split("\n")
    if ids[-1] != "" or len(ids) - 1 != count:
        raise StoreError(f"{path}: corrupt speaker ids: {len(ids) - 1} ids for {count} voiceprints")
    ids.pop()
    # whole-section tests first (C speed for a million ids); the slow per-id check only names the culprit
    if count and (not text.replace("\n", "").isprintable() or text.startswith(" ") or "\n " in text
                  or " \n" in text or "\n\n" in text or max(map(len, data.split(b"\n"))) > MAX_ID_BYTES):
        for i, s in enumerate(ids):
            check_speaker_id(s, f"{path}: corrupt speaker ids: id {i}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(s for s in ids if s in seen or seen.add(s))
        raise StoreError(f"{path}: corrupt speaker ids: {dup!r} appears twice")
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

    def fill(f: BinaryIO) -> None:
        for p in [prefix, *pieces]:
            f.write(p)

    # a symbolic link to a store is followed: the link stays, the store it names is replaced (README)
    write_private(path, fill, error=StoreError, follow_symlinks=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the sidecar `<store>.lock` beside the file `path` names (a symbolic link is
    followed, so the link and its target share one lock); the store itself is replaced on every write."""
    target = Path(os.path.realpath(path))
    lock = target.with_name(target.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"{path}: cannot create lock file {lock.name}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{path}: lock file {lock.name} is {describe(os.fstat(fd).st_mode)}, not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

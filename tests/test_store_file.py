"""The .vxf store: create/edit/open, scoring, model refusal, corruption errors, atomic writes, locking, 0600."""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from voxfloat.store import Codec, StoreError, VoiceprintStore

MODEL = {"fingerprint": "f" * 64, "arch": "campplus", "name": "test"}
DIM = 48


def make(path: Path, n: int = 6, fmt: str = "e2m1", scale: str = "block32", seed: int = 0) -> np.ndarray:
    """A store of n speakers spk0.. from 3 utterances each; returns the (n, 3, DIM) embeddings."""
    E = np.random.default_rng(seed).standard_normal((n, 3, DIM)).astype(np.float32)
    with VoiceprintStore.edit(path, fmt=fmt, scale=scale, dim=DIM, model=MODEL, thresholds={fmt: 0.5}) as s:
        for i in range(n):
            s.add(f"spk{i}", E[i])
    return E


def test_create_open_info_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    s = VoiceprintStore.create(path, fmt="e4m3", scale="vector", dim=DIM, model=MODEL, thresholds={"e4m3": 0.3})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (s.format, s.scale, s.dim, len(s), s.speakers, s.threshold) == ("e4m3", "vector", DIM, 0, [], 0.3)
    with pytest.raises(StoreError, match="already exists"):
        VoiceprintStore.create(path, fmt="e4m3", scale="vector", dim=DIM, model=MODEL)
    E = make(path := tmp_path / "w.vxf", n=4)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s = VoiceprintStore.open(path)
    info = s.info()
    assert info["version"] == 1 and info["count"] == 4 and info["bytes_per_voiceprint"] == 24 + 2
    assert info["file_size"] == path.stat().st_size and info["checksum"].endswith(" ok")
    assert info["model"] == MODEL and info["thresholds"] == {"e2m1": 0.5} and info["threshold_source"] == "create"
    assert "normalised mean" in info["enrollment"] and "n = 3..3" in info["enrollment"]
    assert s.speakers == [f"spk{i}" for i in range(4)] and "spk2" in s and "nobody" not in s
    np.testing.assert_array_equal(s.n_utterances, [3, 3, 3, 3])
    # the stored voiceprint is the normalised mean of the (normalised) utterance embeddings
    unit = E / np.linalg.norm(E, axis=2, keepdims=True)
    mean = unit.mean(axis=1)
    assert s.score(mean[2], "spk2") > 0.98
    assert E.shape == (4, 3, DIM)


def test_add_replace_remove_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    E = make(path, n=5)
    rng = np.random.default_rng(9)
    new = rng.standard_normal((2, DIM)).astype(np.float32)
    with VoiceprintStore.edit(path) as s:
        with pytest.raises(StoreError, match="'spk1' is already enrolled"):
            s.add("spk1", new)
        s.add("spk1", new, replace=True)
        s.remove("spk3")
        s.add("new speaker", new[:1])
        s.set_thresholds({"e2m1": np.float32(0.42), "f32": np.float64(0.61)}, source="calibrate on trials.txt")
        with pytest.raises(StoreError, match=r"threshold for e2m1 must be a cosine in \[-1, 1\], got nan"):
            s.set_thresholds({"e2m1": float("nan")}, source="x")
        with pytest.raises(StoreError, match="no speaker 'ghost'"):
            s.remove("ghost")
        for bad in ("", " x", "a\nb", "tab\there"):
            with pytest.raises(StoreError, match="bad speaker id"):
                s.add(bad, new)
        with pytest.raises(StoreError, match="threshold for unknown format"):
            s.set_thresholds({"e9m9": 0.1}, source="x")
    s = VoiceprintStore.open(path)
    assert s.speakers == ["spk0", "spk1", "spk2", "spk4", "new speaker"]
    np.testing.assert_array_equal(s.n_utterances, [3, 2, 3, 3, 1])
    assert s.thresholds == {"e2m1": float(np.float32(0.42)), "f32": 0.61} and s.threshold == float(np.float32(0.42))
    assert s.info()["threshold_source"] == "calibrate on trials.txt"
    assert s.identify(new.mean(axis=0), 1)[0][0][0] == "spk1"
    assert s.identify(E[4, 0], 1)[0][0][0] == "spk4"
    with pytest.raises(StoreError, match="read-only"):
        s.add("x", new)


@pytest.mark.parametrize("fmt, scale", [("f32", "none"), ("e4m3", "vector")])
def test_extend_adds_utterances_to_a_voiceprint(tmp_path: Path, fmt: str, scale: str) -> None:
    """Utterances added one by one end near the voiceprint of all of them at once (same count, same norm)."""
    rng = np.random.default_rng(3)
    speaker = rng.standard_normal(DIM)
    E = (speaker + 0.3 * rng.standard_normal((5, DIM))).astype(np.float32) * np.float32(7.0)
    path = tmp_path / "v.vxf"
    with VoiceprintStore.edit(path, fmt=fmt, scale=scale, dim=DIM, model=MODEL) as s:
        s.add("all", E)
        s.extend("one by one", E[:1])  # a new speaker: as add
        for e in E[1:]:
            s.extend("one by one", e[None, :])
        s.add("gone", E[:1])
        with pytest.raises(StoreError, match="cancel"):
            s.extend("gone", -s.codec.decode(s.packed[2:3], DIM))
        s.remove("gone")
    s = VoiceprintStore.open(path)
    np.testing.assert_array_equal(s.n_utterances, [5, 5])
    both = s.codec.decode(s.packed, DIM).astype(np.float64)
    assert both[0] @ both[1] / np.linalg.norm(both, axis=1).prod() > 0.999
    if scale == "none":
        np.testing.assert_allclose(np.linalg.norm(both, axis=1), np.linalg.norm(E, axis=1).mean(), rtol=1e-5)


def test_edit_that_raises_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    make(path, n=3)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with VoiceprintStore.edit(path) as s:
            s.remove("spk0")
            raise RuntimeError("boom")
    assert path.read_bytes() == before


def test_edit_needs_a_store_or_creation_arguments(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such voiceprint store"):
        with VoiceprintStore.edit(tmp_path / "missing.vxf"):
            pass
    make(path := tmp_path / "v.vxf")
    with pytest.raises(StoreError, match="the store has fmt e2m1, not e4m3"):
        with VoiceprintStore.edit(path, fmt="e4m3", scale="block32", dim=DIM, model=MODEL):
            pass


@pytest.mark.parametrize("fmt,scale", [("e2m1", "block32"), ("e4m3", "vector"), ("e3m2", "none"), ("f16", "vector")])
def test_scoring_matches_float_reference(tmp_path: Path, fmt: str, scale: str) -> None:
    path = tmp_path / "v.vxf"
    E = make(path, n=40, fmt=fmt, scale=scale)
    s = VoiceprintStore.open(path)
    codec = Codec(fmt, scale)
    D = codec.decode(s.packed, DIM).astype(np.float64)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    Q = E[:, 1] + 0.3 * np.random.default_rng(1).standard_normal((40, DIM)).astype(np.float32)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    ref = Qn @ D.T
    for queries in (Q[:1], Q[:5], Q):  # scan path and decode + BLAS path
        top = s.identify(queries, top_k=3)
        for r, hits in enumerate(top):
            order = np.argsort(-ref[r])[:3]
            assert [h[0] for h in hits] == [f"spk{i}" for i in order]
            np.testing.assert_allclose([h[1] for h in hits], ref[r, order], atol=2e-5)
    ids = [f"spk{(i * 7) % 40}" for i in range(40)]
    np.testing.assert_allclose(s.score_pairs(ids, Q), ref[np.arange(40), [(i * 7) % 40 for i in range(40)]],
                               atol=2e-5)
    assert abs(s.score(Q[3], "spk3") - ref[3, 3]) < 2e-5
    assert len(s.identify(Q[:2], top_k=100)[0]) == 40
    with pytest.raises(StoreError, match=f"must be \\(k, {DIM}\\)"):
        s.identify(np.ones((2, DIM + 1), np.float32))
    with pytest.raises(StoreError, match="NaN or inf"):
        s.score(np.full(DIM, np.nan, np.float32), "spk0")


def test_empty_store_identifies_nothing(tmp_path: Path) -> None:
    s = VoiceprintStore.create(tmp_path / "e.vxf", fmt="e2m1", scale="none", dim=DIM, model=MODEL)
    assert s.identify(np.ones((2, DIM), np.float32), 5) == [[], []]


def test_model_refusal(tmp_path: Path) -> None:
    make(path := tmp_path / "v.vxf")
    s = VoiceprintStore.open(path)
    s.check_model(MODEL["fingerprint"])
    with pytest.raises(StoreError) as e:
        s.check_model("0123456789abcdef" * 4)
    assert str(e.value).startswith(f"{path}: built with model campplus ffffffffffff, not 0123456789ab")
    with pytest.raises(StoreError, match="built with model campplus"):
        with VoiceprintStore.edit(path, model={"fingerprint": "0" * 64, "arch": "campplus"}):
            pass


def _rewrite_header(path: Path, change) -> None:
    """Edit the JSON header and fix the checksum, as a buggy writer would."""
    raw = bytearray(path.read_bytes())
    hl = struct.unpack_from("<I", raw, 12)[0]
    header = json.loads(raw[32:32 + hl])
    change(header)
    text = json.dumps(header).encode()
    assert len(text) <= hl
    raw[32:32 + hl] = text + b" " * (hl - len(text))
    struct.pack_into("<I", raw, 24, zlib.crc32(raw[32:]))
    path.write_bytes(bytes(raw))


def _corrupt(path: Path, case: str) -> None:
    raw = bytearray(path.read_bytes())
    if case == "truncated":
        path.write_bytes(raw[:-10])
    elif case == "tiny":
        path.write_bytes(raw[:20])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "flipped":
        raw[-40] ^= 0x10
        path.write_bytes(bytes(raw))
    elif case == "magic":
        path.write_bytes(b"PK\x03\x04" + bytes(raw[4:]))
    elif case == "version":
        struct.pack_into("<I", raw, 8, 2)
        path.write_bytes(bytes(raw))
    elif case == "trailing":
        path.write_bytes(bytes(raw) + b"\0")
    elif case == "dimension":
        _rewrite_header(path, lambda h: h.update(dim=h["dim"] + 1))
    elif case == "ids":
        _rewrite_header(path, lambda h: h.update(count=h["count"] - 1, sections={
            **h["sections"], "rows": [h["sections"]["rows"][0], h["sections"]["rows"][1] - h["row_bytes"]],
            "n_utterances": [h["sections"]["n_utterances"][0], h["sections"]["n_utterances"][1] - 4]}))


@pytest.mark.parametrize("case,message", [
    ("truncated", r"truncated: \d+ bytes, the prefix says \d+"),
    ("tiny", "truncated: 20 bytes, shorter than the 32-byte prefix"),
    ("empty", "empty file, not a voiceprint store"),
    ("flipped", r"checksum mismatch \(crc32 [0-9a-f]{8}, expected [0-9a-f]{8}\): the file is corrupt"),
    ("magic", r"not a voxfloat voiceprint store \(bad magic\)"),
    ("version", r"unsupported .vxf version 2 \(this voxfloat reads version 1\)"),
    ("trailing", r"corrupt: \d+ bytes, the prefix says \d+ \(trailing data\)"),
    ("dimension", f"wrong dimension: e2m1/block32 rows of {DIM + 1} values take 27 bytes, the header says 26"),
    ("ids", "corrupt: the bytes after section rows are not zero padding"),  # a shortened section leaves a gap
])
def test_corrupt_files_give_one_line_naming_the_file(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "v.vxf"
    make(path)
    _corrupt(path, case)
    with pytest.raises(StoreError, match=message) as e:
        VoiceprintStore.open(path).speakers  # ids are parsed lazily, on first use
    text = str(e.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_wrong_dimension_for_the_model_and_missing_file(tmp_path: Path) -> None:
    make(path := tmp_path / "v.vxf")
    with pytest.raises(StoreError, match=f"{path}: wrong dimension: the store holds {DIM}-dim voiceprints, "
                                         "the model gives 192"):
        VoiceprintStore.open(path, dim=192)
    with pytest.raises(StoreError, match="no such voiceprint store"):
        VoiceprintStore.open(tmp_path / "nope.vxf")


def test_failed_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.vxf"
    make(path, n=3)
    before = path.read_bytes()

    def dying_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", dying_fsync)
    with pytest.raises(StoreError, match="cannot write: Input/output error"):
        with VoiceprintStore.edit(path) as s:
            s.add("late", np.ones(DIM, np.float32))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.vxf", "v.vxf.lock"]


SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from voxfloat.store import VoiceprintStore
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = {"fingerprint": "f" * 64, "arch": "campplus"}
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    for i in range(n):
        with VoiceprintStore.edit(path, fmt="e2m1", scale="vector", dim=48, model=model) as s:
            s.add(f"{tag}{i}", rng.standard_normal((2, 48)).astype(np.float32))
            if tag == "crash" and i == n - 1:
                os.replace = lambda *a: os._exit(3)  # die after writing the temporary file, before the rename
""")


def test_concurrent_appends_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.vxf"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(path), tag, "15"]) for tag in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    s = VoiceprintStore.open(path)
    assert sorted(s.speakers) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])
    np.testing.assert_array_equal(s.n_utterances, np.full(30, 2))


def test_crash_before_rename_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    rc = subprocess.run([sys.executable, "-c", SCRIPT, str(path), "crash", "3"], timeout=300).returncode
    assert rc == 3
    s = VoiceprintStore.open(path)  # the first two enrollments, intact and verified
    assert s.speakers == ["crash0", "crash1"]


def test_add_many_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    E = np.random.default_rng(3).standard_normal((50, DIM)).astype(np.float32)
    with VoiceprintStore.edit(path, fmt="e3m2", scale="vector", dim=DIM, model=MODEL) as s:
        s.add_many([f"s{i}" for i in range(50)], E)
        with pytest.raises(StoreError, match="'s3' is already enrolled"):
            s.add_many(["new", "s3"], E[:2])
        with pytest.raises(StoreError, match="'x' is given twice"):
            s.add_many(["x", "x"], E[:2])
        with pytest.raises(StoreError, match="2 speaker ids for 3 embeddings"):
            s.add_many(["y", "z"], E[:3])
        s.add_many(["s3", "s4"], E[:2], replace=True)
    s = VoiceprintStore.open(path)
    assert len(s) == 50 and s.speakers[:5] == ["s0", "s1", "s2", "s3", "s4"]
    assert s.identify(E[0], 2)[0][0][0] in {"s0", "s3"} and s.score(E[1], "s4") > 0.97
    with pytest.raises(StoreError, match="unknown store argument"):
        with VoiceprintStore.edit(path, fmat="e2m1"):
            pass


def test_nan_embeddings_are_refused_naming_the_store(tmp_path: Path) -> None:
    path = tmp_path / "v.vxf"
    E = np.ones((3, DIM), np.float32)
    E[1, 5] = np.inf
    with VoiceprintStore.edit(path, fmt="e4m3", scale="vector", dim=DIM, model=MODEL) as s:
        with pytest.raises(StoreError, match=f"{path}: embedding row 1 contains NaN or inf"):
            s.add_many(["a", "b", "c"], E)
        with pytest.raises(StoreError, match=f"{path}: embeddings for 'a' contains NaN or inf"):
            s.add("a", E)
        assert len(s) == 0

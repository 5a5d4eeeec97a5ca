"""Issue 7, class 3: a .vxf is never believed because its CRC matches. Stores edited and re-checksummed are
refused with one line, or give the unchanged, correct decision; never a traceback, never another decision."""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import voxfloat.api
from trust import enrolled, one_line_error, run, store, utterance, voices  # noqa: F401 (fixtures)
from voxfloat import Verifier, VoxfloatError
from voxfloat.store import VoiceprintStore, vxf

FATAL = 4


def split(raw: bytes) -> tuple[dict, int]:
    """The header dict and its padded length H."""
    header_len = struct.unpack_from("<I", raw, 12)[0]
    return json.loads(raw[32:32 + header_len]), header_len


def rewrite(path: Path, change=None, prefix: dict | None = None, text: bytes | None = None) -> bool:
    """Apply `change(header)` (or put raw header `text`), patch prefix fields, re-CRC; False if it cannot fit."""
    raw = bytearray(path.read_bytes())
    header, header_len = split(bytes(raw))
    if text is None:
        if change is not None:
            change(header)
        text = json.dumps(header, sort_keys=True).encode()  # NaN and Infinity come out as JSON extensions
    if len(text) > header_len:
        return False
    raw[32:32 + header_len] = text + b" " * (header_len - len(text))
    for offset, (fmt, value) in (prefix or {}).items():
        struct.pack_into(fmt, raw, offset, value)
    struct.pack_into("<I", raw, 24, zlib.crc32(bytes(raw[32:])))
    path.write_bytes(bytes(raw))
    return True


def set_key(key, value):
    return lambda h: h.__setitem__(key, value)


def drop_key(key):
    return lambda h: h.pop(key)


HOSTILE = [None, True, -1, 0, 1, 11.7, "11", [], {}, "x", 1e308, math.nan, math.inf, -math.inf, 2 ** 64, [1, 2]]


def mutations(header: dict) -> list[tuple[str, object]]:
    """Every header field set to every hostile value or dropped, plus field-specific edits and every section
    offset and length moved; each as (name, change)."""
    out: list[tuple[str, object]] = []
    for key in header:
        out += [(f"{key}={v!r}", set_key(key, v)) for v in HOSTILE]
        out.append((f"no {key}", drop_key(key)))
    fmt = header["format"]
    out += [(f"thresholds {fmt}={v!r}", set_key("thresholds", {fmt: v}))
            for v in (-5, -1.0001, 1.5, math.nan, math.inf, "0.5", None, [0.5], True)]
    out += [("thresholds as list", set_key("thresholds", [0.5])), ("thresholds as string", set_key("thresholds", "0.5")),
            ("threshold for unknown format", set_key("thresholds", {"e9m9": 0.5}))]
    out += [(f"format={f}", set_key("format", f)) for f in ("e4m3", "f32", "e2m3", ["e2m1"])]
    out += [(f"scale={s}", set_key("scale", s)) for s in ("none", "vector", ["block32"])]
    for key in ("dim", "count", "row_bytes"):
        out += [(f"{key}{d:+d}", (lambda k, d: lambda h: h.__setitem__(k, h[k] + d))(key, d)) for d in (-1, 1, 64)]
    out += [("model without fingerprint", lambda h: h["model"].pop("fingerprint")),
            ("model without arch", lambda h: h["model"].pop("arch")),
            ("model fingerprint as list", lambda h: h["model"].__setitem__("fingerprint", [h["model"]["fingerprint"]])),
            ("other model fingerprint", lambda h: h["model"].__setitem__("fingerprint", "0" * 64)),
            ("unknown key", set_key("owner", "mallory")),
            ("enrollment other", set_key("enrollment", "max")),
            ("created not a time", set_key("created", "yesterday"))]
    for name in vxf.SECTIONS:
        for slot in (0, 1):
            for d in (-64, -1, 1, 64, 10 ** 9):
                out.append((f"sections.{name}[{slot}]{d:+d}",
                            (lambda n, s, d: lambda h: h["sections"][n].__setitem__(s, h["sections"][n][s] + d))(name, slot, d)))
        out.append((f"sections.{name} as string", (lambda n: lambda h: h["sections"].__setitem__(n, "0"))(name)))
        out.append((f"no sections.{name}", (lambda n: lambda h: h["sections"].pop(n))(name)))
    out.append(("sections rows onto n_utterances",
                lambda h: h["sections"].__setitem__("rows", list(h["sections"]["n_utterances"]))))
    return out


@pytest.fixture(scope="module")
def shared_encoder(model: Path):
    return voxfloat.api.open_encoder(model, device="cpu")


@pytest.fixture()
def fast_verifier(monkeypatch, shared_encoder):
    """Verifier whose model is loaded once for the module (the decision logic is the real one)."""
    monkeypatch.setattr(voxfloat.api, "open_encoder", lambda *a, **k: shared_encoder)


def decisions(path: Path, voices: list[Path]) -> tuple:
    """What a user would be told: a genuine and an impostor verify, and an identify (scores and decisions; the
    threshold may legitimately change when a mutation leaves a valid store, e.g. thresholds {} falls back to
    the model's, but it must be a cosine)."""
    v = Verifier(path)
    claim = voices[0].name
    genuine, impostor = v.verify(utterance(voices[0], 5), claim), v.verify(utterance(voices[1], 5), claim)
    found = v.identify(utterance(voices[2], 5), top=3)
    assert all(-1 <= d.threshold <= 1 for d in (genuine, impostor))
    return (round(genuine.score, 5), genuine.accepted, round(impostor.score, 5), impostor.accepted,
            found.decision, [(s, round(c, 5)) for s, c in found.candidates])


def test_every_header_field_and_section_offset_mutated(store: Path, voices, fast_verifier, tmp_path: Path) -> None:
    baseline = decisions(store, voices)
    assert baseline[1] and not baseline[3] and baseline[4] == voices[2].name
    original = store.read_bytes()
    header, _ = split(original)
    tried = refused = 0
    for name, change in mutations(header):
        target = tmp_path / "m.vxf"
        target.write_bytes(original)
        if not rewrite(target, change):
            continue
        tried += 1
        try:
            got = decisions(target, voices)
        except VoxfloatError as e:
            refused += 1
            text = str(e)
            assert text.startswith(f"{target}: ") and "\n" not in text, (name, text)
            continue
        assert got == baseline, (name, got, baseline)
    assert tried > 250 and refused > 200, (tried, refused)


@pytest.mark.parametrize("field,value", [(12, 1), (12, -1), (12, 64), (28, 1), (8, 2)])
def test_prefix_fields_mutated(store: Path, voices, fast_verifier, field: int, value: int) -> None:
    raw = bytearray(store.read_bytes())
    if field == 12:
        struct.pack_into("<I", raw, 12, struct.unpack_from("<I", raw, 12)[0] + value)
    else:
        struct.pack_into("<I", raw, field, value)
    struct.pack_into("<I", raw, 24, zlib.crc32(bytes(raw[32:])))
    store.write_bytes(bytes(raw))
    with pytest.raises(VoxfloatError, match=f"^{store}: "):
        decisions(store, voices)


def issue_case(path: Path, case: str) -> None:
    """The reproductions of issue 7 section 3, each re-checksummed."""
    header, header_len = split(path.read_bytes())
    fmt = header["format"]
    if case == "threshold -5":
        rewrite(path, set_key("thresholds", {fmt: -5}))
    elif case == "threshold NaN":
        rewrite(path, set_key("thresholds", {fmt: math.nan}))
    elif case == "thresholds list":
        rewrite(path, set_key("thresholds", [0.5]))
    elif case == "thresholds string":
        rewrite(path, set_key("thresholds", "0.5"))
    elif case == "no thresholds":
        rewrite(path, drop_key("thresholds"))
    elif case == "no model":
        rewrite(path, drop_key("model"))
    elif case == "count Infinity":
        rewrite(path, set_key("count", math.inf))
    elif case == "count '11'":
        rewrite(path, set_key("count", str(header["count"])))
    elif case == "count 11.7":
        rewrite(path, set_key("count", header["count"] + 0.7))
    elif case == "format list":
        rewrite(path, set_key("format", [fmt]))
    elif case == "reserved":
        rewrite(path, prefix={28: ("<I", 7)})
    elif case == "rows moved one byte":
        rewrite(path, lambda h: h["sections"]["rows"].__setitem__(0, h["sections"]["rows"][0] + 1))
    elif case == "overlapping sections":
        rewrite(path, lambda h: h["sections"]["n_utterances"].__setitem__(0, h["sections"]["rows"][0]))
    elif case in ("scale byte 255", "ids bad UTF-8", "ids too few", "ids duplicate"):
        raw = bytearray(path.read_bytes())
        rows_off = header["sections"]["rows"][0]
        ids_off, ids_len = header["sections"]["speaker_ids"]
        blob = bytes(raw[ids_off:ids_off + ids_len])
        if case == "scale byte 255":
            raw[rows_off + header["row_bytes"] - 1] = 255  # the last block scale byte of row 0
        elif case == "ids bad UTF-8":
            raw[ids_off] = 0xFF
        elif case == "ids too few":  # two ids joined: one id fewer than rows, same length
            raw[ids_off:ids_off + ids_len] = blob.replace(b"\n", b"_", 1)
        else:  # the second id made equal to the first (the corpus names have equal lengths)
            first, second, *rest = blob.split(b"\n")
            assert len(first) == len(second)
            raw[ids_off:ids_off + ids_len] = b"\n".join([first, first, *rest])
        path.write_bytes(bytes(raw))
        rewrite(path)
    else:
        raise AssertionError(case)


CASES = ["threshold -5", "threshold NaN", "thresholds list", "thresholds string", "no thresholds", "no model",
         "count Infinity", "count '11'", "count 11.7", "format list", "reserved", "rows moved one byte",
         "overlapping sections", "scale byte 255", "ids bad UTF-8", "ids too few", "ids duplicate"]


@pytest.mark.parametrize("case", CASES)
def test_issue_reproductions_are_refused_by_the_cli(store: Path, model: Path, voices, case: str) -> None:
    issue_case(store, case)
    before = store.read_bytes()
    probe = utterance(voices[1], 5)  # an impostor for voices[0]: -5 would have accepted it
    for result in (run("verify", probe, "--model", model, "--store", store, "--speaker", voices[0].name, "--json"),
                   run("identify", probe, "--model", model, "--store", store, "--json"),
                   run("info", store)):
        line = one_line_error(result, FATAL)
        assert str(store) in line
        assert "NaN" not in result.stdout
    assert store.read_bytes() == before


def test_score_refuses_several_queries(store: Path) -> None:
    opened = VoiceprintStore.open(store)
    q = np.ones((2, opened.dim), np.float32)
    with pytest.raises(VoxfloatError, match="score takes one query embedding, got 2"):
        opened.score(q, opened.speakers[0])
    assert np.isfinite(opened.score(q[0], opened.speakers[0]))


@pytest.mark.parametrize("scale_byte", [254, 200])
def test_block_scales_that_overflow_are_refused_not_scored(store: Path, model: Path, voices, scale_byte: int) -> None:
    """Valid e8m0 bytes (not 255) so large that the values (254) or their squares (200) overflow float32: what
    cannot be scored is refused with one line, never ranked as NaN or scored a silent 0 (verify scores one row
    in float64, so 2^73 still gives a finite cosine there)."""
    raw = bytearray(store.read_bytes())
    header, _ = split(bytes(raw))
    row = header["sections"]["rows"][0] + header["row_bytes"]  # row 1, voices[1]
    scales = -(-header["dim"] // 32)
    raw[row + header["row_bytes"] - scales:row + header["row_bytes"]] = bytes([scale_byte]) * scales
    store.write_bytes(bytes(raw))
    rewrite(store)
    probe = utterance(voices[1], 5)
    verify = run("verify", probe, "--model", model, "--store", store, "--speaker", voices[1].name, "--json")
    if scale_byte == 254:
        assert f"voiceprint of '{voices[1].name}'" in one_line_error(verify, FATAL)
    else:
        assert verify.exit_code in (0, 1) and -1 <= json.loads(verify.stdout)[0]["score"] <= 1
    found = run("identify", probe, "--model", model, "--store", store, "--top", 3, "--json")
    assert f"voiceprint of '{voices[1].name}'" in one_line_error(found, FATAL) and "NaN" not in found.stdout

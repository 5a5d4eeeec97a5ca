"""Issue 7, class 7: text and numbers. CSV encodings, byte-order marks, unreadable audio, threshold ranges,
cosines a hair above 1, and speaker ids checked before any audio is embedded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trust import enrolled, one_line_error, run, store, utterance, voices  # noqa: F401 (fixtures)
from voxfloat.store import VoiceprintStore

USAGE, BAD_INPUT, FATAL = 2, 3, 4


def test_a_csv_that_is_not_utf8_is_one_line(model: Path, voices, tmp_path: Path) -> None:
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(f"speaker,path\nJos\xe9,{utterance(voices[0], 0)}\n".encode("latin-1"))
    out = tmp_path / "s.vxf"
    line = one_line_error(run("enroll", csv, "--model", model, "--out", out), FATAL)
    assert str(csv) in line and "UTF-8" in line and not out.exists()


def test_a_byte_order_mark_keeps_the_header_and_the_first_id(model: Path, voices, tmp_path: Path) -> None:
    csv = tmp_path / "excel.csv"
    rows = "".join(f"{d.name},{utterance(d, 0)}\r\n" for d in voices[:2])
    csv.write_bytes(b"\xef\xbb\xbf" + f"Speaker,Path\r\n{rows}".encode())
    out = tmp_path / "s.vxf"
    result = run("enroll", csv, "--model", model, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert VoiceprintStore.open(out).speakers == [d.name for d in voices[:2]]


def test_unreadable_audio_is_listed_not_a_usage_error(model: Path, store: Path, voices, tmp_path: Path) -> None:
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    locked = tmp_path / "locked.wav"
    locked.write_bytes(utterance(voices[0], 5).read_bytes())
    locked.chmod(0)
    probe = utterance(voices[0], 5)
    result = run("verify", folder, probe, locked, "--model", model, "--store", store, "--speaker", voices[0].name)
    assert result.exit_code == BAD_INPUT, result.output
    assert f"{folder}: not a file (a directory" in result.stderr and "ACCEPT" in result.stdout
    assert "Usage" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("value", ["-2", "-inf", "nan", "inf", "1.5", "-1.0001"])
def test_threshold_out_of_range_is_a_usage_error(model: Path, store: Path, voices, value: str) -> None:
    before = store.read_bytes()
    probe = utterance(voices[1], 5)  # an impostor: -2 would have accepted it
    for verb in (("verify", probe, "--speaker", voices[0].name), ("identify", probe)):
        result = run(*verb, "--model", model, "--store", store, "--threshold", value)
        assert result.exit_code == USAGE and "Traceback" not in result.output
        assert "cosine in [-1, 1]" in result.output
    assert store.read_bytes() == before
    from voxfloat import UsageError, Verifier
    with pytest.raises(UsageError, match=r"cosine in \[-1, 1\]"):
        Verifier(store, model).verify(probe, voices[0].name, threshold=float(value))


def test_calibrate_with_cosines_of_one(model: Path, store: Path, voices, corpus_dir: Path, tmp_path: Path) -> None:
    """Trials that compare a file with itself score 1.0000002 in float32: clipped to 1, not a failure."""
    files = [str(utterance(d, i).relative_to(corpus_dir)) for d in voices for i in (3, 4)]
    lines = [f"1 {f} {f}" for f in files] + [f"0 {a} {b}" for a in files for b in files if a.split("/")[1] != b.split("/")[1]]
    trials = tmp_path / "self.txt"
    trials.write_text("\n".join(lines) + "\n")
    result = run("calibrate", "--model", model, "--store", store, "--trials", trials, "--audio-root", corpus_dir,
                 "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert all(-1 <= r["eer_threshold"] <= 1 and -1 <= r["far_threshold"] <= 1 for r in report["formats"])
    assert VoiceprintStore.open(store).threshold == pytest.approx(report["threshold"])


@pytest.mark.parametrize("bad_id", ["tab\there", "x" * 257, "bell\x07", "line\u2028sep"])
def test_bad_ids_are_found_before_any_audio(model: Path, voices, tmp_path: Path, bad_id: str) -> None:
    csv = tmp_path / "ids.csv"
    good = "".join(f"{d.name},{utterance(d, 0)}\n" for d in voices)
    csv.write_text(good + f'"{bad_id}",{utterance(voices[0], 1)}\n', encoding="utf-8")
    out = tmp_path / "s.vxf"
    line = one_line_error(run("enroll", csv, "--model", model, "--out", out), FATAL)
    assert f"{csv}:{len(voices) + 1}:" in line and "speaker id" in line
    assert not out.exists()

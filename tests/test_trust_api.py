"""Issue 7, classes 1 and 2: the Verifier library API owns every decision rule, and one error hierarchy
reaches the command line, which maps it to exit codes (a bug is its own code, never 1)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

import voxfloat
from trust import enrolled, one_line_error, run, store, utterance, voices  # noqa: F401 (fixtures)
from voxfloat.api import CALLER, CLOSED_SET, Verifier
from voxfloat.errors import ListError, OutputError, UsageError, VoxfloatError
from voxfloat.store import VoiceprintStore

CRASH, FATAL = 70, 4


def test_readme_example(voices, tmp_path: Path) -> None:
    """The five lines of the README, with corpus files."""
    v = voxfloat.Verifier(tmp_path / "team.vxf")
    v.enroll(voices[0].name, [utterance(voices[0], 0), utterance(voices[0], 1)])
    v.enroll(voices[1].name, [utterance(voices[1], 0), utterance(voices[1], 1)])
    genuine, impostor = v.verify(utterance(voices[0], 5), voices[0].name), v.verify(utterance(voices[1], 5), voices[0].name)
    assert genuine.accepted and not impostor.accepted
    assert genuine.format == "e4m3" and -1 <= genuine.threshold <= 1 and genuine.threshold_source
    assert genuine.score >= genuine.threshold > impostor.score
    assert v.identify(utterance(voices[1], 6), top=2).decision == voices[1].name
    assert json.loads(json.dumps(genuine.as_dict()))["threshold_source"] == genuine.threshold_source


def test_open_set_threshold_sources_and_inputs(store: Path, model: Path, voices) -> None:
    v = Verifier(store, model)
    probe = utterance(voices[2], 5)
    strict = v.identify(probe, top=3, threshold=0.999)
    assert strict.decision is None and strict.threshold == 0.999 and strict.threshold_source == CALLER
    assert strict.candidates[0][0] == voices[2].name and len(strict.candidates) == 3
    stored = v.identify(probe)
    assert stored.decision == voices[2].name and stored.threshold == VoiceprintStore.open(store).threshold
    # bytes of an encoded file and a waveform give the same decision as the path
    wave, rate = sf.read(probe, dtype="float32")
    assert rate == v.encoder.card.sample_rate
    by_path, by_bytes, by_wave = (v.verify(x, voices[2].name) for x in (probe, probe.read_bytes(), wave))
    assert by_path.audio == str(probe) and by_bytes.audio is None and by_wave.audio is None
    assert by_bytes.score == pytest.approx(by_path.score, abs=1e-5) and by_wave.score == pytest.approx(by_path.score, abs=1e-5)
    batch = v.verify_many([probe, probe.parent / "missing.wav"], voices[2].name)
    assert len(batch.results) == 1 and "missing.wav: no such file" in batch.bad_files[0]
    result = run("identify", probe, "--model", model, "--store", store, "--threshold", 0.999)
    assert result.exit_code == 0 and result.stdout.startswith("UNKNOWN")


def test_closed_set_without_any_threshold(store: Path, model: Path, voices, monkeypatch) -> None:
    v = Verifier(store, model)
    monkeypatch.setattr(v, "_threshold", lambda s, o: (None, CLOSED_SET) if o is None else (o, CALLER))
    found = v.identify(utterance(voices[1], 5))
    assert found.decision == voices[1].name and found.threshold is None and found.threshold_source == CLOSED_SET


def test_a_store_replaced_on_disk_is_reopened(store: Path, model: Path, voices) -> None:
    reader, writer = Verifier(store, model), Verifier(store, model)
    assert voices[1].name in reader.speakers()
    assert writer.remove(voices[1].name) == [voices[1].name]
    assert voices[1].name not in reader.speakers()
    with pytest.raises(VoxfloatError, match=f"no speaker '{voices[1].name}' enrolled"):
        reader.verify(utterance(voices[1], 5), voices[1].name)


def test_an_enrollment_without_usable_audio_writes_nothing(store: Path, model: Path, tmp_path: Path) -> None:
    """Only bad files: no store is created, an existing one stays byte for byte; create=False needs the store."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 100)
    report = Verifier(tmp_path / "new.vxf", model).enroll("x", [bad])
    assert not report.enrolled and report.no_audio == ["x"] and "bad.wav: unreadable audio" in report.bad_files[0]
    assert not (tmp_path / "new.vxf").exists()
    before = store.read_bytes()
    assert Verifier(store, model).enroll("x", [bad]).speakers_in_store == len(VoiceprintStore.open(store))
    assert store.read_bytes() == before
    with pytest.raises(VoxfloatError, match="new.vxf: no such voiceprint store"):
        Verifier(tmp_path / "new.vxf", model).enroll("x", [bad], create=False)


def test_removing_unknown_ids_leaves_the_store_byte_for_byte(store: Path) -> None:
    before = store.read_bytes()
    result = run("remove", store, "nobody", "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["removed"] == []
    assert store.read_bytes() == before


def test_importing_voxfloat_is_light() -> None:
    code = ("import sys, voxfloat; voxfloat.Decision; voxfloat.VoxfloatError; "
            "print(sorted(m for m in ('onnxruntime', 'numba', 'torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_user_facing_error_is_a_voxfloat_error() -> None:
    from voxfloat.evaluate import TrialsError
    from voxfloat.runtime import AudioError, ModelError
    from voxfloat.store import StoreError

    for cls in (StoreError, AudioError, ModelError, TrialsError, ListError, OutputError, UsageError):
        assert issubclass(cls, VoxfloatError), cls
    assert str(StoreError("")) == "StoreError" and str(ModelError("a: b\nmore")) == "a: b"


def test_ctrl_c_is_not_read_as_a_rejection(store: Path, model: Path, voices, monkeypatch) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Verifier, "verify_many", interrupt)
    before = store.read_bytes()
    result = run("verify", utterance(voices[0], 5), "--model", model, "--store", store, "--speaker", voices[0].name)
    assert "interrupted" in one_line_error(result, 130) and store.read_bytes() == before


@pytest.mark.parametrize("boom", [ZeroDivisionError(), RuntimeError("unexpected\nsecond line"), MemoryError()])
def test_a_bug_is_one_line_asking_for_a_report_never_exit_1(store: Path, model: Path, voices, monkeypatch,
                                                              boom: BaseException) -> None:
    def explode(*args, **kwargs):
        raise boom

    monkeypatch.setattr(Verifier, "verify_many", explode)
    result = run("verify", utterance(voices[0], 5), "--model", model, "--store", store, "--speaker", voices[0].name)
    line = one_line_error(result, CRASH)
    assert "internal error" in line and type(boom).__name__ in line and "report" in line


def test_an_empty_checkpoint_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the exporter needs torch (extra 'export'); without it: one line, tested below")
    empty = tmp_path / "EMPTY.pt"
    empty.write_bytes(b"")
    for arch in ("campplus", "ecapa", "ge2e"):
        line = one_line_error(run("export", arch, "--checkpoint", empty, "--out", tmp_path / "m.onnx"), FATAL)
        assert str(empty) in line
    assert not (tmp_path / "m.onnx").exists()


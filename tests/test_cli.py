"""The `voxfloat` command end to end on the embedded GE2E model and corpus audio."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
import soundfile as sf
from click.testing import Result
from typer.testing import CliRunner

from voxfloat.cli import BAD_INPUT, FATAL, REJECTED, app
from voxfloat.runtime import read_card
from voxfloat.store import VoiceprintStore

runner = CliRunner()
SPEAKERS = 5


def run(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def speakers(corpus_speakers: list[Path]) -> list[Path]:
    return corpus_speakers[:SPEAKERS]


@pytest.fixture()
def enroll_dir(tmp_path: Path, speakers: list[Path]) -> Path:
    """Speaker folders with the first three utterances of each speaker, plus two bad files."""
    root = tmp_path / "enroll"
    for d in speakers:
        (root / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.flac"))[:3]:
            os.symlink(f, root / d.name / f.name)
    (root / speakers[0].name / "empty.wav").write_bytes(b"")
    (root / speakers[1].name / "notes.wav").write_text("not audio")
    return root


@pytest.mark.parity
def test_export_writes_the_card(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "ge2e.onnx"
    result = run("export", "ge2e", "--out", out, "--format", "e4m3")
    assert result.exit_code == 0, result.output
    card = read_card(out)
    assert card.arch == "ge2e" and card.embedding_dim == 256 and card.scale_format == "e4m3"
    assert card == read_card(model)  # the export verb makes the shipped model, card and fingerprint included


def test_enroll_skips_bad_files_and_verify_decides(model: Path, enroll_dir: Path, speakers, tmp_path: Path) -> None:
    store = tmp_path / "s.vxf"
    result = run("enroll", enroll_dir, "--model", model, "--format", "e2m1", "--scale", "vector", "--out", store, "--json")
    assert result.exit_code == BAD_INPUT, result.output
    report = json.loads(result.stdout)
    assert len(report["enrolled"]) == SPEAKERS and report["speakers_in_store"] == SPEAKERS
    assert len(report["bad_files"]) == 2 and all("empty.wav" in m or "notes.wav" in m for m in report["bad_files"])
    assert "Traceback" not in result.output
    assert (store.stat().st_mode & 0o777) == 0o600
    genuine = sorted(speakers[2].glob("*.flac"))[6]
    impostor = sorted(speakers[3].glob("*.flac"))[6]
    ok = run("verify", genuine, "--model", model, "--store", store, "--speaker", speakers[2].name, "--json")
    assert ok.exit_code == 0, ok.output
    [r] = json.loads(ok.stdout)
    assert r["accepted"] and r["format"] == "e2m1" and r["threshold"] == report["threshold"]["threshold"]
    assert r["threshold_source"].startswith("self-calibrated at enrollment: 5 speakers")  # voxfloat.selfcal
    no = run("verify", impostor, "--model", model, "--store", store, "--speaker", speakers[2].name, "--json")
    assert no.exit_code == REJECTED and not json.loads(no.stdout)[0]["accepted"]
    unknown = run("verify", genuine, "--model", model, "--store", store, "--speaker", "nobody")
    assert unknown.exit_code == FATAL and "nobody" in unknown.stderr


def test_identify_ranks_the_true_speaker_first(model: Path, enroll_dir: Path, speakers, tmp_path: Path) -> None:
    store = tmp_path / "s.vxf"
    run("enroll", enroll_dir, "--model", model, "--out", store)
    probes = [sorted(d.glob("*.flac"))[7] for d in speakers]
    result = run("identify", *probes, "--model", model, "--store", store, "--top", 3, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["candidates"][0]["speaker"] for r in out] == [d.name for d in speakers]
    assert all(len(r["candidates"]) == 3 for r in out)


def test_enroll_from_csv_adds_to_an_existing_store(model: Path, speakers, tmp_path: Path) -> None:
    store = tmp_path / "s.vxf"
    first = tmp_path / "a.csv"
    first.write_text("speaker,path\n" + "".join(f"{speakers[0].name},{f}\n" for f in sorted(speakers[0].glob("*.flac"))[:2]))
    assert run("enroll", first, "--model", model, "--out", store, "--format", "e2m3").exit_code == 0
    second = tmp_path / "b.csv"
    second.write_text("".join(f"{d.name},{f}\n" for d in speakers[:2] for f in sorted(d.glob("*.flac"))[:2]))
    result = run("enroll", second, "--model", model, "--out", store, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped_speakers"] == [speakers[0].name]
    opened = VoiceprintStore.open(store)
    assert opened.speakers == [speakers[0].name, speakers[1].name] and opened.format == "e2m3"
    wrong = run("enroll", second, "--model", model, "--out", store, "--format", "e5m2")
    assert wrong.exit_code == FATAL and "e5m2" in wrong.stderr


def test_a_store_is_refused_by_another_model(model: Path, enroll_dir: Path, speakers, tmp_path: Path) -> None:
    """The fingerprint comes from the graph: other weights carrying GE2E's metadata (its declared fingerprint
    included) are refused; the same graph with altered metadata is still the same model."""
    store = tmp_path / "s.vxf"
    run("enroll", enroll_dir, "--model", model, "--out", store)
    other, relabelled = tmp_path / "other.onnx", tmp_path / "relabelled.onnx"
    proto = onnx.load(model)
    for p in proto.metadata_props:
        if p.key == "voxfloat.fingerprint":
            p.value = json.dumps("0" * 64)
    onnx.save(proto, relabelled)
    proto = onnx.load(model)
    weight = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.01), weight.name))
    onnx.save(proto, other)
    probe = sorted(speakers[0].glob("*.flac"))[5]
    result = run("verify", probe, "--model", other, "--store", store, "--speaker", speakers[0].name)
    assert result.exit_code == FATAL
    assert str(store) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    same = run("verify", probe, "--model", relabelled, "--store", store, "--speaker", speakers[0].name)
    assert same.exit_code == 0, same.output


def test_corrupt_store_and_missing_model_are_one_line_errors(model: Path, enroll_dir: Path, speakers, tmp_path: Path) -> None:
    store = tmp_path / "s.vxf"
    run("enroll", enroll_dir, "--model", model, "--out", store)
    data = store.read_bytes()
    store.write_bytes(data[: len(data) - 17])
    probe = sorted(speakers[0].glob("*.flac"))[5]
    for result in (run("verify", probe, "--model", model, "--store", store, "--speaker", speakers[0].name),
                   run("info", store),
                   run("verify", probe, "--model", tmp_path / "missing.onnx", "--store", store, "--speaker", "x")):
        assert result.exit_code == FATAL
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_embed_matches_the_runtime_and_lists_rows(model: Path, speakers, tmp_path: Path) -> None:
    files = sorted(speakers[0].glob("*.flac"))[:3]
    bad = tmp_path / "short.wav"
    sf.write(bad, np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    out = tmp_path / "e.npy"
    result = run("embed", *files, bad, "--model", model, "--out", out)
    assert result.exit_code == BAD_INPUT and "short.wav" in result.stderr
    e = np.load(out)
    assert e.shape == (3, 256) and np.all(np.isfinite(e))
    assert out.with_suffix(".paths.txt").read_text().split() == [str(f) for f in files]
    assert np.allclose(np.abs(e).max(1), 448.0, rtol=1e-5)  # the e4m3 scaling node: max|E| = F_max
    assert (out.stat().st_mode & 0o777) == 0o600


def test_remove_deletes_voiceprints(model: Path, enroll_dir: Path, speakers, tmp_path: Path) -> None:
    store = tmp_path / "s.vxf"
    run("enroll", enroll_dir, "--model", model, "--out", store)
    result = run("remove", store, speakers[1].name, "nobody", "--json")
    assert result.exit_code == BAD_INPUT and "nobody" in result.stderr
    assert json.loads(result.stdout)["removed"] == [speakers[1].name]
    left = VoiceprintStore.open(store)
    assert speakers[1].name not in left and len(left) == SPEAKERS - 1
    assert run("remove", tmp_path / "none.vxf", "x").exit_code == FATAL


def test_eval_calibrate_and_info(model: Path, corpus_dir: Path, speakers, enroll_dir: Path, tmp_path: Path) -> None:
    names = {d.name for d in speakers}
    lines = [l for l in (corpus_dir / "trials_clean.txt").read_text().splitlines()
             if l.split()[1].split("/")[1] in names and l.split()[2].split("/")[1] in names]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    report, png = tmp_path / "r.json", tmp_path / "det.png"
    result = run("eval", "--model", model, "--trials", trials, "--audio-root", corpus_dir,
                 "--formats", "f32,e4m3,e2m1", "--scale", "none,vector", "--plot", png, "--json", report)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["results"]
    assert [(r["format"], r["scale"]) for r in rows] == [(f, s) for s in ("none", "vector") for f in ("f32", "e4m3", "e2m1")]
    assert all(0 <= r["eer"] <= 50 and r["far"] is not None for r in rows)
    assert "EER %" in result.stdout and png.stat().st_size > 10_000
    store = tmp_path / "s.vxf"
    run("enroll", enroll_dir, "--model", model, "--format", "e3m2", "--out", store)
    cal = run("calibrate", "--model", model, "--store", store, "--trials", trials, "--audio-root", corpus_dir,
              "--use", "far", "--target-far", "0.05", "--json")
    assert cal.exit_code == 0, cal.output
    e3m2 = next(r for r in json.loads(cal.stdout)["formats"] if r["format"] == "e3m2")
    opened = VoiceprintStore.open(store)
    assert opened.threshold == pytest.approx(e3m2["far_threshold"])
    info = json.loads(run("info", store, "--json").stdout)
    assert info["format"] == "e3m2" and info["count"] == SPEAKERS
    assert json.loads(run("info", model, "--json").stdout)["arch"] == "ge2e"


def test_bad_trial_list_and_audio_root(model: Path, tmp_path: Path) -> None:
    trials = tmp_path / "t.txt"
    trials.write_text("1 a.wav b.wav\nyes c.wav\n")
    result = run("eval", "--model", model, "--trials", trials, "--audio-root", tmp_path)
    assert result.exit_code == FATAL and f"{trials}:2" in result.stderr


def test_without_a_threshold_verify_refuses_and_identify_is_closed_set(model: Path, enroll_dir: Path, speakers,
                                                                        tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(model)
    for p in proto.metadata_props:
        if p.key == "voxfloat.threshold":
            p.value = json.dumps(None)
    onnx.save(proto, bare)
    store = tmp_path / "s.vxf"
    two = tmp_path / "two.csv"  # two speakers: too few to self-calibrate (voxfloat.selfcal.MIN_SPEAKERS)
    two.write_text("".join(f"{d.name},{f}\n" for d in speakers[2:4] for f in sorted(d.glob("*.flac"))[:3]))
    run("enroll", two, "--model", bare, "--out", store)
    assert VoiceprintStore.open(store).threshold is None
    probe = sorted(speakers[2].glob("*.flac"))[7]
    refused = run("verify", probe, "--model", bare, "--store", store, "--speaker", speakers[2].name)
    assert refused.exit_code == FATAL and "calibrate" in refused.stderr
    found = run("identify", probe, "--model", bare, "--store", store, "--json")
    assert found.exit_code == 0 and json.loads(found.stdout)[0]["speaker"] == speakers[2].name

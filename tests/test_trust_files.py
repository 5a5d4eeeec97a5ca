"""Issue 7, class 5: only regular files are read (a FIFO never hangs a verb, not even under the store lock),
outputs never write through a symbolic link, a store's link is followed consistently, temporary files of a
killed writer are cleaned up and never open as stores, and every output goes through one private atomic writer."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trust import enrolled, one_line_error, run, run_process, store, utterance, voices  # noqa: F401
from voxfloat.errors import OutputError
from voxfloat.files import write_private
from voxfloat.store import VoiceprintStore

FATAL, BAD_INPUT = 4, 3


def test_a_fifo_is_refused_at_once_everywhere(model: Path, store: Path, voices, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.vxf"
    os.mkfifo(fifo)
    probe = utterance(voices[0], 5)
    csv = tmp_path / "one.csv"
    csv.write_text(f"{voices[0].name},{probe}\n")
    csv_fifo = tmp_path / "list.csv"
    os.mkfifo(csv_fifo)
    for args in (("verify", probe, "--model", model, "--store", fifo, "--speaker", "x"),
                 ("identify", probe, "--model", model, "--store", fifo),
                 ("remove", fifo, "x"),
                 ("info", fifo),
                 ("enroll", csv, "--model", model, "--out", fifo),
                 ("enroll", csv_fifo, "--model", model, "--out", tmp_path / "new.vxf"),
                 ("verify", probe, "--model", fifo, "--store", store, "--speaker", voices[0].name),
                 ("embed", probe, "--model", model, "--out", fifo)):
        line = one_line_error(run_process(*args, timeout=60), FATAL)  # a hang would be a TimeoutExpired
        assert "FIFO" in line, line
    # a FIFO among the audio files is one listed bad file; the others are decided
    audio_fifo = tmp_path / "pipe.wav"
    os.mkfifo(audio_fifo)
    result = run_process("verify", probe, audio_fifo, "--model", model, "--store", store, "--speaker", voices[0].name,
                         timeout=60)
    assert result.returncode == BAD_INPUT and "pipe.wav: not a file (a FIFO" in result.stderr
    assert "ACCEPT" in result.stdout


def test_remove_does_not_hang_on_a_fifo_lock_or_store(store: Path, voices, tmp_path: Path) -> None:
    lock = store.with_name(store.name + ".lock")
    os.mkfifo(lock)
    before = store.read_bytes()
    line = one_line_error(run_process("remove", store, voices[0].name, timeout=60), FATAL)
    assert "lock" in line and "FIFO" in line
    assert store.read_bytes() == before


def test_embed_out_symlink_is_replaced_not_written_through(model: Path, voices, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    link, rows_link = tmp_path / "e.npy", tmp_path / "e.paths.txt"
    link.symlink_to(victim)
    rows_link.symlink_to(victim)
    result = run("embed", utterance(voices[0], 5), "--model", model, "--out", link)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o644
    assert not link.is_symlink() and not rows_link.is_symlink()
    assert np.load(link).shape == (1, 256)
    assert (link.stat().st_mode & 0o777) == 0o600 and (rows_link.stat().st_mode & 0o777) == 0o600


def test_enroll_follows_a_store_link_consistently(model: Path, store: Path, voices, tmp_path: Path) -> None:
    link = tmp_path / "link.vxf"
    link.symlink_to(store)
    csv = tmp_path / "new.csv"
    csv.write_text(f"newcomer,{utterance(voices[0], 7)}\n")
    result = run("enroll", csv, "--model", model, "--out", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == store.resolve()
    assert "newcomer" in VoiceprintStore.open(store) and (store.stat().st_mode & 0o777) == 0o600
    assert store.with_name(store.name + ".lock").exists() and not (tmp_path / "link.vxf.lock").exists()
    dangling = tmp_path / "dangling.vxf"
    dangling.symlink_to(tmp_path / "nowhere" / "x.vxf")
    line = one_line_error(run("enroll", csv, "--model", model, "--out", dangling), FATAL)
    assert "does not exist" in line and not (tmp_path / "nowhere").exists()


def test_stale_temporary_files_are_removed_and_never_open_as_stores(model: Path, store: Path, voices,
                                                                     tmp_path: Path) -> None:
    dead_pid = 2 ** 22 + 12345  # above pid_max's usual range: no such process
    stale = store.with_name(f".{store.name}.{dead_pid}.0123abcd.tmp")
    shutil.copyfile(store, stale)  # a complete copy, as a kill -9 just before the rename leaves it
    line = one_line_error(run("info", stale), FATAL)
    assert "temporary file" in line
    one_line_error(run("verify", utterance(voices[0], 5), "--model", model, "--store", stale,
                       "--speaker", voices[0].name), FATAL)
    assert run("remove", store, voices[1].name).exit_code == 0
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_one_private_atomic_writer(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def full_disk(f) -> None:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=f"^{target}: cannot write: No space left on device$"):
        write_private(target, full_disk)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    write_private(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o600
    os.mkdir(tmp_path / "folder")
    with pytest.raises(OutputError, match="a directory"):
        write_private(tmp_path / "folder", lambda f: f.write(b"x"))


def test_eval_reports_and_plots_are_private(model: Path, corpus_dir: Path, voices, tmp_path: Path) -> None:
    names = {d.name for d in voices}
    lines = [l for l in (corpus_dir / "trials_clean.txt").read_text().splitlines()
             if l.split()[1].split("/")[1] in names and l.split()[2].split("/")[1] in names][:60]
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    report, png = tmp_path / "r.json", tmp_path / "det.png"
    result = run("eval", "--model", model, "--trials", trials, "--audio-root", corpus_dir, "--formats", "f32,e2m1",
                 "--json", report, "--plot", png)
    assert result.exit_code == 0, result.output
    assert (report.stat().st_mode & 0o777) == 0o600 and (png.stat().st_mode & 0o777) == 0o600

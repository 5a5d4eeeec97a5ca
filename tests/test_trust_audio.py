"""Issue 7, class 6: bounded work. Rate and duration come from the header before decoding; a file outside the
bounds is one listed line and the good files beside it are still processed."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trust import enrolled, run, store, utterance, voices  # noqa: F401 (fixtures)
from voxfloat.runtime.audio import AudioError, load_audio
from voxfloat.runtime.limits import DEFAULT_MAX_SECONDS

BAD_INPUT = 3


def wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def declare_rate(path: Path, rate: int) -> Path:
    """Patch a PCM WAV header's sample rate (and byte rate) without touching its samples."""
    raw = bytearray(path.read_bytes())
    fmt = raw.index(b"fmt ")
    channels, bits = struct.unpack_from("<H", raw, fmt + 10)[0], struct.unpack_from("<H", raw, fmt + 22)[0]
    struct.pack_into("<II", raw, fmt + 12, rate, rate * channels * bits // 8)
    path.write_bytes(bytes(raw))
    return path


def test_a_wav_declaring_1_hz_is_refused_before_decoding(model: Path, voices, tmp_path: Path) -> None:
    bad = declare_rate(wav(tmp_path / "one_hz.wav", 2.3), 1)  # 36,800 samples: 10 h at 1 Hz
    good = utterance(voices[0], 5)
    out = tmp_path / "e.npy"
    result = run("embed", good, bad, "--model", model, "--out", out)
    assert result.exit_code == BAD_INPUT and "Traceback" not in result.output
    assert f"{bad}: sample rate 1 Hz is outside" in result.stderr
    assert np.load(out).shape == (1, 256)


def test_max_seconds_refuses_long_files_one_line_each(model: Path, store: Path, voices, tmp_path: Path) -> None:
    probe = utterance(voices[0], 5)
    limit = sf.info(probe).duration + 0.5
    long1, long2 = wav(tmp_path / "long1.wav", limit + 0.5), wav(tmp_path / "long2.flac", limit + 0.1, rate=44100)
    out = tmp_path / "e.npy"
    result = run("embed", long1, probe, long2, "--model", model, "--out", out, "--max-seconds", limit,
                 "--no-vad")  # with VAD the cap bounds the speech, and recordings may be longer (README)
    assert result.exit_code == BAD_INPUT and "Traceback" not in result.output
    refused = [l for l in result.stderr.splitlines() if "too long" in l]
    assert len(refused) == 2 and "long1.wav" in refused[0] and "long2.flac" in refused[1]
    assert "(--max-seconds of speech" in refused[0]
    assert np.load(out).shape == (1, 256)
    for bad in ("0", "-1", "nan", "inf"):
        assert run("verify", probe, "--model", model, "--store", store, "--speaker", "x",
                   "--max-seconds", bad).exit_code == 2


def test_limits_apply_to_bytes_and_waveforms(tmp_path: Path) -> None:
    data = wav(tmp_path / "a.wav", 3.0).read_bytes()
    assert load_audio(data, 16000, 0.5, 5.0).shape == (48000,)
    with pytest.raises(AudioError, match="too long: 3.0 s, over the 2 s limit"):
        load_audio(data, 16000, 0.5, 2.0)
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        load_audio(declare_rate(tmp_path / "a.wav", 1).read_bytes(), 16000, 0.5, 5.0)
    assert DEFAULT_MAX_SECONDS == 300.0  # the documented default


def test_many_channels_at_a_high_rate_are_refused_by_the_decoding_budget(tmp_path: Path) -> None:
    """16 channels at 48 kHz for 1 s is under a 2 s cap but 8 times the samples of 48 kHz stereo: refused from
    the header, so a hostile header cannot make the decoder allocate more than the cap's worth of stereo."""
    path = tmp_path / "wide.wav"
    sf.write(path, np.full((48000, 16), 0.1, np.float32), 48000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"too much audio data: 16 channels at 48000 Hz for 1.0 s"):
        load_audio(path, 16000, 0.5, 2.0)
    assert load_audio(path, 16000, 0.5, 10.0).shape == (16000,)

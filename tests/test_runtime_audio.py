"""load_audio: every common type, rate and layout to 16 kHz mono float32; one clear line for each bad file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxfloat.runtime import AudioError, load_audio
from voxfloat.runtime import audio as audio_module

SR = 16000
F0, F1 = 440.0, 1250.0


def tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (0.4 * np.sin(2 * np.pi * F0 * t) + 0.2 * np.sin(2 * np.pi * F1 * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, rate: int, fmt: str, subtype: str) -> Path:
    sf.write(path, data, rate, format=fmt, subtype=subtype)
    return path


def stereo(mono: np.ndarray) -> np.ndarray:
    """Left at full level, right at half: the mono mix is 0.75 of the tone."""
    return np.stack([mono, 0.5 * mono], axis=1)


LOSSLESS = [
    ("WAV", "PCM_16", 8000, 1), ("WAV", "PCM_16", 16000, 1), ("WAV", "FLOAT", 22050, 2),
    ("WAV", "PCM_24", 44100, 1), ("WAV", "PCM_16", 48000, 2), ("FLAC", "PCM_16", 44100, 2),
    ("FLAC", "PCM_24", 8000, 1), ("FLAC", "PCM_16", 48000, 1), ("AIFF", "PCM_16", 22050, 2),
]
LOSSY = [("OGG", "VORBIS", 22050, 2), ("OGG", "VORBIS", 48000, 1),
         ("MP3", "MPEG_LAYER_III", 44100, 2), ("MP3", "MPEG_LAYER_III", 22050, 1)]


@pytest.mark.parametrize("fmt,subtype,rate,channels", LOSSLESS)
def test_lossless_types_and_rates_match_the_tone(tmp_path: Path, fmt: str, subtype: str, rate: int, channels: int):
    mono = tone(rate, 1.2)
    data = stereo(mono) if channels == 2 else mono
    path = write(tmp_path / f"a.{fmt.lower()}", data, rate, fmt, subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - int(1.2 * SR)) <= 1
    expected = tone(SR, 1.2)[: wave.size] * (0.75 if channels == 2 else 1.0)
    inner = slice(300, wave.size - 300)  # resampler edges
    assert np.max(np.abs(wave[inner] - expected[inner])) < 2e-3


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spectrum) * SR / wave.size)


@pytest.mark.parametrize("fmt,subtype,rate,channels", LOSSY)
def test_lossy_types_keep_pitch_level_and_length(tmp_path: Path, fmt: str, subtype: str, rate: int, channels: int):
    mono = tone(rate, 1.5)
    data = stereo(mono) if channels == 2 else mono
    path = write(tmp_path / f"a.{fmt.lower()}", data, rate, fmt, subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size / SR - 1.5) < 0.1  # codec delay and padding
    assert abs(dominant_hz(wave) - F0) < 3
    want_rms = np.sqrt(0.4**2 / 2 + 0.2**2 / 2) * (0.75 if channels == 2 else 1.0)
    rms = np.sqrt(np.mean(wave[2000:-2000].astype(np.float64) ** 2))
    assert abs(rms / want_rms - 1) < 0.1


def test_other_target_rate(tmp_path: Path):
    path = write(tmp_path / "a.wav", tone(44100, 1.0), 44100, "WAV", "PCM_16")
    assert abs(load_audio(path, sample_rate=8000).size - 8000) <= 1


def test_fallback_decoder_is_used_when_soundfile_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path / "a.flac", stereo(tone(22050, 1.0)), 22050, "FLAC", "PCM_16")
    direct = load_audio(path)

    def refuse(*args, **kwargs):
        raise RuntimeError("refused by the test")

    monkeypatch.setattr(audio_module.sf, "read", refuse)
    fallback = load_audio(path)
    assert fallback.shape == direct.shape
    assert np.max(np.abs(fallback - direct)) < 1e-4


def expect_error(path: Path, words: str, **kwargs) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path):
    expect_error(tmp_path / "nope.wav", "no such file")


def test_directory(tmp_path: Path):
    expect_error(tmp_path, "not a file")


def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_error(path, "empty file")


def test_garbage_is_unreadable(tmp_path: Path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    message = expect_error(path, "unreadable audio")
    assert "soundfile" in message and "audioread" in message


def test_header_without_samples(tmp_path: Path):
    path = write(tmp_path / "none.wav", np.zeros(0, np.float32), 16000, "WAV", "PCM_16")
    expect_error(path, "no audio samples")


@pytest.mark.parametrize("rate", [16000, 44100])
def test_too_short_names_duration_and_minimum(tmp_path: Path, rate: int):
    path = write(tmp_path / "short.wav", tone(rate, 0.31), rate, "WAV", "PCM_16")
    expect_error(path, "too short: 0.31 s, under the 0.50 s minimum")
    assert load_audio(path, min_seconds=0.3).size == pytest.approx(0.31 * SR, abs=1)


def test_all_zero_is_silent(tmp_path: Path):
    path = write(tmp_path / "zero.wav", np.zeros(16000, np.float32), 16000, "WAV", "PCM_16")
    expect_error(path, "silent")


def test_tiny_rms_is_silent_but_quiet_speech_level_is_not(tmp_path: Path):
    noise = np.random.default_rng(1).standard_normal(16000).astype(np.float32)
    expect_error(write(tmp_path / "hiss.wav", 1e-6 * noise, 16000, "WAV", "FLOAT"), "silent")
    quiet = load_audio(write(tmp_path / "quiet.wav", 1e-3 * noise, 16000, "WAV", "FLOAT"))
    assert quiet.size == 16000


def test_channels_that_cancel_are_silent(tmp_path: Path):
    mono = tone(16000, 1.0)
    path = write(tmp_path / "cancel.wav", np.stack([mono, -mono], axis=1), 16000, "WAV", "FLOAT")
    expect_error(path, "silent")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path: Path, bad: float):
    wave = tone(16000, 1.0)
    wave[5000] = bad
    expect_error(write(tmp_path / "bad.wav", wave, 16000, "WAV", "FLOAT"), "non-finite")


class FakeBackend:
    """Stands in for audioread's ffmpeg backend (not installed here): a 'file' of int16 PCM at 22.05 kHz stereo."""

    seen: list[tuple[str, bytes, int]] = []

    def __init__(self, path: str) -> None:
        data = Path(path).read_bytes()
        FakeBackend.seen.append((path, data, Path(path).stat().st_mode & 0o777))
        if not data.startswith(b"FAKE"):
            raise EOFError("not a fake file")
        self.pcm = data[4:]
        self.samplerate, self.channels = 22050, 2

    def __enter__(self) -> "FakeBackend":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __iter__(self):
        yield from (self.pcm[i:i + 4096] for i in range(0, len(self.pcm), 4096))


def test_bytes_soundfile_cannot_read_go_to_audioread_by_a_private_file(monkeypatch) -> None:
    """Encoded bytes (a service's request body) reach the decoders the CLI uses for a file; nothing stays on disk."""
    audioread = pytest.importorskip("audioread")  # the decode extra; dev installs it
    monkeypatch.setattr(audioread, "audio_open", FakeBackend)
    FakeBackend.seen.clear()
    pcm = (stereo(tone(22050, 1.0)) * 32767).astype("<i2")
    wave = load_audio(b"FAKE" + pcm.tobytes())
    (path, data, mode), = FakeBackend.seen
    assert data == b"FAKE" + pcm.tobytes() and mode == 0o600 and not Path(path).exists()
    assert abs(wave.size - SR) <= 1 and abs(dominant_hz(wave) - F0) < 5
    with pytest.raises(AudioError, match=r"<audio bytes>: unreadable audio \(soundfile: .*; audioread: EOFError: not a fake file\)"):
        load_audio(b"JUNK" * 100)
    assert len(FakeBackend.seen) == 2 and not Path(FakeBackend.seen[1][0]).exists()

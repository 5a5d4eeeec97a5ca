"""Audio files to 16 kHz mono float32, refusing bad input with one line that names the file.

soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) decodes; anything it cannot open
(M4A/AAC, WMA, WebM, ...) goes through audioread (extra `decode`, which uses ffmpeg or GStreamer when
installed), encoded bytes too (by way of a private temporary file). soxr resamples.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from voxfloat.errors import VoxfloatError
from voxfloat.files import open_regular
from voxfloat.runtime.limits import (DEFAULT_MAX_SECONDS, MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE,
                                     SAMPLES_PER_SECOND)

SILENCE_RMS = 1e-5  # -100 dBFS, a third of one int16 step: below this there is no voice to embed


class AudioError(VoxfloatError):
    """A file that cannot be used as speech; the message is "<path>: <problem>" on one line."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _check_rate(name: str, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")


def _check_length(name: str, frames: int, rate: int, max_seconds: float) -> None:
    if frames > max_seconds * rate:
        raise AudioError(f"{name}: too long: {frames / rate:.1f} s, over the {max_seconds:g} s limit on a recording "
                         "(--max-seconds of speech; a recording may last 4 times that with speech trimming)")


def _frame_budget(name: str, rate: int, channels: int, max_seconds: float) -> int:
    """Most frames decoded for a file: its duration cap, and a memory budget (SAMPLES_PER_SECOND samples a
    second of the cap, all channels together) that a header claiming a high rate and many channels cannot pass."""
    _check_rate(name, rate)
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{name}: {channels} channels; at most {MAX_CHANNELS} are accepted")
    budget = int(max_seconds * SAMPLES_PER_SECOND) // channels
    return min(int(max_seconds * rate), budget)


def _check_frames(name: str, frames: int, rate: int, channels: int, max_seconds: float) -> None:
    _check_length(name, frames, rate, max_seconds)
    if frames * channels > max_seconds * SAMPLES_PER_SECOND:
        raise AudioError(f"{name}: too much audio data: {channels} channels at {rate} Hz for {frames / rate:.1f} s "
                         f"(decoding stops at {max_seconds:g} s of 48 kHz stereo; --max-seconds)")


def _read_soundfile(source: BinaryIO, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode with libsndfile after checking rate, channels and duration from the header (nothing decoded before)."""
    with sf.SoundFile(source) as snd:
        rate, frames, channels = int(snd.samplerate), int(snd.frames), int(snd.channels)
        limit = _frame_budget(name, rate, channels, max_seconds)
        if 0 <= frames < 2 ** 62:
            _check_frames(name, frames, rate, channels, max_seconds)
        data = snd.read(frames=limit + 1, dtype="float32", always_2d=True)  # a header that lies stops here too
    _check_frames(name, data.shape[0], rate, channels, max_seconds)
    return data, rate


def _decode(source: Path | bytes, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Return (samples, channels) float32 and the file's rate; AudioError if no decoder can read it."""
    try:
        if isinstance(source, bytes):
            return _read_soundfile(io.BytesIO(source), name, max_seconds)
        with open_regular(source, AudioError, "file") as f:
            return _read_soundfile(f, name, max_seconds)
    except (OSError, RuntimeError, TypeError, ValueError, EOFError) as e:  # LibsndfileError is a RuntimeError
        first = re.sub(r"<_io\.[^>]*>", "the data", _first_line(e))  # libsndfile names the stream object
    if not isinstance(source, bytes):
        return _read_audioread(source, name, max_seconds, first)
    _audioread(name, first)  # before anything is written
    # audioread's backends read paths only: the bytes go to a private (0600) temporary file, removed at once
    with tempfile.NamedTemporaryFile(prefix="voxfloat-audio-") as f:
        f.write(source)
        f.flush()
        return _read_audioread(Path(f.name), name, max_seconds, first)


def _audioread(name: str, first: str) -> ModuleType:
    """The audioread module, or AudioError naming the file, soundfile's complaint and the extra to install."""
    try:
        import audioread
    except ImportError:
        raise AudioError(f"{name}: unreadable audio (soundfile: {first}); other types such as M4A/AAC need ffmpeg "
                         "and pip install 'voxfloat[decode]'") from None
    return audioread


def _read_audioread(path: Path, name: str, max_seconds: float, first: str) -> tuple[np.ndarray, int]:
    """Decode with audioread (ffmpeg or GStreamer), at most max_seconds + 1 s; `first` is soundfile's complaint."""
    audioread = _audioread(name, first)
    chunks: list[np.ndarray] = []
    try:
        with audioread.audio_open(str(path)) as f:
            rate, channels = int(f.samplerate), max(1, int(f.channels))
            limit = (_frame_budget(name, rate, channels, max_seconds) + 1) * channels  # bounds the decoding itself
            for block in f:
                chunks.append(np.frombuffer(block, "<i2"))
                if sum(map(len, chunks)) > limit:
                    break
    except AudioError:
        raise
    except Exception as e:  # audioread raises its own NoBackendError, DecodeError, EOFError, ...
        raise AudioError(f"{name}: unreadable audio (soundfile: {first}; audioread: {_first_line(e)})") from None
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, "<i2")
    data = (pcm[:len(pcm) - len(pcm) % channels].astype(np.float32) / 32768.0).reshape(-1, channels)
    _check_frames(name, data.shape[0], rate, channels, max_seconds)
    return data, rate


def load_audio(source: str | os.PathLike | bytes, sample_rate: int = 16000, min_seconds: float = 0.5,
               max_seconds: float = DEFAULT_MAX_SECONDS, name: str | None = None) -> np.ndarray:
    """Decode a file (or an encoded file's bytes), mix channels to mono and resample to `sample_rate`; 1-D float32.

    Only regular files are opened; rate and duration are checked from the header before decoding.
    Raises AudioError for a missing, empty, unreadable, too long, non-finite, too short or silent input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source, label = bytes(source), name or "<audio bytes>"
        if not source:
            raise AudioError(f"{label}: empty (0 bytes)")
    else:
        source = Path(source)
        label = name or str(source)
        with open_regular(source, AudioError, "file") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise AudioError(f"{label}: empty file (0 bytes)")
    data, rate = _decode(source, label, max_seconds)
    if data.size == 0:
        raise AudioError(f"{label}: no audio samples")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return _checked(wave, rate, sample_rate, min_seconds, label, stereo_finite=np.isfinite(data).all())


def check_waveform(wave: np.ndarray, sample_rate: int, min_seconds: float = 0.5,
                   max_seconds: float = DEFAULT_MAX_SECONDS, name: str = "<waveform>") -> np.ndarray:
    """A caller's waveform (1-D, float, at `sample_rate`) checked like a decoded file; 1-D float32."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.size == 0 or wave.dtype.kind != "f":
        raise AudioError(f"{name}: expected a non-empty 1-D float waveform, got {wave.dtype} of shape {wave.shape}")
    _check_length(name, wave.size, sample_rate, max_seconds)
    return _checked(wave.astype(np.float32), sample_rate, sample_rate, min_seconds, name)


def _checked(wave: np.ndarray, rate: int, sample_rate: int, min_seconds: float, label: str,
             stereo_finite: bool = True) -> np.ndarray:
    """Refuse non-finite, too short or silent audio; resample to `sample_rate`."""
    if not stereo_finite or not np.isfinite(wave).all():
        raise AudioError(f"{label}: non-finite samples (NaN or inf)")
    seconds = wave.shape[0] / rate
    if seconds < min_seconds:
        raise AudioError(f"{label}: too short: {seconds:.2f} s, under the {min_seconds:.2f} s minimum")
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{label}: silent (RMS {rms:.1e}, under {SILENCE_RMS:.0e})")
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")  # what librosa's soxr_hq calls
    return np.ascontiguousarray(wave, dtype=np.float32)

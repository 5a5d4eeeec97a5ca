"""Audio files to 16 kHz mono float32, refusing bad input with one line that names the file.

soundfile (libsndfile: WAV, FLAC, OGG, MP3, AIFF, ...) is the fast path; anything it cannot open
goes through librosa, which tries audioread (ffmpeg/GStreamer when installed). soxr resamples.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr  # librosa's own resampler, called directly: importing librosa's core costs seconds

SILENCE_RMS = 1e-5  # -100 dBFS, a third of one int16 step: below this there is no voice to embed


class AudioError(Exception):
    """A file that cannot be used as speech; the message is "<path>: <problem>" on one line."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Return (samples, channels) float32 and the file's rate; AudioError if no decoder can read it."""
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        return data, rate
    except (OSError, RuntimeError, TypeError, ValueError) as e:  # LibsndfileError is a RuntimeError
        first = _first_line(e)
    import librosa  # only for types libsndfile cannot read: its core takes seconds to import

    try:
        with warnings.catch_warnings():  # librosa warns that it is falling back to audioread
            warnings.simplefilter("ignore")
            data, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as e:  # audioread raises its own NoBackendError, DecodeError, EOFError, ...
        raise AudioError(f"{path}: unreadable audio (soundfile: {first}; librosa: {_first_line(e)})") from None
    return np.atleast_2d(data).T, int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000, min_seconds: float = 0.5) -> np.ndarray:
    """Decode `path`, mix channels to mono and resample to `sample_rate`; 1-D float32.

    Raises AudioError for a missing, empty, unreadable, non-finite, too short or silent file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    data, rate = _decode(path)
    if data.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: non-finite samples (NaN or inf)")
    seconds = data.shape[0] / rate
    if seconds < min_seconds:
        raise AudioError(f"{path}: too short: {seconds:.2f} s, under the {min_seconds:.2f} s minimum")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{path}: silent (RMS {rms:.1e}, under {SILENCE_RMS:.0e})")
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")  # what librosa's soxr_hq calls
    return np.ascontiguousarray(wave, dtype=np.float32)

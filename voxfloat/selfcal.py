"""Self-calibration at enrollment: a store's threshold from the enrollment's own utterances (numpy only).

Leave-one-out trials: each utterance of a speaker with at least two is scored against that speaker's
voiceprint built without it (genuine) and against every other enrolled speaker's voiceprint (impostor),
voiceprints built as the store builds them and passed through the store's format. The operating point
is the threshold t with (t - mean_imp) / sd_imp = RATIO (mean_gen - t) / sd_gen under normal fits of
both score sets, pulled towards the model's default by PRIOR_TRIALS pseudo-trials so that a small
enrollment moves it a little and a large one decides it. bench/default_threshold.py measures the model
default at the same point on held-out real speech; `voxfloat calibrate` on a trial list overrides both.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from voxfloat.store import VoiceprintStore

MIN_SPEAKERS = 3       # speakers with >= 2 utterances each: fewer give no usable impostor spread
RATIO = 1.5            # impostor z over genuine z at the operating point: errs towards rejecting impostors
PRIOR_TRIALS = 20      # weight of the model's default, in genuine trials
SELF = "self-calibrated at enrollment"
TRIALS = "calibrated on"  # how `calibrate` (a trial list) begins its source: never overridden here

Roundtrip = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SelfCalibration:
    """What enrollment decided about the threshold: the value (None: none), its source line and the counts."""

    threshold: float | None
    source: str
    speakers: int = 0      # speakers with >= 2 utterances that took part
    genuine: int = 0       # leave-one-out genuine trials
    impostor: int = 0      # impostor trials
    changed: bool = False  # whether the store's threshold was (re)set

    def as_dict(self) -> dict:
        """JSON-ready form (part of `voxfloat enroll --json`)."""
        return {"threshold": self.threshold, "threshold_source": self.source, "speakers": self.speakers,
                "genuine_trials": self.genuine, "impostor_trials": self.impostor, "changed": self.changed}


def _unit(E: np.ndarray) -> np.ndarray:
    E = np.asarray(E, np.float64)
    return E / np.maximum(np.linalg.norm(E, axis=-1, keepdims=True), 1e-30)


def leave_one_out_scores(by_speaker: Mapping[str, np.ndarray], roundtrip: Roundtrip | None = None
                         ) -> tuple[np.ndarray, np.ndarray, int]:
    """(genuine, impostor, speakers) cosines of the leave-one-out trials over speakers with >= 2 utterances.

    `roundtrip` maps (k, D) voiceprints through the store's format (encode then decode); None keeps float.
    """
    trip = roundtrip or (lambda V: V)
    kept = {s: np.asarray(E, np.float64) for s, E in by_speaker.items() if len(E) >= 2}
    if len(kept) < 2:
        return np.zeros(0), np.zeros(0), len(kept)
    norms = {s: np.linalg.norm(E, axis=1) for s, E in kept.items()}
    units = {s: _unit(E) for s, E in kept.items()}
    # as VoiceprintStore.add: the normalised mean of unit embeddings, at the mean norm of the embeddings
    full = np.stack([_unit(units[s].mean(axis=0)) * norms[s].mean() for s in kept])
    full = _unit(trip(full.astype(np.float32)))
    genuine, impostor = [], []
    for i, s in enumerate(kept):
        u, n, k = units[s], norms[s], len(units[s])
        held_out = _unit(u.sum(axis=0, keepdims=True) - u) * ((n.sum() - n) / (k - 1))[:, None]  # row j: without j
        held_out = _unit(trip(held_out.astype(np.float32)))
        genuine.append(np.einsum("ij,ij->i", u, held_out))
        impostor.append((u @ np.delete(full, i, axis=0).T).ravel())
    return np.concatenate(genuine), np.concatenate(impostor), len(kept)


def operating_point(genuine: np.ndarray, impostor: np.ndarray, ratio: float = RATIO) -> float:
    """The threshold where the impostor z-score is `ratio` times the genuine one (normal fits of both sets)."""
    mg, sg = float(np.mean(genuine)), float(np.std(genuine))
    mi, si = float(np.mean(impostor)), float(np.std(impostor))
    sg, si = max(sg, 1e-3), max(si, 1e-3)  # a speaker set with identical scores must not divide by zero
    return (mi * sg + ratio * mg * si) / (sg + ratio * si)


def self_calibrate(by_speaker: Mapping[str, np.ndarray], default: float | None, fmt: str,
                   roundtrip: Roundtrip | None = None) -> SelfCalibration:
    """The enrollment's own threshold for format `fmt`, or a SelfCalibration without one (and why) if too little material."""
    genuine, impostor, speakers = leave_one_out_scores(by_speaker, roundtrip)
    if speakers < MIN_SPEAKERS:
        return SelfCalibration(None, f"not self-calibrated: needs {MIN_SPEAKERS} speakers with >= 2 utterances, "
                                     f"this enrollment has {speakers}", speakers)
    t = operating_point(genuine, impostor)
    prior = ""
    if default is not None:
        t = (len(genuine) * t + PRIOR_TRIALS * default) / (len(genuine) + PRIOR_TRIALS)
        prior = f", weighed with the model default {default:.3f} as {PRIOR_TRIALS} trials"
    t = float(np.clip(t, -1.0, 1.0))
    source = (f"{SELF}: {speakers} speakers, {len(genuine)} genuine / {len(impostor)} impostor leave-one-out "
              f"trials, {fmt}, impostor z = {RATIO} x genuine z{prior}")
    return SelfCalibration(t, source, speakers, len(genuine), len(impostor))


def calibrate_enrollment(store: "VoiceprintStore", by_speaker: Mapping[str, np.ndarray], default: float | None,
                         default_source: str) -> SelfCalibration:
    """Set a writable store's threshold after enrolling `by_speaker` (utterance embeddings per speaker).

    A threshold from `calibrate` (trial list) stays. Otherwise enough material self-calibrates the store's
    format; too little leaves an existing threshold, or seeds the model default with the reason recorded.
    """
    current = store.threshold_source or ""
    if store.threshold is not None and current.startswith(TRIALS):
        return SelfCalibration(store.threshold, current)
    codec, dim = store.codec, store.dim
    cal = self_calibrate(by_speaker, default, store.format, lambda V: codec.decode(codec.encode(V), dim))
    if cal.threshold is not None:
        store.set_thresholds({store.format: cal.threshold}, cal.source, replace=True)
        return replace(cal, changed=True)
    if store.threshold is not None:
        return SelfCalibration(store.threshold, f"{current} (kept; this enrollment {cal.source})", cal.speakers)
    if default is None:
        return replace(cal, source=f"no threshold (the model has no default); {cal.source}")
    source = f"model default: {default_source}; {cal.source}"
    store.set_thresholds({store.format: default}, source)
    return SelfCalibration(default, source, cal.speakers, changed=True)

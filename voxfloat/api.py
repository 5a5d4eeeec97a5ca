"""The library entry point: `Verifier` owns enrollment, the accept rule, open-set identification, threshold
seeding from the model card and calibration, so the command line and services only parse and format.

    v = voxfloat.Verifier("team.vxf")                # the shipped GE2E model unless model= is given
    v.enroll("alice", ["a1.wav", "a2.wav"])
    v.verify("probe.wav", "alice").accepted          # Decision: score, threshold, its source, format
    v.identify("probe.wav", top=3).decision          # best speaker, or None (UNKNOWN) below the threshold

Heavy modules (onnxruntime, numba) load on first use, not on import.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, Union

import numpy as np

from voxfloat.errors import ListError, UsageError, VoxfloatError
from voxfloat.files import output_target, read_regular
from voxfloat.runtime.limits import AUDIO_SUFFIXES, DEFAULT_MAX_SECONDS
from voxfloat.selfcal import SelfCalibration, calibrate_enrollment

if TYPE_CHECKING:
    from voxfloat.evaluate import Trials
    from voxfloat.ray_engine import RayOptions
    from voxfloat.runtime.encoder import SpeakerEncoder
    from voxfloat.store import VoiceprintStore

__all__ = ["Admission", "AudioLike", "Batch", "Calibration", "DEFAULT_MAX_SECONDS", "Decision", "EnrollReport",
           "Identification", "ListError", "UsageError", "Verifier", "VoxfloatError", "check_threshold",
           "admit_child", "embed_audio", "embed_trials", "enroll_shards", "open_encoder", "read_enrollment_list", "shard_path"]

AudioLike = Union[str, os.PathLike, bytes, np.ndarray]
T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")
CALLER = "given by the caller"
CLOSED_SET = "none: closed set, the best candidate is the answer"
MAX_LIST_BYTES = 64 << 20  # an enrollment CSV larger than this is not a list of files


def check_threshold(value: object, what: str = "threshold") -> float:
    """A decision threshold as float: a finite cosine in [-1, 1] (NaN, inf, -2 and non-numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not -1.0 <= float(value) <= 1.0:
        raise UsageError(f"{what} must be a cosine in [-1, 1], got {value!r}")
    return float(value)


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < math.inf:
        raise UsageError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _label(item: AudioLike) -> str | None:
    """How a decision names its audio: the path as given, None for bytes or waveforms."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


@dataclass(frozen=True)
class Decision:
    """One verification: the accept rule is `score >= threshold`; the threshold's source and the format go along."""

    audio: str | None
    speaker: str
    score: float
    threshold: float
    threshold_source: str
    format: str
    accepted: bool

    def as_dict(self) -> dict:
        """JSON-ready form (what `voxfloat verify --json` prints)."""
        return {"audio": self.audio, "speaker": self.speaker, "score": round(self.score, 6),
                "threshold": self.threshold, "threshold_source": self.threshold_source, "format": self.format,
                "accepted": self.accepted}


@dataclass(frozen=True)
class Identification:
    """One 1:N search: candidates best first; `decision` is the best one, or None (UNKNOWN) below the threshold."""

    audio: str | None
    candidates: list[tuple[str, float]]
    decision: str | None
    threshold: float | None
    threshold_source: str
    format: str

    def as_dict(self) -> dict:
        """JSON-ready form (what `voxfloat identify --json` prints; `speaker` is the decision)."""
        return {"audio": self.audio, "speaker": self.decision, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "format": self.format,
                "candidates": [{"speaker": s, "score": round(v, 6)} for s, v in self.candidates]}


@dataclass(frozen=True)
class EnrollReport:
    """What an enrollment did: speakers enrolled (with utterance counts), skipped, and the bad files listed."""

    store: str
    enrolled: list[tuple[str, int]]
    already_enrolled: list[str]      # skipped: in the store already and replace=False
    no_audio: list[str]              # skipped: none of their files could be read
    bad_files: list[str]             # one "<file>: <problem>" line each
    speakers_in_store: int
    threshold: SelfCalibration | None = None  # what enrollment did to the store's threshold (voxfloat.selfcal)
    device: str = ""                           # where the embeddings were computed

    @property
    def complete(self) -> bool:
        """Whether every file was read and every speaker with audio got a voiceprint."""
        return not self.bad_files and not self.no_audio

    def as_dict(self) -> dict:
        """JSON-ready form (what `voxfloat enroll --json` prints)."""
        return {"store": self.store, "enrolled": [{"speaker": s, "utterances": n} for s, n in self.enrolled],
                "skipped_speakers": self.already_enrolled + self.no_audio, "bad_files": self.bad_files,
                "speakers_in_store": self.speakers_in_store,
                "threshold": self.threshold.as_dict() if self.threshold else None, "device": self.device}


@dataclass(frozen=True)
class Calibration:
    """Per-format EER and target-FAR thresholds from a trial list; `threshold` (for the store's format) now decides."""

    store: str
    use: str
    target_far: float
    formats: list[dict]              # format, eer (%), eer_threshold, far_threshold, target_far
    thresholds: dict[str, float]     # the chosen point per format, as written into the store
    format: str
    threshold: float
    threshold_source: str
    bad_files: list[str]

    def as_dict(self) -> dict:
        """JSON-ready form (what `voxfloat calibrate --json` prints)."""
        return {"store": self.store, "use": self.use, "formats": self.formats, "format": self.format,
                "threshold": self.threshold, "threshold_source": self.threshold_source, "bad_files": self.bad_files}


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Results for the inputs that could be read, in input order, and one line per input that could not."""

    results: list[T]
    bad_files: list[str] = field(default_factory=list)


def open_encoder(model: str | os.PathLike | None = None, *, device: str = "auto", threads: int = 0,
                 max_seconds: float = DEFAULT_MAX_SECONDS, ray: "RayOptions | None" = None,
                 vad: bool = True) -> "SpeakerEncoder":
    """Load a model (None: the shipped default) on `device`, embedding only the speech of each input (`vad`, see
    voxfloat.runtime.vad) and at most `max_seconds` of it;
    with `ray`, files are embedded by an actor pool on that Ray cluster instead (see voxfloat.ray_engine)."""
    from voxfloat.runtime.encoder import SpeakerEncoder

    if device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UsageError(f"threads must be a whole number >= 0, got {threads!r}")
    max_seconds = _positive(max_seconds, "max_seconds")
    if model is None:
        from voxfloat.runtime.default_model import default_model_path

        model = default_model_path()
    if ray is not None:
        from voxfloat.ray_engine import RayEncoder

        return RayEncoder(model, {"threads": threads, "max_seconds": max_seconds, "vad": bool(vad)}, ray)
    return SpeakerEncoder(model, device=device, threads=threads, max_seconds=max_seconds, vad=bool(vad))


def embed_audio(encoder: "SpeakerEncoder", items: Sequence[AudioLike], progress: bool = False
                ) -> tuple[list[np.ndarray | None], list[str]]:
    """Embed paths, encoded bytes or waveforms; rows align with `items` (None where unreadable) plus the error lines."""
    from voxfloat.runtime.audio import AudioError, check_waveform, load_audio

    if isinstance(items, (str, bytes, os.PathLike, np.ndarray)):
        raise UsageError("audio must be a sequence of files, bytes or waveforms (wrap a single one in a list)")
    out: list[np.ndarray | None] = [None] * len(items)
    errors: list[str] = []
    paths = [(i, x) for i, x in enumerate(items) if isinstance(x, (str, os.PathLike))]
    if paths:
        result = encoder.embed_files([x for _, x in paths], progress=progress)
        bad = {id(p) for p, _ in result.errors}
        good = iter(result.embeddings)
        for i, x in paths:
            if id(x) not in bad:
                out[i] = next(good)
        errors.extend(m for _, m in result.errors)
    card = encoder.card
    waves: list[tuple[int, np.ndarray]] = []
    for i, x in enumerate(items):
        if isinstance(x, (str, os.PathLike)):
            continue
        try:
            if isinstance(x, (bytes, bytearray, memoryview)):
                name = f"<audio bytes #{i}>"
                wave = load_audio(bytes(x), card.sample_rate, card.min_seconds, encoder.recording_limit, name=name)
                waves.append((i, encoder.speech(wave, name)))
            elif isinstance(x, np.ndarray):
                name = f"<waveform #{i}>"
                wave = check_waveform(x, card.sample_rate, card.min_seconds, encoder.recording_limit, name=name)
                waves.append((i, encoder.speech(wave, name)))
            else:
                raise UsageError(f"audio item {i}: expected a path, bytes or a float32 waveform, got {type(x).__name__}")
        except AudioError as e:
            errors.append(str(e))
    if waves:
        for (i, _), row, problem in zip(waves, *encoder.embed_rows([w for _, w in waves])):
            if problem:
                errors.append(f"<input #{i}>: {problem}")
            else:
                out[i] = row
    return out, errors


def read_enrollment_list(source: str | os.PathLike) -> list[tuple[str, str]]:
    """(speaker, audio path) pairs from a folder of speaker folders or a UTF-8 CSV of speaker,path.

    A byte-order mark and a `speaker,path` header line are allowed; relative paths are relative to the CSV.
    Every id is checked here, before any audio is read; ListError names the file (and line) otherwise.
    """
    from voxfloat.store import StoreError, check_speaker_id

    source = Path(source)

    def speaker_id(text: str, where: str) -> str:
        try:
            return check_speaker_id(text.strip())
        except StoreError as e:
            raise ListError(f"{where}: {e}") from None

    if source.is_dir():
        try:
            pairs = [(speaker_id(d.name, str(d)), str(f)) for d in sorted(source.iterdir()) if d.is_dir()
                     for f in sorted(d.rglob("*")) if f.suffix.lower() in AUDIO_SUFFIXES]
        except OSError as e:
            raise ListError(f"{e.filename or source}: cannot list the folder: {e.strerror}") from None
        if not pairs:
            raise ListError(f"{source}: no speaker sub-folders with audio files")
        return pairs
    data = read_regular(source, ListError, "enrollment list (folder or CSV file)", limit=MAX_LIST_BYTES)
    try:
        text = data.decode("utf-8-sig")  # spreadsheets save UTF-8 CSV with a byte-order mark
    except UnicodeDecodeError as e:
        raise ListError(f"{source}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    pairs, n = [], 0
    try:
        for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or not any(c.strip() for c in row) or \
                    (not pairs and [c.strip().lower() for c in row] == ["speaker", "path"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ListError(f"{source}:{n}: expected 'speaker,path', got {','.join(row)[:80]!r}")
            path = Path(row[1].strip())
            pairs.append((speaker_id(row[0], f"{source}:{n}"), str(path if path.is_absolute() else source.parent / path)))
    except csv.Error as e:
        raise ListError(f"{source}:{n + 1}: not CSV ({e})") from None
    if not pairs:
        raise ListError(f"{source}: no speaker,path rows")
    return pairs


def embed_trials(encoder: "SpeakerEncoder", trials_path: str | os.PathLike, audio_root: str | os.PathLike,
                 progress: bool = False) -> tuple["Trials", np.ndarray, list[str], list[str]]:
    """Read a trial list and embed each audio file it names once: (trials, embeddings, their paths, bad files)."""
    from voxfloat.evaluate import TrialsError, read_trials

    trials = read_trials(trials_path)
    root = Path(audio_root)
    if not root.is_dir():
        raise TrialsError(f"{root}: no such audio folder")
    files = trials.files
    rows, errors = embed_audio(encoder, [str(root / f) for f in files], progress)
    kept = [(f, r) for f, r in zip(files, rows) if r is not None]
    if not kept:
        raise TrialsError(f"{trials_path}: none of its audio files could be read")
    return trials, np.stack([r for _, r in kept]), [f for f, _ in kept], errors


class Verifier:
    """Speaker verification against one voiceprint store with one model: enroll, verify, identify, calibrate.

    Every call notices when the store file was replaced on disk (another writer's atomic rename) and re-opens it;
    the store must have been built with this model (its graph fingerprint), else StoreError.
    """

    def __init__(self, store: str | os.PathLike, model: str | os.PathLike | None = None, *,
                 device: str = "auto", threads: int = 0, vad: bool = True,
                 max_seconds: float = DEFAULT_MAX_SECONDS,
                 format: str | None = None, scale: str | None = None, progress: bool = False,
                 ray: "RayOptions | None" = None) -> None:
        from voxfloat.store import FORMATS, SCALE_MODES

        if not isinstance(store, (str, os.PathLike)):
            raise UsageError(f"store must be a path, got {type(store).__name__}")
        if format is not None and format not in FORMATS:
            raise UsageError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
        if scale is not None and scale not in SCALE_MODES:
            raise UsageError(f"unknown scale mode {scale!r}; choose from {', '.join(SCALE_MODES)}")
        if device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        self.path = Path(store)
        self.model = Path(model) if model is not None else None
        self.device, self.threads, self.vad, self.progress = device, threads, bool(vad), progress
        self.max_seconds = _positive(max_seconds, "max_seconds")
        self.format, self.scale, self.ray = format, scale, ray
        self._encoder: SpeakerEncoder | None = None
        self._store: VoiceprintStore | None = None
        self._stamp: tuple[int, ...] | None = None
        self._model_checked = False

    # -- model and store ------------------------------------------------------------------------------

    @property
    def encoder(self) -> "SpeakerEncoder":
        """The model, loaded on first use."""
        if self._encoder is None:
            self._encoder = open_encoder(self.model, device=self.device, threads=self.threads,
                                         max_seconds=self.max_seconds, ray=self.ray, vad=self.vad)
        return self._encoder

    def _opened(self, required: bool = True) -> "VoiceprintStore | None":
        """The store as it is on disk now (re-opened when replaced); None if it does not exist and not required."""
        from voxfloat.store import StoreError, VoiceprintStore

        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if required:
                VoiceprintStore.open(self.path)  # raises the store's own one-line error
            output_target(self.path, StoreError, follow_symlinks=True)  # refuses a link to nothing
            self._store, self._stamp = None, None
            return None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read: {e.strerror}") from None
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._store is None:
            self._store, self._stamp, self._model_checked = VoiceprintStore.open(self.path), stamp, False
        return self._store

    def _check_model(self, store: "VoiceprintStore") -> None:
        """Refuse a store built with another model or of another width: the one place acceptance is decided."""
        from voxfloat.store import StoreError

        card = self.encoder.card
        if store.dim != card.embedding_dim:
            raise StoreError(f"{store.path}: wrong dimension: the store holds {store.dim}-dim voiceprints, "
                             f"the model gives {card.embedding_dim}")
        note = store.check_model(card.fingerprint, card.quantization)
        store.check_preprocessing(self.encoder.preprocessing)
        if note:  # a quantized child of the store's model, accepted on its recorded parity: say so once
            logging.getLogger(__name__).warning(note)

    def _store_for_model(self) -> "VoiceprintStore":
        store = self._opened()
        if not self._model_checked:
            self._check_model(store)
            self._model_checked = True
        return store

    def _threshold(self, store: "VoiceprintStore", override: float | None) -> tuple[float | None, str]:
        """The threshold to decide with and where it comes from: the caller's, the store's, the model's, or none."""
        if override is not None:
            return check_threshold(override), CALLER
        if store.threshold is not None:
            return store.threshold, store.threshold_source or "stored in the voiceprint store"
        card = self.encoder.card
        if card.threshold is not None:
            return card.threshold, f"model default: {card.threshold_source or card.arch}"
        return None, CLOSED_SET

    def _embed(self, audio: Sequence[AudioLike]) -> tuple[list[np.ndarray | None], list[str]]:
        return embed_audio(self.encoder, audio, self.progress)

    # -- enrollment -----------------------------------------------------------------------------------

    def enroll(self, speaker: str, audio: Sequence[AudioLike], *, replace: bool = False,
               extend: bool = False, create: bool = True) -> EnrollReport:
        """Enroll one speaker from its utterances (paths, encoded bytes or waveforms)."""
        if isinstance(audio, (str, bytes, os.PathLike, np.ndarray)):
            audio = [audio]
        return self.enroll_many([(speaker, a) for a in audio], replace=replace, extend=extend, create=create)

    def enroll_many(self, pairs: Sequence[tuple[str, AudioLike]], *, replace: bool = False,
                    extend: bool = False, create: bool = True) -> EnrollReport:
        """Enroll (speaker, audio) pairs in one atomic write under the store lock; bad files are listed, the rest enrolled.

        An enrolled speaker is skipped, re-enrolled with `replace`, or with `extend` gets the new utterances
        added to its voiceprint (VoiceprintStore.extend: what `voxfloat serve`'s enroll does).

        Ids are checked before any audio is embedded; a new store gets this Verifier's format and scale
        (default e4m3, vector) and the model card's threshold; an existing one keeps its own. With
        `create=False` the store must exist (a service's store); nothing is written when no audio was usable.
        """
        from voxfloat.store import StoreError, VoiceprintStore, check_speaker_id

        pairs = list(pairs)
        if not pairs:
            raise UsageError("nothing to enroll: no (speaker, audio) pairs")
        for speaker, _ in pairs:
            check_speaker_id(speaker, self.path)
        existing = self._opened(required=not create)
        if existing is not None:
            self._check_model(existing)
            for given, have, what in ((self.format, existing.format, "format"), (self.scale, existing.scale, "scale")):
                if given is not None and given != have:
                    raise StoreError(f"{self.path}: store uses {what} {have}, not {given}")
        card = self.encoder.card
        rows, errors = self._embed([a for _, a in pairs])
        by_speaker: dict[str, list[np.ndarray]] = {}
        for (speaker, _), row in zip(pairs, rows):
            if row is not None:
                by_speaker.setdefault(speaker, []).append(row)
        if not by_speaker:  # every file was bad: the store stays as it is, or uncreated
            return EnrollReport(str(self.path), [], [], list(dict.fromkeys(s for s, _ in pairs)), errors,
                                len(existing) if existing is not None else 0, None, self.encoder.device)
        create = {} if existing is not None else {
            "fmt": self.format or "e4m3", "scale": self.scale or "vector", "dim": card.embedding_dim,
            "model": {"fingerprint": card.fingerprint, "arch": card.arch, "source": card.source},
            "preprocessing": self.encoder.preprocessing}
        added, skipped = [], []
        with VoiceprintStore.edit(self.path, **create) as store:
            self._check_model(store)
            for speaker, embs in by_speaker.items():
                if speaker in store and not (replace or extend):
                    skipped.append(speaker)
                    continue
                if extend and not replace:
                    store.extend(speaker, np.stack(embs))
                else:
                    store.add(speaker, np.stack(embs), replace=replace)
                added.append((speaker, len(embs)))
            threshold = calibrate_enrollment(store, {s: np.stack(by_speaker[s]) for s, _ in added}, card.threshold,
                                             card.threshold_source or card.arch)
            total = len(store)
        self._stamp = None
        no_audio = [s for s in dict.fromkeys(s for s, _ in pairs) if s not in by_speaker]
        return EnrollReport(str(self.path), added, skipped, no_audio, errors, total, threshold, self.encoder.device)

    def remove(self, *speakers: str) -> list[str]:
        """Delete speakers' voiceprints (one atomic rewrite; nothing is written if none is enrolled); the ids removed."""
        from voxfloat.store import VoiceprintStore

        self._opened()
        with VoiceprintStore.edit(self.path) as store:
            removed = [s for s in dict.fromkeys(speakers) if s in store]
            for speaker in removed:
                store.remove(speaker)
        self._stamp = None
        return removed

    # -- decisions ------------------------------------------------------------------------------------

    def verify(self, audio: AudioLike, speaker: str, *, threshold: float | None = None) -> Decision:
        """Score one input against `speaker` and accept when the score reaches the threshold."""
        return _single(self.verify_many([audio], speaker, threshold=threshold))

    def verify_many(self, audio: Sequence[AudioLike], speaker: str, *, threshold: float | None = None
                    ) -> Batch[Decision]:
        """verify() for many inputs, decoded while the model runs; unreadable ones are listed, not fatal."""
        from voxfloat.store import StoreError

        store = self._store_for_model()
        if not isinstance(speaker, str) or speaker not in store:
            raise StoreError(f"{self.path}: no speaker {speaker!r} enrolled")
        thr, source = self._threshold(store, threshold)
        if thr is None:
            raise StoreError(f"{self.path}: no threshold for format {store.format}: run `voxfloat calibrate` "
                             "or pass a threshold")
        rows, errors = self._embed(audio)
        decisions = []
        for item, row in zip(audio, rows):
            if row is not None:
                score = float(np.clip(store.score(row, speaker), -1.0, 1.0))
                decisions.append(Decision(_label(item), speaker, score, thr, source, store.format, score >= thr))
        return Batch(decisions, errors)

    def identify(self, audio: AudioLike, *, top: int = 1, threshold: float | None = None) -> Identification:
        """The `top` closest enrolled speakers; the decision is the best one unless it scores under the threshold."""
        return _single(self.identify_many([audio], top=top, threshold=threshold))

    def identify_many(self, audio: Sequence[AudioLike], *, top: int = 1, threshold: float | None = None
                      ) -> Batch[Identification]:
        """identify() for many inputs; without any threshold (none given, stored or in the card) it is closed-set."""
        from voxfloat.store import StoreError

        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise UsageError(f"top must be a whole number >= 1, got {top!r}")
        store = self._store_for_model()
        if len(store) == 0:
            raise StoreError(f"{self.path}: no speakers enrolled")
        thr, source = self._threshold(store, threshold)
        rows, errors = self._embed(audio)
        ok = [(item, row) for item, row in zip(audio, rows) if row is not None]
        results = []
        if ok:
            ranked = store.identify(np.stack([row for _, row in ok]), top)
            for (item, _), cands in zip(ok, ranked):
                cands = [(s, float(np.clip(v, -1.0, 1.0))) for s, v in cands]
                best, score = cands[0]
                results.append(Identification(_label(item), cands, best if thr is None or score >= thr else None,
                                              thr, source, store.format))
        return Batch(results, errors)

    # -- calibration and description ------------------------------------------------------------------

    def calibrate(self, trials: str | os.PathLike, audio_root: str | os.PathLike, *, target_far: float = 0.01,
                  use: str = "eer") -> Calibration:
        """Per-format EER and target-FAR thresholds from a trial list; the `use` point is written into the store."""
        from voxfloat.evaluate import evaluate, operating_point
        from voxfloat.metrics import threshold_at_far
        from voxfloat.store import FORMATS, VoiceprintStore

        if use not in ("eer", "far"):
            raise UsageError(f"use must be 'eer' or 'far', not {use!r}")
        target_far = _positive(target_far, "target_far")
        if target_far > 0.5:
            raise UsageError(f"target_far must be a fraction in (0, 0.5], got {target_far!r}")
        store = self._store_for_model()
        parsed, embeddings, paths, errors = embed_trials(self.encoder, trials, audio_root, self.progress)
        _, scores, labels = evaluate(embeddings, paths, parsed, list(FORMATS), [store.scale], None)
        table, chosen = [], {}
        for fmt in FORMATS:
            s = np.clip(scores[fmt, store.scale], -1.0, 1.0)  # float32 rounding can give 1.0000002
            eer = operating_point(s, labels)
            eer_thr = float(np.clip(eer.eer_threshold, -1.0, 1.0))
            far_thr = float(np.clip(threshold_at_far(s, labels, target_far), -1.0, 1.0))
            chosen[fmt] = eer_thr if use == "eer" else far_thr
            table.append({"format": fmt, "eer": eer.eer, "eer_threshold": eer_thr, "far_threshold": far_thr,
                          "target_far": target_far})
        point = "EER point" if use == "eer" else f"FAR {target_far:g} point"
        source = f"calibrated on {trials} ({int(labels.sum())} target trials, {store.scale} scaling), {point}"
        with VoiceprintStore.edit(self.path) as edited:
            self._check_model(edited)
            edited.set_thresholds(chosen, source)
            fmt = edited.format
        self._stamp = None
        return Calibration(str(self.path), use, target_far, table, chosen, fmt, chosen[fmt], source, errors)

    def speakers(self) -> list[str]:
        """Enrolled speaker ids in store order."""
        return list(self._opened().speakers)

    def check(self) -> None:
        """Open the store and check that it belongs to this model and trimming (StoreError with one line if not)."""
        self._store_for_model()

    def info(self) -> dict:
        """Model, fingerprint, device, store format/scale, count, threshold and its source, preprocessing."""
        store = self._store_for_model()
        enc = self.encoder
        thr, source = self._threshold(store, None)
        return {"store": str(self.path), "model": str(enc.path), "fingerprint": enc.card.fingerprint,
                "device": enc.device, "format": store.format, "scale": store.scale, "dim": store.dim,
                "count": len(store), "threshold": thr, "threshold_source": source,
                "preprocessing": store.info().get("preprocessing")}


def shard_of(speaker: str, shards: int) -> int:
    """The shard a speaker belongs to: a stable hash of its id (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(speaker.encode("utf-8")).digest()[:8], "big") % shards


def shard_path(out: str | os.PathLike, shard: int, shards: int) -> Path:
    """S.vxf -> S.02-of-16.vxf: where shard `shard` of `shards` is written."""
    out, width = Path(out), len(str(shards))
    return out.with_name(f"{out.stem}.{shard:0{width}d}-of-{shards}{out.suffix}")


def enroll_shards(out: str | os.PathLike, pairs: Sequence[tuple[str, AudioLike]], shards: int, *,
                  replace: bool = False, **verifier_args: object) -> list[EnrollReport]:
    """Enroll into `shards` stores split by speaker hash, each written atomically under its own lock.

    One encoder (local or Ray) serves every shard; `voxfloat merge` joins the shards into one store.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise UsageError(f"shards must be a whole number >= 1, got {shards!r}")
    groups: dict[int, list[tuple[str, AudioLike]]] = {}
    for speaker, audio in pairs:
        groups.setdefault(shard_of(speaker, shards), []).append((speaker, audio))
    reports, encoder = [], None
    for k in sorted(groups):
        verifier = Verifier(shard_path(out, k, shards), **verifier_args)  # type: ignore[arg-type]
        verifier._encoder = encoder  # the first shard loads the model, the others reuse it
        reports.append(verifier.enroll_many(groups[k], replace=replace))
        encoder = verifier.encoder
    return reports


@dataclass(frozen=True)
class Admission:
    """A quantized child admitted to a store: its graph fingerprint, precision and the parity measured for it."""

    store: str
    child: str
    fingerprint: str
    weights: str
    mean: float
    min: float
    files: int
    bad_files: list[str]

    def as_dict(self) -> dict:
        """JSON-ready form (what `voxfloat admit --json` prints)."""
        return dict(self.__dict__)


def admit_child(store: str | os.PathLike, child: str | os.PathLike, calibration: str | os.PathLike, *,
                parent: str | os.PathLike | None = None, threads: int = 0) -> Admission:
    """Measure a quantized child's parity to the store's model (`parent`, default the shipped one) on the calibration
    audio and, at CHILD_MIN_COSINE mean cosine or more, record it in the store, which accepts the child from then on.

    The store trusts only parity measured here, by whoever may write it, never the figure a model file claims."""
    from voxfloat.runtime.quantize import measure_parity
    from voxfloat.store import StoreError, VoiceprintStore

    if parent is None:
        from voxfloat.runtime.default_model import default_model_path

        parent = default_model_path()
    have = VoiceprintStore.open(store).model["fingerprint"]  # refuse a bad store before measuring anything
    mother, card, measured, skipped = measure_parity(parent, child, calibration, threads)
    if mother.fingerprint != have:
        raise StoreError(f"{store}: built with model {have[:12]}, not with {parent} ({mother.fingerprint[:12]})")
    weights = str(card.quantization.get("weights"))
    with VoiceprintStore.edit(store) as edited:
        if edited.model["fingerprint"] != have:
            raise StoreError(f"{store}: replaced by a store of another model while the parity was measured")
        edited.admit_child(card.fingerprint, weights, measured.mean, measured.min, measured.files)
    return Admission(str(store), str(child), card.fingerprint, weights, measured.mean, measured.min, measured.files,
                     skipped)


def _single(batch: Batch[T]) -> T:
    """The one result of a one-input batch, or the AudioError that input gave."""
    from voxfloat.runtime.audio import AudioError

    if not batch.results:
        raise AudioError(batch.bad_files[0] if batch.bad_files else "no audio")
    return batch.results[0]

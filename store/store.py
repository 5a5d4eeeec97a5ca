"""VoiceprintStore: a .vxf file of packed speaker voiceprints, opened by memory map and edited under a lock.

A speaker enrolled from k utterances is stored once: the L2-normalised mean of its L2-normalised embeddings,
rescaled to their mean norm (so a `none` store sees the model's own value range). Scores are cosines.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from voxfloat.store import kernels, vxf
from voxfloat.store.codec import SCALE_MODES, Codec
from voxfloat.store.errors import StoreError
from voxfloat.store.formats import FORMATS
from voxfloat.store.vxf import CHILD_MIN_COSINE, ENROLLMENT, check_speaker_id

CREATE_ARGS = {"fmt", "scale", "dim", "model", "thresholds", "preprocessing"}
UNTRIMMED = {"vad": "off"}  # what a store without a preprocessing record was enrolled with


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _describe(preprocessing: dict) -> str:
    """A preprocessing record on one line: `vad=silero threshold=0.5 ...`."""
    return " ".join(f"{k}={v}" for k, v in preprocessing.items()) if isinstance(preprocessing, dict) else repr(preprocessing)


def _header_codec(header: dict) -> Codec:
    """The codec a header describes; StoreError (without path, added by the caller) if it names none."""
    fmt, scale, dim = header.get("format"), header.get("scale"), header.get("dim")
    if fmt not in FORMATS:
        raise StoreError(f"unknown format {fmt!r}")
    if scale not in SCALE_MODES:
        raise StoreError(f"unknown scale mode {scale!r}")
    if not isinstance(dim, int) or dim < 1:
        raise StoreError(f"bad dimension {dim!r}")
    return Codec(fmt, scale)


class VoiceprintStore:
    """Speaker voiceprints in one format and scale mode: read-only when opened, editable inside `edit`."""

    def __init__(self, path: Path, header: dict, rows: np.ndarray, n_utterances: np.ndarray,
                 ids: list[str] | None, id_blob: memoryview | bytes | None, *, writable: bool,
                 crc32: int | None = None, file_size: int | None = None, version: int = vxf.VERSION):
        self.path = Path(path)
        self._header = header
        self.codec = _header_codec(header)
        self._rows, self._nutt, self._n = rows, n_utterances, len(rows)
        self._ids, self._id_blob = ids, id_blob
        self._index: dict[str, int] | None = None
        self._inv_norms: np.ndarray | None = None
        self._writable = writable
        self._crc32, self._file_size, self._version = crc32, file_size, version
        self._dirty = False  # set by every change; an edit that changes nothing leaves the file as it was

    # -- opening, creating, editing ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, dim: int | None = None) -> "VoiceprintStore":
        """Map `path` read-only after checking prefix, size, checksum and header; `dim` also checks the width."""
        path = Path(path)

        def row_bytes_for(header: dict) -> int:
            try:
                return _header_codec(header).row_bytes(header["dim"])
            except StoreError as e:
                raise StoreError(f"{path}: corrupt header: {e}") from None

        m = vxf.read(path, row_bytes_for)
        if dim is not None and m.header["dim"] != dim:
            raise StoreError(f"{path}: wrong dimension: the store holds {m.header['dim']}-dim voiceprints, "
                             f"the model gives {dim}")
        return cls(path, m.header, m.rows, m.n_utterances, None, m.speaker_ids, writable=False,
                   crc32=m.crc32, file_size=m.file_size, version=m.version)

    @classmethod
    def _new(cls, path: Path, *, fmt: str, scale: str, dim: int, model: dict,
             thresholds: dict[str, float] | None = None, preprocessing: dict | None = None) -> "VoiceprintStore":
        """An empty, writable, not yet written store (arguments checked)."""
        if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str) \
                or not isinstance(model.get("arch"), str):
            raise StoreError(f"{path}: model must be a dict with string 'fingerprint' and 'arch'")
        if not isinstance(dim, int) or dim < 1:
            raise StoreError(f"{path}: dimension must be a positive integer, got {dim!r}")
        try:
            codec = Codec(fmt, scale)
        except StoreError as e:
            raise StoreError(f"{path}: {e}") from None
        now = _now()
        header = {"format": fmt, "scale": scale, "dim": dim, "count": 0, "row_bytes": codec.row_bytes(dim),
                  "model": model, "thresholds": {}, "threshold_source": None, "enrollment": ENROLLMENT,
                  "created": now, "updated": now}
        if preprocessing is not None:
            header["preprocessing"] = preprocessing
        problem = vxf.check_header(header, written=False)  # never write what a reader would refuse
        if problem:
            raise StoreError(f"{path}: {problem}")
        store = cls(path, header, np.zeros((0, codec.row_bytes(dim)), np.uint8), np.zeros(0, np.uint32), [],
                    None, writable=True)
        if thresholds:
            store.set_thresholds(thresholds, source="create")
        return store

    @classmethod
    def create(cls, path: str | Path, *, fmt: str, scale: str, dim: int, model: dict,
               thresholds: dict[str, float] | None = None, overwrite: bool = False) -> "VoiceprintStore":
        """Write a new empty store (mode 0600) and return it opened; an existing file needs overwrite=True."""
        path = Path(path)
        with vxf.locked(path):
            if path.exists() and not overwrite:
                raise StoreError(f"{path}: already exists (use edit to change it)")
            cls._new(path, fmt=fmt, scale=scale, dim=dim, model=model, thresholds=thresholds)._write()
        return cls.open(path)

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: str | Path, **create: object) -> Iterator["VoiceprintStore"]:
        """Lock, load (or create from `create` kwargs: fmt, scale, dim, model, thresholds), yield, write atomically.

        The exclusive lock covers the whole read-modify-write, so concurrent editors never lose each
        other's changes; nothing is written if the block raises.
        """
        path = Path(path)
        with vxf.locked(path):
            if path.exists():
                store = cls.open(path)._editable()
                store._check_create_args(create)
            elif {"fmt", "scale", "dim", "model"} <= create.keys() <= CREATE_ARGS:
                store = cls._new(path, **create)
            else:
                raise StoreError(f"{path}: no such voiceprint store (give fmt, scale, dim and model to create one)")
            yield store
            if store._dirty or not path.exists():
                store._write()
            store._writable = False

    def _editable(self) -> "VoiceprintStore":
        """A writable in-memory copy of this (mapped) store."""
        return VoiceprintStore(self.path, dict(self._header), np.array(self._rows), np.array(self._nutt, np.uint32),
                               list(self.speakers), None, writable=True)

    def _check_create_args(self, create: dict) -> None:
        """Creation arguments given for an existing store must agree with it."""
        unknown = create.keys() - CREATE_ARGS
        if unknown:
            raise StoreError(f"{self.path}: unknown store argument(s) {', '.join(sorted(unknown))}")
        for key, have in (("fmt", self.format), ("scale", self.scale), ("dim", self.dim)):
            if key in create and create[key] != have:
                raise StoreError(f"{self.path}: the store has {key} {have}, not {create[key]}")
        if isinstance(create.get("model"), dict) and "fingerprint" in create["model"]:
            self.check_model(str(create["model"]["fingerprint"]))
        if "preprocessing" in create:
            self.check_preprocessing(create["preprocessing"])

    def _write(self) -> None:
        n = self._n
        self._header.update(count=n, updated=_now())
        vxf.write(self.path, self._header, self._rows[:n], self._nutt[:n], self.speakers)

    def close(self) -> None:
        """Drop the references to the memory map (it is unmapped once no returned array uses it)."""
        self._rows = self._rows[:0].copy()
        self._nutt, self._id_blob, self._n = self._nutt[:0].copy(), None, 0

    def __enter__(self) -> "VoiceprintStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ----------------------------------------------------------------------------------

    @property
    def header(self) -> dict:
        """A copy of the file's JSON header."""
        return dict(self._header)

    @property
    def format(self) -> str:
        return self._header["format"]

    @property
    def scale(self) -> str:
        return self._header["scale"]

    @property
    def dim(self) -> int:
        return self._header["dim"]

    @property
    def model(self) -> dict:
        return self._header["model"]

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self._header["thresholds"])

    @property
    def threshold(self) -> float | None:
        """The decision threshold calibrated for this store's format, if any."""
        return self._header["thresholds"].get(self.format)

    @property
    def threshold_source(self) -> str | None:
        """Where the thresholds came from (model default, calibration), if any were set."""
        return self._header.get("threshold_source")

    @property
    def speakers(self) -> list[str]:
        """Speaker ids in row order (parsed from the map on first use)."""
        if self._ids is None:
            self._ids = vxf.parse_ids(self.path, self._id_blob, self._n)
        return self._ids

    @property
    def packed(self) -> np.ndarray:
        """(count, row_bytes) uint8 packed voiceprints (a read-only view of the map when opened)."""
        return self._rows[:self._n]

    @property
    def n_utterances(self) -> np.ndarray:
        """(count,) utterances averaged into each voiceprint."""
        return self._nutt[:self._n]

    def __len__(self) -> int:
        return self._n

    def __contains__(self, speaker_id: object) -> bool:
        return speaker_id in self._positions()

    def __repr__(self) -> str:
        return f"VoiceprintStore({str(self.path)!r}, {self.format}/{self.scale}, dim={self.dim}, count={self._n})"

    def _positions(self) -> dict[str, int]:
        if self._index is None:
            index = {s: i for i, s in enumerate(self.speakers)}
            if len(index) != self._n:
                raise StoreError(f"{self.path}: corrupt speaker ids: duplicates")
            self._index = index
        return self._index

    def _row_of(self, speaker_id: str) -> int:
        try:
            return self._positions()[speaker_id]
        except KeyError:
            raise StoreError(f"{self.path}: no speaker {speaker_id!r}") from None

    # -- checks --------------------------------------------------------------------------------------

    def check_model(self, fingerprint: str, quantization: dict | None = None) -> str:
        """Refuse embeddings from any model but the one this store was built with, or a quantized child admitted to
        it (`admit_child`: parity measured by whoever may write the store); returns a line saying so for a child.

        A child's own record of its parity (card.quantization) is a claim anyone can write into a file, so it
        only shapes the refusal message."""
        have = str(self.model["fingerprint"])
        if fingerprint == have:
            return ""
        admitted = self.model.get("children", {}).get(fingerprint)
        if admitted is not None:
            return (f"{self.path}: accepting {admitted['weights']} child {fingerprint[:12]} of model {have[:12]}, "
                    f"admitted at mean cosine {admitted['mean']:.4f} on {admitted['files']} files")
        if (quantization or {}).get("parent_fingerprint") == have:
            raise StoreError(f"{self.path}: quantized child {fingerprint[:12]} of this store's model is not admitted "
                             "to it; measure its parity with `voxfloat admit` (it must reach "
                             f"{CHILD_MIN_COSINE} mean cosine), or enroll again with it")
        raise StoreError(f"{self.path}: built with model {self.model['arch']} {have[:12]}, not "
                         f"{fingerprint[:12]}; enroll again with this model or use the matching one")

    def admit_child(self, fingerprint: str, weights: str, mean: float, minimum: float, files: int) -> None:
        """Accept a quantized child of this store's model from now on: its parity to the model, measured on `files`
        audio files by the caller, must reach CHILD_MIN_COSINE mean cosine."""
        self._need_writable()
        if fingerprint == self.model["fingerprint"]:
            raise StoreError(f"{self.path}: {fingerprint[:12]} is the store's own model, not a child of it")
        if not (math.isfinite(mean) and mean >= CHILD_MIN_COSINE):
            raise StoreError(f"{self.path}: refusing {weights} child {fingerprint[:12]}: its mean cosine to the store's "
                             f"model is {mean:.4f}, below {CHILD_MIN_COSINE}; enroll again with it or use the parent")
        record = {"weights": str(weights), "mean": float(mean), "min": float(minimum), "files": int(files),
                  "admitted": _now()}
        children = {**self.model.get("children", {}), fingerprint: record}
        problem = vxf.HEADER_FIELDS["model"]({**self.model, "children": children})
        if problem:
            raise StoreError(f"{self.path}: cannot admit {fingerprint[:12]}: {problem}")
        self._header["model"], self._dirty = {**self.model, "children": children}, True

    def check_preprocessing(self, preprocessing: dict) -> None:
        """Refuse audio prepared otherwise than the enrolled audio was (speech trimming: detector, version, settings)."""
        have = self._header.get("preprocessing", UNTRIMMED)
        if preprocessing != have:
            raise StoreError(f"{self.path}: enrolled with preprocessing {_describe(have)}, not {_describe(preprocessing)}; "
                             "use the enrolled settings or enroll again")

    def _check_embeddings(self, E: np.ndarray, what: str, finite: bool = True) -> np.ndarray:
        """(k, dim) float32 view of E; `finite` also rejects NaN/inf (the encoder does that itself)."""
        E = np.asarray(E, np.float32)
        if E.ndim == 1:
            E = E[None, :]
        if E.ndim != 2 or E.shape[1] != self.dim or len(E) == 0:
            raise StoreError(f"{self.path}: {what} must be (k, {self.dim}) embeddings, got shape {np.shape(E)}")
        if finite and not np.isfinite(E).all():
            raise StoreError(f"{self.path}: {what} contains NaN or inf")
        return E

    def _need_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self.path}: opened read-only; change it inside VoiceprintStore.edit(...)")

    # -- editing -------------------------------------------------------------------------------------

    def add(self, speaker_id: str, embeddings: np.ndarray, replace: bool = False) -> None:
        """Enroll one speaker from its (k, dim) utterance embeddings, stored as their normalised mean."""
        self._need_writable()
        E = self._check_embeddings(embeddings, f"embeddings for {speaker_id!r}")
        unit = E / np.linalg.norm(E, axis=1, keepdims=True).clip(min=np.finfo(np.float32).tiny)
        mean = unit.astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(mean)
        if not norm > 0:
            raise StoreError(f"{self.path}: embeddings for {speaker_id!r} average to zero")
        voiceprint = (mean / norm * np.linalg.norm(E, axis=1).mean()).astype(np.float32)
        self._put([speaker_id], voiceprint[None, :], np.array([len(E)], np.uint32), replace)

    def extend(self, speaker_id: str, embeddings: np.ndarray) -> None:
        """Add (k, dim) utterance embeddings to a speaker's voiceprint (a new speaker is enrolled as by `add`).

        The stored voiceprint counts as its n earlier utterances, all pointing its way: the new one is the
        normalised mean of n times its direction and the k new unit embeddings, at their n-weighted mean norm.
        """
        self._need_writable()
        if speaker_id not in self:
            self.add(speaker_id, embeddings)
            return
        i = self._row_of(speaker_id)
        E = self._check_embeddings(embeddings, f"embeddings for {speaker_id!r}")
        n = int(self._nutt[i])
        rows = np.concatenate([self.codec.decode(self._rows[i:i + 1], self.dim), E]).astype(np.float64)
        weights = np.concatenate([[float(n)], np.ones(len(E))])
        norms = np.linalg.norm(rows, axis=1)
        mean = weights @ (rows / norms.clip(min=np.finfo(np.float32).tiny)[:, None])
        length = np.linalg.norm(mean)
        if not length > 0:
            raise StoreError(f"{self.path}: embeddings for {speaker_id!r} cancel its voiceprint out")
        voiceprint = (mean / length * (weights @ norms) / weights.sum()).astype(np.float32)
        self._put([speaker_id], voiceprint[None, :], np.array([n + len(E)], np.uint32), replace=True)

    def add_many(self, speaker_ids: Sequence[str], embeddings: np.ndarray, replace: bool = False) -> None:
        """Enroll many speakers from one embedding each (row i belongs to speaker_ids[i])."""
        self._need_writable()
        E = self._check_embeddings(embeddings, "embeddings", finite=False)
        if len(speaker_ids) != len(E):
            raise StoreError(f"{self.path}: {len(speaker_ids)} speaker ids for {len(E)} embeddings")
        self._put(list(speaker_ids), E, np.ones(len(E), np.uint32), replace)

    def _check_new_ids(self, ids: list[str], replace: bool) -> dict[str, int]:
        """Check ids about to be written (valid, not given twice, new unless replacing); the row index."""
        pos = self._positions()
        seen: set[str] = set()
        for s in ids:
            check_speaker_id(s, self.path)
            if s in seen:
                raise StoreError(f"{self.path}: speaker {s!r} is given twice")
            if s in pos and not replace:
                raise StoreError(f"{self.path}: speaker {s!r} is already enrolled (replace it explicitly)")
            seen.add(s)
        return pos

    def _put(self, ids: list[str], E: np.ndarray, nutt: np.ndarray, replace: bool) -> None:
        pos = self._check_new_ids(ids, replace)
        try:
            packed = self.codec.encode(E)
        except StoreError as e:
            raise StoreError(f"{self.path}: {e}") from None
        self._place(ids, packed, nutt, pos)

    def add_packed(self, speaker_ids: Sequence[str], packed: np.ndarray, n_utterances: np.ndarray,
                   replace: bool = False) -> None:
        """Insert rows already packed in this store's codec (merging stores copies bytes, never re-encodes)."""
        self._need_writable()
        ids, packed = list(speaker_ids), np.asarray(packed, np.uint8)
        if packed.shape != (len(ids), self._rows.shape[1]) or len(n_utterances) != len(ids):
            raise StoreError(f"{self.path}: {len(ids)} ids for packed rows of shape {packed.shape}")
        self._place(ids, packed, np.asarray(n_utterances, np.uint32), self._check_new_ids(ids, replace))

    def _place(self, ids: list[str], packed: np.ndarray, nutt: np.ndarray, pos: dict[str, int]) -> None:
        """Write packed rows: known ids in place, new ids appended."""
        known = [s in pos for s in ids]
        if any(known):  # replacements stay in place; the others are appended below
            src = np.flatnonzero(known)
            dst = [pos[ids[i]] for i in src]
            self._rows[dst], self._nutt[dst] = packed[src], nutt[src]
            fresh = np.flatnonzero(~np.array(known))
            packed, nutt, ids = packed[fresh], nutt[fresh], [ids[i] for i in fresh]
        self._grow(len(ids))
        n = self._n
        self._rows[n:n + len(ids)], self._nutt[n:n + len(ids)] = packed, nutt
        pos.update(zip(ids, range(n, n + len(ids))))
        self.speakers.extend(ids)
        self._n += len(ids)
        self._inv_norms, self._dirty = None, True

    def _grow(self, extra: int) -> None:
        """Make room for `extra` more rows (capacity doubles, so many single adds stay linear)."""
        need = self._n + extra
        if need <= len(self._rows):
            return
        cap = max(need, 2 * len(self._rows), 16)
        rows = np.zeros((cap, self._rows.shape[1]), np.uint8)
        rows[:self._n] = self._rows[:self._n]
        nutt = np.zeros(cap, np.uint32)
        nutt[:self._n] = self._nutt[:self._n]
        self._rows, self._nutt = rows, nutt

    def remove(self, speaker_id: str) -> None:
        """Delete one speaker."""
        self._need_writable()
        i = self._row_of(speaker_id)
        n = self._n
        self._rows[i:n - 1] = self._rows[i + 1:n].copy()
        self._nutt[i:n - 1] = self._nutt[i + 1:n].copy()
        del self.speakers[i]
        self._n -= 1
        self._index, self._inv_norms, self._dirty = None, None, True

    def set_thresholds(self, thresholds: dict[str, float], source: str | None, *, replace: bool = False) -> None:
        """Record calibrated cosine thresholds per format and where they came from (merged into the existing
        ones; `replace` drops those first, so an empty dict leaves the store on the model's default)."""
        self._need_writable()
        self._dirty = True
        if replace:
            self._header["thresholds"], self._header["threshold_source"] = {}, None
        clean = {}
        for fmt, value in thresholds.items():
            if fmt not in FORMATS:
                raise StoreError(f"{self.path}: threshold for unknown format {fmt!r}")
            try:
                v = float(value)  # numpy scalars included
            except (TypeError, ValueError):
                v = math.nan
            if not -1.0 <= v <= 1.0:
                raise StoreError(f"{self.path}: threshold for {fmt} must be a cosine in [-1, 1], got {value!r}")
            clean[fmt] = v
        self._header["thresholds"] = {**self._header["thresholds"], **clean}
        if clean or not replace:
            self._header["threshold_source"] = str(source)

    # -- scoring -------------------------------------------------------------------------------------

    def _inverse_norms(self) -> np.ndarray:
        if self._inv_norms is None:
            norms = self.codec.norms(self.packed, self.dim)
            finite = np.isfinite(norms)
            if not finite.all():  # NaN codes, or a block scale so large that the norm overflows
                self._refuse_row(int(np.argmin(finite)))
            with np.errstate(divide="ignore"):
                self._inv_norms = np.where(norms > 0, np.float32(1) / norms, np.float32(0)).astype(np.float32)
        return self._inv_norms

    def _refuse_row(self, row: int) -> None:
        """A voiceprint whose codes decode to NaN or infinity (a hand-edited file) is never scored."""
        raise StoreError(f"{self.path}: corrupt: the voiceprint of {self.speakers[row]!r} decodes to NaN or "
                         "infinite values")

    def score(self, query: np.ndarray, speaker_id: str) -> float:
        """Cosine of one (dim,) or (1, dim) query embedding against one enrolled speaker (1:1 verification).

        Several queries are refused (use identify or score_pairs) rather than silently scoring the first.
        """
        q = self._check_embeddings(query, "query")
        if len(q) != 1:
            raise StoreError(f"{self.path}: score takes one query embedding, got {len(q)}; "
                             "use score_pairs or identify for several")
        return float(self.score_pairs([speaker_id], q)[0])  # one row decodes in numpy: no compiled kernels to load

    def identify(self, queries: np.ndarray, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (speaker id, cosine) per (q, dim) query, best first (1:N identification)."""
        Q = self._check_embeddings(queries, "queries")
        k = min(int(top_k), self._n)
        if k <= 0:
            return [[] for _ in Q]
        vals, idx = [], []
        for lo, cos in self.codec.iter_cosine(self.packed, self.dim, Q, self._inverse_norms()):
            finite = np.isfinite(cos).all(axis=0)
            if not finite.all():  # a row whose values overflow the dot product: never a NaN candidate
                self._refuse_row(lo + int(np.argmin(finite)))
            kk = min(k, cos.shape[1])
            bi, bv = np.empty((len(Q), kk), np.int64), np.empty((len(Q), kk), np.float32)
            kernels.top_k(cos, kk, bi, bv)
            vals.append(bv)
            idx.append(bi + lo)
        cat_v, cat_i = np.concatenate(vals, axis=1), np.concatenate(idx, axis=1)
        best_i, best_v = np.empty((len(Q), k), np.int64), np.empty((len(Q), k), np.float32)
        kernels.top_k(cat_v, k, best_i, best_v)  # chunks are in row order, so ties still favour lower rows
        ids = self.speakers
        return [[(ids[cat_i[r, c]], float(v)) for c, v in zip(best_i[r], best_v[r])] for r in range(len(Q))]

    def score_pairs(self, speaker_ids: Sequence[str], queries: np.ndarray) -> np.ndarray:
        """(m,) float32 cosines for a trial list: pair i is (speaker_ids[i], queries[i])."""
        Q = self._check_embeddings(queries, "queries")
        if len(speaker_ids) != len(Q):
            raise StoreError(f"{self.path}: {len(speaker_ids)} speaker ids for {len(Q)} queries")
        rows = np.array([self._row_of(s) for s in speaker_ids], np.int64)
        out = np.empty(len(Q), np.float32)
        for lo in range(0, len(Q), 8192):
            with np.errstate(over="ignore", invalid="ignore"):  # overflowing rows are refused just below
                D = self.codec.decode(self._rows[rows[lo:lo + 8192]], self.dim).astype(np.float64)
            finite = np.isfinite(D).all(axis=1)
            if not finite.all():
                self._refuse_row(int(rows[lo + int(np.argmin(finite))]))
            q = Q[lo:lo + 8192].astype(np.float64)
            den = np.linalg.norm(D, axis=1) * np.linalg.norm(q, axis=1)
            out[lo:lo + len(q)] = np.where(den > 0, (D * q).sum(axis=1) / np.where(den > 0, den, 1), 0.0)
        return out

    # -- description ---------------------------------------------------------------------------------

    def info(self) -> dict:
        """Everything `voxfloat info` shows about the store (the speaker ids are parsed, so checked, too)."""
        h, nutt, _ = self._header, self.n_utterances, self.speakers
        return {
            "path": str(self.path),
            "version": self._version,
            "format": self.format,
            "scale": self.scale,
            "dim": self.dim,
            "count": self._n,
            "bytes_per_voiceprint": self.codec.row_bytes(self.dim),
            "bits_per_value": 8 * self.codec.row_bytes(self.dim) / self.dim,
            "file_size": self._file_size,
            "model": dict(self.model),
            "preprocessing": h.get("preprocessing", UNTRIMMED),
            "thresholds": self.thresholds,
            "threshold": self.threshold,
            "threshold_source": h.get("threshold_source"),
            "enrollment": ("each voiceprint is the L2-normalised mean of its speaker's n utterance embeddings "
                           f"(n = {int(nutt.min())}..{int(nutt.max())}, {int(nutt.sum())} utterances in all)"
                           if self._n else "each voiceprint is the L2-normalised mean of its speaker's utterance "
                           "embeddings (no speakers yet)"),
            "created": h.get("created"),
            "updated": h.get("updated"),
            "checksum": (f"crc32 {self._crc32:08x} ok" if self._crc32 is not None else "not written yet"),
        }

"""Speaker embeddings from an exported model: exact batching, and files decoded while the model runs."""
from __future__ import annotations

import os
import queue
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from voxfloat.errors import UsageError
from voxfloat.runtime.audio import AudioError, load_audio
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME
from voxfloat.runtime.limits import DEFAULT_MAX_SECONDS
from voxfloat.runtime.session import ModelError, check_io, make_session, one_line, read_card
from voxfloat.runtime.vad import OFF, RECORDING_PER_SPEECH, SpeechTrimmer

if TYPE_CHECKING:
    from tqdm import tqdm

PathLike = str | os.PathLike


@dataclass
class EmbedResult:
    """Embeddings of the files that decoded, in input order, and one error line per file that did not."""

    embeddings: np.ndarray                                           # (n_ok, D) float32
    paths_ok: list[PathLike] = field(default_factory=list)          # as given, row i <-> paths_ok[i]
    errors: list[tuple[PathLike, str]] = field(default_factory=list)  # (path, "<path>: <problem>")


class SpeakerEncoder:
    """An exported voxfloat model on CPU or CUDA: waveform(s) at card.sample_rate in, embeddings out.

    Batches hold only inputs of identical length: zero padding changes the embedding of every
    upstream encoder, so a batch gives exactly what one-by-one runs give.
    """

    def __init__(self, model_path: PathLike, device: str = "auto", threads: int = 0, batch_size: int = 16,
                 device_id: int = 0, io_binding: bool | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 vad: bool = True):
        self.path = Path(model_path)
        self.card = read_card(self.path)  # metadata checked, fingerprint computed from the graph itself
        if self.card.quantization:  # a quantized child: its graph must be the one its parity was measured on
            from voxfloat.runtime.quantize import check_recorded_fingerprint
            check_recorded_fingerprint(self.path, self.card)
        self.session, self.device = make_session(self.path, device, threads, device_id)
        check_io(self.path, self.session)
        self.max_seconds = float(max_seconds)
        self.trimmer = SpeechTrimmer(self.card.sample_rate) if vad else None  # files and bytes: speech only
        self.providers: list[str] = self.session.get_providers()
        self.batch_size = max(1, int(batch_size))
        self._device_id = device_id
        bind = self.device == "cuda" if io_binding is None else io_binding  # None: I/O binding on the GPU only
        self._bind_device = self.device if bind else None
        self._probe()

    def _probe(self) -> None:
        """One run on a short noise input at load, so a graph whose output width differs from its metadata, or
        that fails or gives NaN, is refused with one line before any real audio (_run checks the shape)."""
        samples = int(self.card.min_seconds * self.card.sample_rate) + 1
        noise = np.random.default_rng(0).uniform(-0.1, 0.1, (1, samples)).astype(np.float32)
        if not np.isfinite(self._run(noise)).all():
            raise ModelError(f"{self.path}: the model gives NaN or inf on a test input (noise, {samples} samples)")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One session run on a (B, T) float32 batch; (B, D) float32."""
        try:
            if self._bind_device:
                out = self._run_bound(batch, self._bind_device)
            else:
                out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception as e:  # onnxruntime's Fail / RuntimeException on shapes the graph cannot take
            raise ModelError(f"{self.path}: inference failed on input {list(batch.shape)} ({one_line(e)})") from None
        want = (batch.shape[0], self.card.embedding_dim)
        if not isinstance(out, np.ndarray) or out.shape != want:
            raise ModelError(f"{self.path}: the model gave output of shape {list(np.shape(out))} for input "
                             f"{list(batch.shape)}; its metadata promises {list(want)}")
        return out.astype(np.float32, copy=False)

    def _run_bound(self, batch: np.ndarray, device: str) -> np.ndarray:
        """Run with input and output as OrtValues on `device`: one copy in, one copy out, no staging."""
        binding = self.session.io_binding()
        x = ort.OrtValue.ortvalue_from_numpy(batch, device, self._device_id)
        y = ort.OrtValue.ortvalue_from_shape_and_type((batch.shape[0], self.card.embedding_dim), np.float32,
                                                      device, self._device_id)
        binding.bind_ortvalue_input(INPUT_NAME, x)
        binding.bind_ortvalue_output(OUTPUT_NAME, y)
        self.session.run_with_iobinding(binding)
        return y.numpy()

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """Embedding (D,) float32 of one 1-D waveform at card.sample_rate."""
        return self.embed_batch([wave])[0]

    def embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (N, D) in input order; equal-length inputs share runs of up to batch_size.

        A non-finite embedding (NaN or inf) is a ModelError, never returned.
        """
        rows, problems = self.embed_rows(waves)
        for i, problem in enumerate(problems):
            if problem:
                raise ModelError(f"{self.path}: waveform {i}: {problem}")
        return rows

    def embed_rows(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str | None]]:
        """embed_batch without raising for bad rows: (N, D) embeddings and, per row, None or what is wrong with it."""
        arrays = [np.ascontiguousarray(w, dtype=np.float32) for w in waves]
        for i, w in enumerate(arrays):
            if w.ndim != 1 or w.size == 0:
                raise UsageError(f"waveform {i}: expected a non-empty 1-D array, got shape {w.shape}")
        out = np.empty((len(arrays), self.card.embedding_dim), dtype=np.float32)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(arrays):
            by_length[w.size].append(i)
        for idx in by_length.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                out[chunk] = self._run(np.stack([arrays[i] for i in chunk]))
        finite = np.isfinite(out).all(axis=1)
        return out, [None if ok else "the model gave a non-finite embedding (NaN or inf)" for ok in finite]

    @property
    def preprocessing(self) -> dict:
        """What is done to decoded audio before the model sees it (a store records it at enrollment)."""
        return self.trimmer.preprocessing if self.trimmer else dict(OFF)

    @property
    def recording_limit(self) -> float:
        """Longest decoded audio accepted, in seconds: with trimming, max_seconds bounds the speech instead."""
        return self.max_seconds * RECORDING_PER_SPEECH if self.trimmer else self.max_seconds

    def speech(self, wave: np.ndarray, name: str) -> np.ndarray:
        """What the model embeds of a decoded waveform: its detected speech, the first max_seconds at most
        (AudioError naming `name` if there is none); without trimming, the waveform itself."""
        if self.trimmer is None:
            return wave
        return self.trimmer.trim(wave, name, self.card.min_seconds, self.max_seconds)

    def _decoded(self, paths: Sequence[PathLike]) -> Iterator[tuple[PathLike, np.ndarray | str]]:
        """Yield (path, waveform or error line) in order, decoding in a background thread."""
        q: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        stop = threading.Event()
        sr, min_s, max_s = self.card.sample_rate, self.card.min_seconds, self.recording_limit

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for p in paths:
                    try:
                        item: np.ndarray | str = self.speech(load_audio(p, sr, min_s, max_s), str(p))
                    except AudioError as e:
                        item = str(e)
                    if not put((p, item)):
                        return
                put(None)
            except BaseException as e:  # anything unexpected is re-raised in the caller's thread
                put(e)

        thread = threading.Thread(target=work, name="voxfloat-decode", daemon=True)
        thread.start()
        try:
            while (got := q.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            stop.set()
            thread.join()

    def embed_files(self, paths: Sequence[PathLike], progress: bool = False) -> EmbedResult:
        """Embed audio files; bad files are listed in .errors and skipped, the rest embedded in order."""
        paths = list(paths)
        rows: list[np.ndarray] = []
        result = EmbedResult(np.empty((0, self.card.embedding_dim), np.float32))
        pending: list[tuple[PathLike, np.ndarray]] = []

        def flush() -> None:
            if pending:
                embedded, problems = self.embed_rows([w for _, w in pending])
                good = [i for i, problem in enumerate(problems) if problem is None]
                rows.append(embedded[good])
                result.paths_ok.extend(pending[i][0] for i in good)
                result.errors.extend((p, f"{p}: {problem}") for (p, _), problem in zip(pending, problems) if problem)
                pending.clear()

        with _progress_bar(len(paths)) if progress else nullcontext() as bar, closing(self._decoded(paths)) as items:
            for p, item in items:
                if isinstance(item, str):
                    result.errors.append((p, item))
                else:
                    pending.append((p, item))
                    if len(pending) >= self.batch_size:
                        flush()
                if bar is not None:
                    bar.update(1)
            flush()
        if rows:
            result.embeddings = np.concatenate(rows)
        return result


def _progress_bar(total: int) -> tqdm:
    """A tqdm bar on stderr (tqdm is imported only when a bar is shown: its import costs ~0.1 s)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="embedding")

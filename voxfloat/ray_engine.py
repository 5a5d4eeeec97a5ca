"""Embedding on a Ray cluster: the file list as a Ray dataset, an actor pool that opens the ONNX session once.

`RayEncoder.embed_files` returns what `SpeakerEncoder.embed_files` returns (rows in input order, one error
line per bad file), so enrollment reduces the embeddings to voiceprints with the local engine's own code and
the driver writes the store. Each actor embeds its batch with the local runtime, keeping its exact
equal-length batching and speech trimming. Actors are restarted and their batches retried when a worker
dies; audio and model paths must be readable on every node (a shared filesystem), as with any Ray file list.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxfloat.errors import UsageError, VoxfloatError
from voxfloat.runtime.encoder import EmbedResult

PathLike = str | os.PathLike
BATCH = 32  # files per map_batches call: large enough to fill equal-length batches, small enough to retry


class RayError(VoxfloatError):
    """Ray is missing or the cluster cannot be reached or used."""


def _last_line(e: BaseException) -> str:
    """The last line of an exception's text (Ray puts the worker's own error there), at most 300 characters."""
    lines = str(e).strip().splitlines()
    return lines[-1][:300] if lines else type(e).__name__


class _EmbedActor:
    """One worker: a SpeakerEncoder opened once, applied to batches of file paths."""

    def __init__(self, model: str, encoder_args: dict[str, Any]) -> None:
        from voxfloat.runtime.encoder import SpeakerEncoder

        self.encoder = SpeakerEncoder(model, **encoder_args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        marker = os.environ.get("VOXFLOAT_RAY_PID_DIR")  # fault tests kill a worker that is embedding
        if marker:
            Path(marker, str(os.getpid())).touch()
        paths = [str(p) for p in batch["path"]]
        result = self.encoder.embed_files(paths)
        dim = self.encoder.card.embedding_dim
        rows = np.zeros((len(paths), dim), np.float32)
        errors = np.full(len(paths), "", dtype=object)
        position = {p: i for i, p in enumerate(paths)}
        for p, e in zip(result.paths_ok, result.embeddings):
            rows[position[str(p)]] = e
        for p, message in result.errors:
            errors[position[str(p)]] = message
        return {"index": batch["index"], "embedding": rows, "error": errors}


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to embed: a cluster address (None starts a local one), actors, GPUs per actor."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    batch: int = BATCH

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1 \
                or not self.gpus_per_worker >= 0 or isinstance(self.batch, bool) or self.batch < 1:
            raise UsageError(f"workers must be a whole number >= 1 and gpus-per-worker >= 0, "
                             f"got {self.workers!r} and {self.gpus_per_worker!r}")


class RayEncoder:
    """A SpeakerEncoder whose `embed_files` runs on a pool of Ray actors (see RayOptions).

    Everything else (card, fingerprint, waveforms given in memory) is the driver's own CPU encoder, built with
    the same `encoder_args` as every actor, so both sides trim and cap audio identically.
    """

    def __init__(self, model: PathLike, encoder_args: dict[str, Any], options: RayOptions) -> None:
        from voxfloat.runtime.encoder import SpeakerEncoder

        try:
            import ray
        except ImportError:
            raise RayError("--engine ray needs Ray: pip install 'voxfloat[ray]'") from None
        args = {k: v for k, v in encoder_args.items() if k != "device"}
        self.local = SpeakerEncoder(model, device="cpu", **args)
        self.model = str(Path(model).resolve())
        self.options = options
        # a worker asked for no GPU must not try CUDA; one given a GPU must fail rather than fall back quietly
        self.actor_args = {**args, "device": "cuda" if options.gpus_per_worker > 0 else "cpu"}
        if not ray.is_initialized():
            try:
                ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=False)
            except Exception as e:  # ConnectionError, RuntimeError, ValueError from a bad address
                raise RayError(f"cannot start or reach the Ray cluster {options.address or '(local)'}: "
                               f"{_last_line(e)}") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    @property
    def device(self) -> str:
        """Where files are embedded, as reports show it: ray, the actors' device and how many there are."""
        return f"ray ({self.options.workers} x {self.actor_args['device']})"

    def embed_files(self, paths: Sequence[PathLike], progress: bool = False) -> EmbedResult:
        """Embeddings of the files that decoded, in input order, and one error line per file that did not."""
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        paths = list(paths)
        result = EmbedResult(np.empty((0, self.local.card.embedding_dim), np.float32))
        if not paths:
            return result
        DataContext.get_current().enable_progress_bars = progress
        items = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
        o = self.options
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // o.batch)))
        ds = ds.map_batches(_EmbedActor, batch_size=o.batch, batch_format="numpy",
                            compute=ActorPoolStrategy(size=o.workers), num_cpus=1, num_gpus=o.gpus_per_worker,
                            fn_constructor_args=(self.model, self.actor_args))
        # Ray Data restarts dead pool actors and retries their batches (max_restarts = max_task_retries = -1)
        try:
            out = ds.take_all()
        except Exception as e:  # a model that fails on every worker surfaces here as a RayTaskError
            raise RayError(f"{self.model}: Ray workers failed ({_last_line(e)})") from None
        got = {int(r["index"]): r for r in out}
        if sorted(got) != list(range(len(paths))):
            raise RayError(f"Ray returned {len(got)} of {len(paths)} files: some were lost or counted twice")
        ok = [i for i in range(len(paths)) if not got[i]["error"]]
        result.paths_ok = [paths[i] for i in ok]
        result.errors = [(paths[i], str(got[i]["error"])) for i in range(len(paths)) if got[i]["error"]]
        if ok:
            result.embeddings = np.stack([np.asarray(got[i]["embedding"], np.float32) for i in ok])
        return result

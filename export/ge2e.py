"""GE2E LSTM speaker encoder (resemblyzer's VoiceEncoder) with its whole pipeline in one graph.

waveform (B, T) at 16 kHz -> volume normalisation to -30 dBFS (increase only) -> 40-band mel power
spectrogram (25 ms / 10 ms) -> 1.6 s partial windows at 1.3 per second -> 3-layer LSTM, linear,
ReLU, L2 per partial -> mean over partials -> L2. The embedded default model: the weights are
resemblyzer 0.1.4's `pretrained.pt` (Apache-2.0), read from the installed wheel.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from voxfloat.export.core import Built, ExportError, check_state_dict, fingerprint, load_checkpoint
from voxfloat.export.frontends import MelPower
from voxfloat.runtime.card import ModelCard

CHECKPOINT = None            # optional: the resemblyzer wheel's pretrained.pt by default
SAMPLE_RATE = 16000
N_FFT = 400                 # 25 ms window
HOP = 160                   # 10 ms step
N_MELS = 40
HIDDEN = 256
LAYERS = 3
EMBEDDING_DIM = 256
PARTIAL_FRAMES = 160        # 1.6 s partial utterances
PARTIAL_STEP = 77           # round(16000 / 1.3 / 160): resemblyzer's rate of 1.3 partials a second
MIN_COVERAGE = 19200        # samples: 0.75 of a partial (160 * 160) must be real audio to keep the last one
MAX_RIGHT_PAD = HOP * (PARTIAL_FRAMES - 1) + N_FFT // 2  # the most zeros any input needs on the right
TARGET_RMS = 10 ** (-30 / 20)  # -30 dBFS as a linear RMS of full scale

LAYOUT = "resemblyzer GE2E (model_state with lstm.*_l0..l2 and linear.*)"
PACKAGE_HINT = "pip install --no-deps resemblyzer==0.1.4"

# Cosine threshold of the default weights on real recorded speech with the enrollment README.md recommends (3
# utterances of >= 3 s a speaker), speech trimming on: bench/default_threshold.py pools 20 random enrollments of
# 23 real voices (Debian's Asterisk prompts and KLettres recordings; 1840 genuine / 40480 impostor held-out trials)
# and takes voxfloat.selfcal's operating point (impostor z = 1.5 x genuine z): 94.5% genuine and 2.2% impostors
# accepted. The former 0.855 (EER of single utterances on the synthetic MBROLA corpus) accepted 61.0% there.
DEFAULT_FINGERPRINT = "606b2df4965ed67406530333e3cc80d68ab833a8b9c23670b0c08de737fe5a49"
DEFAULT_THRESHOLD = 0.762
DEFAULT_THRESHOLD_SOURCE = ("real speech, 3-utterance enrollments of 23 Debian voices (bench/default_threshold.py): "
                            "accepts 94.5% genuine, 2.2% impostors; stores self-calibrate at enrollment")


def normalize_volume(waveform: torch.Tensor) -> torch.Tensor:
    """resemblyzer's normalize_volume(wav, -30, increase_only=True), per row: gain max(1, target / RMS)."""
    rms = waveform.pow(2).mean(dim=1, keepdim=True).sqrt()
    gain = (TARGET_RMS / rms.clamp_min(1e-10)).clamp_min(1.0)
    return waveform * gain


def partial_count(n_samples: torch.Tensor) -> torch.Tensor:
    """How many partials resemblyzer's compute_partial_slices(n, rate=1.3, min_coverage=0.75) gives (int64)."""
    n_frames = (n_samples + HOP) // HOP                       # ceil((n + 1) / 160)
    steps = (n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1).clamp_min(1)
    count = (steps + PARTIAL_STEP - 1) // PARTIAL_STEP         # len(range(0, steps, 77))
    last_start = (count - 1) * PARTIAL_STEP * HOP
    drop = (n_samples - last_start < MIN_COVERAGE) & (count > 1)
    return count - drop.to(count.dtype)


class GE2EEncoder(nn.Module):
    """resemblyzer VoiceEncoder weights (lstm, linear) behind an in-graph front end and partial averaging."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = MelPower(SAMPLE_RATE, N_FFT, HOP, N_MELS)
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING_DIM)

    def embed_partials(self, mels: torch.Tensor) -> torch.Tensor:
        """(N, 160, 40) mel partials -> (N, 256) L2-normalised ReLU embeddings (VoiceEncoder.forward)."""
        _, (hidden, _) = self.lstm(mels)
        e = torch.relu(self.linear(hidden[-1]))
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) float32 16 kHz -> (B, 256) unit-norm embedding; every row must have the same real length."""
        shape = torch._shape_as_tensor(waveform)   # a tensor, so the traced graph keeps B and T dynamic
        batch, n_samples = shape[0], shape[1]
        count = partial_count(n_samples)
        n_frames = (count - 1) * PARTIAL_STEP + PARTIAL_FRAMES
        # Zeros on both sides stand for librosa's center padding and resemblyzer's padding to the last window.
        padded = nn.functional.pad(normalize_volume(waveform), (N_FFT // 2, MAX_RIGHT_PAD))
        padded = padded[:, : (n_frames - 1) * HOP + N_FFT]
        mels = self.frontend(padded)                                              # (B, frames, 40)
        starts = torch.arange(count, device=waveform.device) * PARTIAL_STEP
        index = starts.unsqueeze(1) + torch.arange(PARTIAL_FRAMES, device=waveform.device)
        partials = mels[:, index].reshape(-1, PARTIAL_FRAMES, N_MELS)               # (B * count, 160, 40)
        e = self.embed_partials(partials).reshape(batch, -1, EMBEDDING_DIM).mean(dim=1)
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


def default_checkpoint() -> tuple[Path, str]:
    """Path and version of pretrained.pt in the installed resemblyzer wheel, found without importing it."""
    spec = importlib.util.find_spec("resemblyzer")  # a top-level spec: nothing is executed
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(f"the GE2E default weights come from the resemblyzer wheel, which is not installed: {PACKAGE_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise ExportError(f"{path}: missing from the installed resemblyzer package; reinstall it: {PACKAGE_HINT}")
    try:
        version = importlib.metadata.version("resemblyzer")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return path, version


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The lstm/linear tensors of a VoiceEncoder checkpoint ({"model_state": ...} or a bare state dict)."""
    try:
        raw = load_checkpoint(path)
    except ExportError as e:
        raise ExportError(f"{e}; expected a {LAYOUT} checkpoint") from None
    state = raw.get("model_state", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: not a {LAYOUT} checkpoint: no state dict of tensors inside")
    # similarity_weight/bias are the GE2E training loss's scale and bias: not part of the encoder.
    return check_state_dict(path, state, GE2EEncoder(), LAYOUT, ignore_prefixes=("similarity_",))


def build(arch: str, checkpoint: Path | None) -> Built:
    """GE2E encoder from `checkpoint`, or from resemblyzer's pretrained.pt when it is None."""
    if checkpoint is None:
        path, version = default_checkpoint()
        source = f"resemblyzer {version} pretrained.pt (Apache-2.0), VoiceEncoder"
    else:
        path, source = Path(checkpoint), f"{Path(checkpoint).name} in resemblyzer VoiceEncoder layout"
    state = load_state(path)
    encoder = GE2EEncoder()
    encoder.load_state_dict(state, strict=True)
    fp = fingerprint(arch, state)
    known = fp == DEFAULT_FINGERPRINT  # the measured threshold belongs to these weights only
    card = ModelCard(
        arch=arch, source=source, embedding_dim=EMBEDDING_DIM, fingerprint=fp, sample_rate=SAMPLE_RATE,
        frontend=("volume to -30 dBFS (increase only); librosa mel power 40 bands, n_fft 400 hann, hop 160, "
                  "zero-padded centre, no log; 160-frame partials every 77 frames (rate 1.3, coverage 0.75), "
                  "mean of L2-normed partial embeddings"),
        threshold=DEFAULT_THRESHOLD if known else None,
        threshold_source=DEFAULT_THRESHOLD_SOURCE if known else "",
        min_seconds=0.5,
    )
    return Built(encoder=encoder.eval(), card=card, dynamo=False)

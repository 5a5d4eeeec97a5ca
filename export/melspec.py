"""librosa-style mel power spectrogram as plain torch ops (conv1d DFT), so it exports to ONNX.

Matches `librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels)` with its defaults
(periodic Hann window, power 2, Slaney mel filters, no log) on frames that lie inside the
caller's zero-padded waveform: centring is the caller's job (GE2E pads with zeros, which is
what librosa >= 0.10's default pad_mode="constant" does).
"""
from __future__ import annotations

import librosa
import numpy as np
import torch
from torch import nn


class MelPower(nn.Module):
    """(B, T') padded waveform -> (B, frames, n_mels) mel power spectrogram, frames = 1 + (T' - n_fft) // hop."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int):
        super().__init__()
        self.hop = hop
        n_bins = n_fft // 2 + 1
        window = librosa.filters.get_window("hann", n_fft, fftbins=True)
        angle = 2 * np.pi * np.outer(np.arange(n_bins), np.arange(n_fft)) / n_fft
        # Real and imaginary DFT rows with the window folded in: one strided conv1d does framing + DFT.
        kernel = np.concatenate([np.cos(angle), -np.sin(angle)]) * window
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        # Constants, not weights: kept out of the state dict so checkpoints load strictly.
        self.register_buffer("dft", torch.tensor(kernel, dtype=torch.float32).unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.tensor(mel, dtype=torch.float32), persistent=False)

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(padded.unsqueeze(1), self.dft, stride=self.hop)  # (B, 2 * bins, frames)
        re, im = spec.chunk(2, dim=1)
        power = re * re + im * im
        return torch.matmul(self.mel, power).transpose(1, 2)

"""Kaldi-style log-mel fbank as plain torch ops, equal to torchaudio.compliance.kaldi.fbank and exportable to ONNX.

torchaudio is not a dependency and its FFT does not export, so framing is a Gather and the 512-point FFT a
DFT matrix product; every other step follows torchaudio's order (DC removal, pre-emphasis, window, power,
mel, log floor) with snip_edges=True, dither=0, 25/10 ms frames, 80 bins from 20 Hz to Nyquist.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
FRAME_LENGTH = 400   # 25 ms
FRAME_SHIFT = 160    # 10 ms
N_FFT = 512          # next power of two above the frame length
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
PREEMPHASIS = 0.97
LOG_FLOOR = float(np.finfo(np.float32).eps)  # torch.finfo(torch.float).eps, as Kaldi/torchaudio use
WINDOWS = ("povey", "hamming")


def kaldi_window(window: str) -> torch.Tensor:
    """The 400-sample analysis window as torchaudio builds it (symmetric, float32)."""
    if window == "povey":
        return torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).pow(0.85)
    if window == "hamming":
        return torch.hamming_window(FRAME_LENGTH, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    raise ValueError(f"unknown fbank window {window!r}; choose one of {', '.join(WINDOWS)}")


def kaldi_mel_banks() -> torch.Tensor:
    """(N_FFT // 2, 80) triangular Kaldi mel filters, 20 Hz to Nyquist, computed in float32 like torchaudio.

    torchaudio pads the bank with a zero column for the Nyquist bin; that bin is simply left out here.
    """
    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    mel_low, mel_high = mel(LOW_FREQ), mel(SAMPLE_RATE / 2)
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    b = torch.arange(NUM_MEL_BINS).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    freqs = (SAMPLE_RATE / N_FFT) * torch.arange(N_FFT // 2)
    m = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up, down = (m - left) / (center - left), (right - m) / (right - center)
    return torch.clamp(torch.min(up, down), min=0.0).t().contiguous().float()


def dft_matrix() -> torch.Tensor:
    """(400, 2 * N_FFT // 2) real DFT of a zero-padded 512-point frame: cos columns then -sin columns."""
    n = np.arange(FRAME_LENGTH)[:, None]
    k = np.arange(N_FFT // 2)[None, :]
    angle = 2.0 * np.pi * ((n * k) % N_FFT) / N_FFT  # exact integer phase before the float64 trig
    return torch.from_numpy(np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32))


class KaldiFbank(nn.Module):
    """Waveform (B, T) at 16 kHz -> log-mel fbank (B, frames, 80), frames = 1 + (T - 400) // 160.

    `input_scale` multiplies the waveform first (1 for 3D-Speaker, 32768 for WeSpeaker); `cmn` subtracts
    the per-utterance mean over frames (both upstreams do, without variance normalisation).
    """

    def __init__(self, window: str, input_scale: float, cmn: bool = True):
        super().__init__()
        self.window_type, self.input_scale, self.cmn = window, float(input_scale), bool(cmn)
        self.register_buffer("window", kaldi_window(window), persistent=False)
        self.register_buffer("dft", dft_matrix(), persistent=False)
        self.register_buffer("mel", kaldi_mel_banks(), persistent=False)
        self.register_buffer("offsets", torch.arange(FRAME_LENGTH), persistent=False)

    def describe(self) -> str:
        """One line for the model card."""
        return (f"kaldi fbank 80 mel 20-8000 Hz, 25/10 ms, {self.window_type} window, snip_edges, "
                f"input x{self.input_scale:g}, pre-emphasis 0.97, log floor FLT_EPSILON"
                + (", per-utterance mean subtracted" if self.cmn else ""))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform * self.input_scale
        n_frames = torch.div(x.shape[1] - FRAME_LENGTH, FRAME_SHIFT, rounding_mode="floor") + 1
        starts = torch.arange(n_frames, device=x.device) * FRAME_SHIFT
        frames = x[:, starts.unsqueeze(1) + self.offsets]                  # (B, F, 400)
        frames = frames - frames.mean(dim=-1, keepdim=True)                 # remove DC offset
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)   # replicate the first sample
        frames = (frames - PREEMPHASIS * previous) * self.window
        spec = frames @ self.dft                                            # (B, F, 2 * 256)
        re, im = spec[..., : N_FFT // 2], spec[..., N_FFT // 2:]
        feats = torch.log(torch.clamp((re * re + im * im) @ self.mel, min=LOG_FLOOR))
        if self.cmn:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats

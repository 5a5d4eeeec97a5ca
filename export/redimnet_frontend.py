"""ReDimNet's in-model log-mel front end (upstream `MelBanks`), as real torch ops that export to ONNX.

Upstream runs torchaudio's MelSpectrogram, whose complex STFT breaks the ONNX exporter; here the STFT
is one strided conv1d whose kernels are the checkpoint's window times a real DFT basis. The window,
mel filterbank and pre-emphasis filter are the checkpoint's own buffers, under upstream's key names.
"""
from __future__ import annotations

import math

import torch
from torch import nn

N_FFT = 512        # MelBanks defaults; the checkpoint's window and filterbank shapes must agree
WIN_LENGTH = 400
SPEC_NORMS = ("mn", "mvn", "bn")


class NormalizeAudio(nn.Module):
    """Per-utterance zero mean, unit (biased) std of the waveform (`norm_signal=True`)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True, unbiased=False) + self.eps)


class PreEmphasis(nn.Module):
    """y[n] = x[n] - 0.97 x[n-1] with x[-1] := x[1] (reflect pad), filter taken from the checkpoint."""

    def __init__(self):
        super().__init__()
        self.register_buffer("flipped_filter", torch.tensor([[[-0.97, 1.0]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.unsqueeze(1), (1, 0), mode="reflect")
        return nn.functional.conv1d(x, self.flipped_filter).squeeze(1)


class Spectrogram(nn.Module):
    """Power STFT (center=True, reflect pad, window zero-padded centrally to n_fft): (B, N) -> (B, 257, 1 + N//hop).

    Only the win_length taps inside the padded window are non-zero, so framing starts n_fft/2 - (n_fft -
    win)/2 = win/2 samples into the reflect pad; the DFT phase offset this drops does not change the power.
    """

    def __init__(self, hop_length: int):
        super().__init__()
        self.hop_length = hop_length
        self.register_buffer("window", torch.hamming_window(WIN_LENGTH))
        n = torch.arange(WIN_LENGTH, dtype=torch.float64)
        k = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(k, n) / N_FFT
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]).float()
        self.register_buffer("basis", basis.unsqueeze(1), persistent=False)  # (2*257, 1, win)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.unsqueeze(1), (WIN_LENGTH // 2, WIN_LENGTH // 2), mode="reflect")
        spec = nn.functional.conv1d(x, self.basis * self.window, stride=self.hop_length)
        re, im = spec.chunk(2, dim=1)
        return re * re + im * im


class MelScale(nn.Module):
    """(B, 257, T) power -> (B, n_mels, T) with the checkpoint's (257, n_mels) filterbank `fb`."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("fb", torch.zeros(N_FFT // 2 + 1, n_mels))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(1, 2), self.fb).transpose(1, 2)


class MelSpectrogram(nn.Module):
    """torchaudio.transforms.MelSpectrogram's two children, with the same buffer names."""

    def __init__(self, n_mels: int, hop_length: int):
        super().__init__()
        self.spectrogram = Spectrogram(hop_length)
        self.mel_scale = MelScale(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(x))


class MelBanks(nn.Module):
    """Waveform (B, N) in [-1, 1] -> normalised log-mel (B, n_mels, 1 + N//hop), as upstream in eval mode."""

    def __init__(self, n_mels: int, hop_length: int, norm_signal: bool = False, do_preemph: bool = True,
                 spec_norm: str = "mn"):
        super().__init__()
        self.torchfbank = nn.Sequential(NormalizeAudio() if norm_signal else nn.Identity(),
                                        PreEmphasis() if do_preemph else nn.Identity(),
                                        MelSpectrogram(n_mels, hop_length))
        self.spec_norm_type = spec_norm
        if spec_norm == "bn":
            self.spec_norm = nn.BatchNorm1d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log(self.torchfbank(x.float()) + 1e-6)
        if self.spec_norm_type == "bn":
            return self.spec_norm(x)
        x = x - x.mean(dim=-1, keepdim=True)
        if self.spec_norm_type == "mvn":
            x = x / (x.std(dim=-1, keepdim=True) + 1e-8)
        return x

"""The in-graph front ends, as plain torch ops that export to ONNX (no complex STFT, no torchaudio).

KaldiFbank: torchaudio.compliance.kaldi.fbank as WeSpeaker and 3D-Speaker call it (CAM++, ECAPA, ResNet34).
MelPower: librosa's mel power spectrogram as resemblyzer calls it (GE2E).
MelBanks: ReDimNet's log-mel (upstream `MelBanks` over torchaudio's MelSpectrogram), with the checkpoint's buffers.
"""
from __future__ import annotations

import math

import librosa
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
SPEC_NORMS = ("mn", "mvn", "bn")  # ReDimNet's spec_norm choices


def dft_basis(frame: int, n_fft: int, bins: int) -> np.ndarray:
    """(2 * bins, frame) float64 real DFT of a frame zero-padded to n_fft points: cos rows, then -sin rows.

    The phase is reduced to an exact integer (n * k mod n_fft) before the trig, so multiples of pi give exact zeros.
    """
    angle = 2.0 * np.pi * ((np.arange(bins)[:, None] * np.arange(frame)[None, :]) % n_fft) / n_fft
    return np.concatenate([np.cos(angle), -np.sin(angle)])


# ---- Kaldi fbank (WeSpeaker, 3D-Speaker) ----------------------------------------------------------------------

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


class KaldiFbank(nn.Module):
    """Waveform (B, T) at 16 kHz -> log-mel fbank (B, frames, 80), frames = 1 + (T - 400) // 160.

    torchaudio's order of steps (DC removal, pre-emphasis, window, power, mel, log floor) with snip_edges=True,
    dither=0, 25/10 ms frames, 80 bins from 20 Hz to Nyquist; framing is a Gather and the 512-point FFT a DFT
    matrix product. `input_scale` multiplies the waveform first (1 for 3D-Speaker, 32768 for WeSpeaker); `cmn`
    subtracts the per-utterance mean over frames (both upstreams do, without variance normalisation).
    """

    def __init__(self, window: str, input_scale: float, cmn: bool = True):
        super().__init__()
        self.window_type, self.input_scale, self.cmn = window, float(input_scale), bool(cmn)
        dft = np.ascontiguousarray(dft_basis(FRAME_LENGTH, N_FFT, N_FFT // 2).T, dtype=np.float32)  # (400, 512)
        self.register_buffer("window", kaldi_window(window), persistent=False)
        self.register_buffer("dft", torch.from_numpy(dft), persistent=False)
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


# ---- librosa mel power (GE2E) ---------------------------------------------------------------------------------

class MelPower(nn.Module):
    """(B, T') padded waveform -> (B, frames, n_mels) mel power spectrogram, frames = 1 + (T' - n_fft) // hop.

    Matches `librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels)` with its defaults (periodic Hann
    window, power 2, Slaney mel filters, no log) on frames inside the caller's padded waveform: centring is the
    caller's job (GE2E pads with zeros, as librosa >= 0.10's default pad_mode="constant" does).
    """

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int):
        super().__init__()
        self.hop = hop
        n_bins = n_fft // 2 + 1
        window = librosa.filters.get_window("hann", n_fft, fftbins=True)
        # The phase as librosa computes it (not reduced mod n_fft, unlike dft_basis), so the constants of the
        # shipped default model stay bit for bit. One strided conv1d does framing + windowed DFT.
        angle = 2 * np.pi * np.outer(np.arange(n_bins), np.arange(n_fft)) / n_fft
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


# ---- ReDimNet log-mel ------------------------------------------------------------------------------------------
# Upstream runs torchaudio's MelSpectrogram, whose complex STFT breaks the ONNX exporter; here the STFT is one
# strided conv1d whose kernels are the checkpoint's window times a real DFT basis. The window, mel filterbank
# and pre-emphasis filter are the checkpoint's own buffers, under upstream's key names.

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
        self.register_buffer("flipped_filter", torch.tensor([[[-PREEMPHASIS, 1.0]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.unsqueeze(1), (1, 0), mode="reflect")
        return nn.functional.conv1d(x, self.flipped_filter).squeeze(1)


class Spectrogram(nn.Module):
    """Power STFT (center=True, reflect pad, window zero-padded centrally to n_fft): (B, N) -> (B, 257, 1 + N//hop).

    Only the 400 taps inside the padded window are non-zero, so framing starts n_fft/2 - (n_fft - 400)/2 = 200
    samples into the reflect pad; the DFT phase offset this drops does not change the power.
    """

    def __init__(self, hop_length: int):
        super().__init__()
        self.hop_length = hop_length
        self.register_buffer("window", torch.hamming_window(FRAME_LENGTH))
        basis = torch.from_numpy(dft_basis(FRAME_LENGTH, N_FFT, N_FFT // 2 + 1)).float()
        self.register_buffer("basis", basis.unsqueeze(1), persistent=False)  # (2*257, 1, 400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.unsqueeze(1), (FRAME_LENGTH // 2, FRAME_LENGTH // 2), mode="reflect")
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
    """Waveform (B, N) in [-1, 1] -> normalised log-mel (B, n_mels, 1 + N//hop), as ReDimNet upstream in eval mode."""

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

"""WeSpeaker ECAPA-TDNN (ECAPA_TDNN[_GLOB]_c512/_c1024) with the upstream parameter names, waveform in."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voxfloat.export.core import Built
from voxfloat.export.layers import ASTP
from voxfloat.export.wespeaker import WESPEAKER, shape_dim, wespeaker_built, wespeaker_state

CHECKPOINT = "WeSpeaker ECAPA_TDNN avg_model.pt"


class ConvReluBn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d (WeSpeaker's order), 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2ConvReluBn(nn.Module):
    """Res2Net split into `scale` chunks; chunk i >= 1 adds the previous output; the last chunk passes through."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int = 8):
        super().__init__()
        self.width = channels // scale
        pad = dilation * (kernel - 1) // 2
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel, padding=pad, dilation=dilation)
                                   for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, self.width, dim=1)
        out, sp = [], chunks[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i >= 1:
                sp = sp + chunks[i]
            sp = bn(F.relu(conv(sp)))
            out.append(sp)
        out.append(chunks[-1])
        return torch.cat(out, dim=1)


class SEConnect(nn.Module):
    """Squeeze-excitation over time: mean -> Linear -> ReLU -> Linear -> sigmoid gate per channel."""

    def __init__(self, channels: int, bottleneck: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gate.unsqueeze(2)


class SERes2Block(nn.Module):
    """x + SE(Conv1x1(Res2(Conv1x1(x)))), keys se_res2block.0-3 as upstream."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.se_res2block = nn.Sequential(ConvReluBn(channels, channels), Res2ConvReluBn(channels, 3, dilation),
                                          ConvReluBn(channels, channels), SEConnect(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_res2block(x)


class ECAPATDNN(nn.Module):
    """WeSpeaker ECAPA_TDNN: fbank (B, T, 80) -> embedding (B, embed_dim), the upstream tuple's last element."""

    def __init__(self, channels: int = 512, global_context: bool = True, embed_dim: int = 192, feat_dim: int = 80):
        super().__init__()
        self.layer1 = ConvReluBn(feat_dim, channels, kernel=5)
        self.layer2 = SERes2Block(channels, dilation=2)
        self.layer3 = SERes2Block(channels, dilation=3)
        self.layer4 = SERes2Block(channels, dilation=4)
        self.conv = nn.Conv1d(channels * 3, 1536, 1)
        self.pool = ASTP(1536, global_context)
        self.bn = nn.BatchNorm1d(3072)
        self.linear = nn.Linear(3072, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out1 = self.layer1(feats.transpose(1, 2))
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pool(out)))


def variant(state: Mapping[str, torch.Tensor]) -> tuple[int, bool, int]:
    """(channels, global_context, embed_dim) read from the checkpoint's shapes; defaults where keys are absent."""
    channels = shape_dim(state, "layer1.conv.weight", 0, 512)
    channels = channels if channels in (512, 1024) else 512  # other widths are not WeSpeaker classes: shape error
    return channels, shape_dim(state, "pool.linear1.weight", 1, 4608) == 4608, shape_dim(state, "linear.weight", 0, 192)


def build(arch: str, checkpoint: Path) -> Built:
    """Load a WeSpeaker ECAPA-TDNN avg_model.pt (variant detected from its shapes) as a waveform-in encoder."""
    state = wespeaker_state(checkpoint)
    channels, glob, embed_dim = variant(state)
    cls = f"ECAPA_TDNN{'_GLOB' if glob else ''}_c{channels}"
    extra = {"class": cls, "channels": channels, "global_context_att": glob, "embed_dim": embed_dim, "pooling": "ASTP"}
    return wespeaker_built(arch, checkpoint, ECAPATDNN(channels, glob, embed_dim), state,
                           "WeSpeaker ECAPA_TDNN[_GLOB]_c512/_c1024 raw state_dict",
                           f"{WESPEAKER} wespeaker/models/ecapa_tdnn.py {cls}", embed_dim, extra)

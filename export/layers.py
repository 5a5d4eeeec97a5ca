"""Layers several architectures share: statistics pooling (plain and attentive) and the ResNet basic block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VAR_EPS = 1e-7  # WeSpeaker and ReDimNet pooling layers: the floor of every variance under a sqrt


class TSTP(nn.Module):
    """Temporal statistics pooling, (B, C, T) -> (B, 2C): mean and unbiased std over time.

    `eps` is added to the variance under the sqrt (WeSpeaker, ReDimNet); None is 3D-Speaker's plain std().
    """

    def __init__(self, eps: float | None = VAR_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.var(x, dim=-1)
        return torch.cat([x.mean(dim=-1), torch.sqrt(var if self.eps is None else var + self.eps)], dim=-1)


class ASTP(nn.Module):
    """Attentive statistics pooling, (B, C, T) -> (B, 2C); with global context the attention also sees the
    utterance mean and std. Parameter names as WeSpeaker's and ReDimNet's (linear1, linear2)."""

    def __init__(self, dim: int, global_context: bool, bottleneck: int = 128):
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(dim * 3 if global_context else dim, bottleneck, 1)
        self.linear2 = nn.Conv1d(bottleneck, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x
        if self.global_context:
            mean = x.mean(dim=-1, keepdim=True).expand_as(x)
            std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + VAR_EPS).expand_as(x)
            x_in = torch.cat((x, mean, std), dim=1)
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x_in))), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        var = torch.sum(alpha * x * x, dim=2) - mean * mean
        return torch.cat([mean, torch.sqrt(var.clamp(min=VAR_EPS))], dim=1)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual; a 1x1 conv + BN shortcut where the shape changes.

    WeSpeaker ResNet's block, and CAM++'s FCM BasicResBlock, which strides along frequency only: stride (s, 1).
    """

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride not in (1, (1, 1)) or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))

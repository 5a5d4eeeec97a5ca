"""WeSpeaker ResNet34 (TSTP pooling, one embedding layer) with the upstream parameter names, waveform in."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voxfloat.export.core import ExportError
from voxfloat.export.wespeaker import VAR_EPS, WESPEAKER, wespeaker_built, wespeaker_state
from voxfloat.export.registry import Built

BLOCKS = (3, 4, 6, 3)  # ResNet34


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual; a 1x1 conv + BN shortcut where the shape changes.

    Also CAM++'s FCM BasicResBlock, which strides along frequency only: stride (s, 1).
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


class ResNet34(nn.Module):
    """WeSpeaker ResNet34: fbank (B, T, 80) -> embedding (B, embed_dim), the upstream tuple's last element."""

    def __init__(self, embed_dim: int = 256, channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        cin, layers = channels, []
        for i, n in enumerate(BLOCKS):
            cout = channels * 2 ** i
            layers.append(nn.Sequential(*(BasicBlock(cin if j == 0 else cout, cout, 1 if i == 0 or j else 2)
                                          for j in range(n))))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.seg_1 = nn.Linear(2 * (feat_dim // 8) * channels * 8, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))  # (B, C, freq, time)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.flatten(1, 2)                                                # (B, C * freq, time)
        stats = torch.cat([out.mean(dim=-1), torch.sqrt(torch.var(out, dim=-1) + VAR_EPS)], dim=1)  # TSTP
        return self.seg_1(stats)


def build(arch: str, checkpoint: Path | None) -> Built:
    """Load a WeSpeaker ResNet34 avg_model.pt (embedding size from its last layer) as a waveform-in encoder."""
    if checkpoint is None:
        raise ExportError(f"{arch}: --checkpoint is required (WeSpeaker avg_model.pt)")
    state = wespeaker_state(checkpoint)
    head = state.get("seg_1.weight")
    embed_dim = int(head.shape[0]) if head is not None and head.dim() == 2 else 256
    net = ResNet34(embed_dim)
    extra = {"class": "ResNet34", "embed_dim": embed_dim, "pooling": "TSTP", "two_emb_layer": False,
             "params": sum(p.numel() for p in net.parameters())}
    layout = "WeSpeaker ResNet34 (TSTP, two_emb_layer=False) raw state_dict"
    source = f"{WESPEAKER} wespeaker/models/resnet.py ResNet34"
    return wespeaker_built(arch, checkpoint, net, state, layout, source, embed_dim, extra)

"""WeSpeaker ResNet34 (TSTP pooling, one embedding layer) with the upstream parameter names, waveform in."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voxfloat.export.core import Built
from voxfloat.export.layers import TSTP, BasicBlock
from voxfloat.export.wespeaker import WESPEAKER, shape_dim, wespeaker_built, wespeaker_state

CHECKPOINT = "WeSpeaker ResNet34 avg_model.pt"
BLOCKS = (3, 4, 6, 3)  # ResNet34


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
        self.pool = TSTP()
        self.seg_1 = nn.Linear(2 * (feat_dim // 8) * channels * 8, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(feats.transpose(1, 2).unsqueeze(1))))  # (B, C, freq, time)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.seg_1(self.pool(out.flatten(1, 2)))                        # pooled over (B, C * freq, time)


def build(arch: str, checkpoint: Path) -> Built:
    """Load a WeSpeaker ResNet34 avg_model.pt (embedding size from its last layer) as a waveform-in encoder."""
    state = wespeaker_state(checkpoint)
    embed_dim = shape_dim(state, "seg_1.weight", 0, 256)
    extra = {"class": "ResNet34", "embed_dim": embed_dim, "pooling": "TSTP", "two_emb_layer": False}
    return wespeaker_built(arch, checkpoint, ResNet34(embed_dim), state,
                           "WeSpeaker ResNet34 (TSTP, two_emb_layer=False) raw state_dict",
                           f"{WESPEAKER} wespeaker/models/resnet.py ResNet34", embed_dim, extra)

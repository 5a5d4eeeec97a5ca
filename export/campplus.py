"""CAM++ (3D-Speaker `campplus_voxceleb.bin`, WeSpeaker `avg_model.pt`) with the upstream parameter names, waveform in.

Both upstreams share the network and its 937 state-dict keys; they differ in the front end (3D-Speaker: povey
window on the [-1, 1] waveform; WeSpeaker: hamming window on the waveform x 32768) and in the pooling std
(3D-Speaker: unbiased std without eps; WeSpeaker TSTP: sqrt(unbiased var + 1e-7)).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from voxfloat.export.core import Built, ExportError, check_state_dict, fingerprint, load_checkpoint
from voxfloat.export.frontends import KaldiFbank
from voxfloat.export.layers import TSTP, VAR_EPS, BasicBlock
from voxfloat.export.wespeaker import WESPEAKER, wespeaker_built, wespeaker_state
from voxfloat.runtime.card import ModelCard

CHECKPOINT = "3D-Speaker campplus_voxceleb.bin or WeSpeaker avg_model.pt"
EMBEDDING_DIM = 512
SEGMENT = 100  # CAMLayer segment pooling length (frames after the stride-2 TDNN)
THRESHOLD = 0.381
THRESHOLD_SOURCE = "published CAM++ default cosine threshold (voxfloat issue 4); run `voxfloat calibrate` for your data"
THREED_SPEAKER = "modelscope/3D-Speaker@09e7806729ed412d3f216316a552a30c8e9e37fa"
THREED_LAYOUT = "3D-Speaker CAM++ (raw state_dict of CAMPPlus(feat_dim=80, embedding_size=512), campplus_voxceleb.bin)"
WESPEAKER_LAYOUT = "WeSpeaker CAM++ (raw state_dict of CAMPPlus(80, embed_dim=512, TSTP), avg_model.pt)"


def bn_relu(channels: int) -> nn.Sequential:
    """get_nonlinear('batchnorm-relu'): keys <name>.batchnorm.*."""
    return nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(channels), relu=nn.ReLU()))


class FCM(nn.Module):
    """2-D front CNN: (B, 80, T) -> (B, 32 * 10, T), channel-major flattening (index c * 10 + f)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(BasicBlock(channels, channels, (2, 1)), BasicBlock(channels, channels, (1, 1)))
        self.layer2 = nn.Sequential(BasicBlock(channels, channels, (2, 1)), BasicBlock(channels, channels, (1, 1)))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.flatten(1, 2)


def segment_pooling(frames: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices for avg_pool1d(100, 100, ceil_mode=True) and its broadcast back: (frames, S) means, (S, frames) one-hot.

    PyTorch averages the last partial segment over its valid frames only; dividing by the counted frames per
    segment keeps that exact for every length in ONNX (no AveragePool, whose ceil_mode some ONNX Runtime
    versions get wrong). Built once per forward and shared by all 52 CAM layers.
    """
    segment = torch.div(torch.arange(frames, device=like.device), SEGMENT, rounding_mode="floor")
    segments = torch.arange(torch.div(frames + SEGMENT - 1, SEGMENT, rounding_mode="floor"), device=like.device)
    onehot = (segment.unsqueeze(1) == segments.unsqueeze(0)).to(like.dtype)   # (frames, S)
    return onehot / onehot.sum(dim=0, keepdim=True), onehot.t()


def segment_means(x: torch.Tensor, pooling: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """CAMLayer.seg_pooling: each frame gets the mean of its 100-frame segment, (B, C, T) -> (B, C, T)."""
    means, expand = pooling
    return (x @ means) @ expand


class CAMLayer(nn.Module):
    """Context-aware masking: local conv output times a sigmoid mask from utterance and segment means."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(cin, cout, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(cin, cin // 2, 1)
        self.linear2 = nn.Conv1d(cin // 2, cout, 1)

    def forward(self, x: torch.Tensor, pooling: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        context = x.mean(dim=-1, keepdim=True) + segment_means(x, pooling)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class DenseTDNNLayer(nn.Module):
    """CAMDenseTDNNLayer: BN-ReLU, 1x1 bottleneck, BN-ReLU, CAM layer."""

    def __init__(self, cin: int, growth: int, bottleneck: int, kernel: int, dilation: int):
        super().__init__()
        self.nonlinear1 = bn_relu(cin)
        self.linear1 = nn.Conv1d(cin, bottleneck, 1, bias=False)
        self.nonlinear2 = bn_relu(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor, pooling: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))), pooling)


class DenseBlock(nn.Module):
    """CAMDenseTDNNBlock: children tdnnd1..tdnndN, each output concatenated to its input (dense connectivity)."""

    def __init__(self, layers: int, cin: int, growth: int, bottleneck: int, kernel: int, dilation: int):
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", DenseTDNNLayer(cin + i * growth, growth, bottleneck, kernel, dilation))

    def forward(self, x: torch.Tensor, pooling: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x, pooling)], dim=1)
        return x


class Transit(nn.Module):
    """TransitLayer: BN-ReLU then a 1x1 conv halving the channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.nonlinear = bn_relu(cin)
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class Dense(nn.Module):
    """Final DenseLayer: 1x1 conv 1024 -> 512 and BatchNorm1d(affine=False); its output is the embedding."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.linear = nn.Conv1d(cin, cout, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict(batchnorm=nn.BatchNorm1d(cout, affine=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAMPPlus(feat_dim=80, embedding_size=512): fbank (B, T, 80) after CMN -> unnormalised embedding (B, 512)."""

    def __init__(self, std_eps: float | None, growth: int = 32, bottleneck: int = 128, init_channels: int = 128):
        super().__init__()
        self.head = FCM()
        xvector: OrderedDict[str, nn.Module] = OrderedDict()
        xvector["tdnn"] = nn.Sequential(OrderedDict(linear=nn.Conv1d(320, init_channels, 5, stride=2, padding=2, bias=False),
                                                    nonlinear=bn_relu(init_channels)))
        channels = init_channels
        for i, (layers, dilation) in enumerate(((12, 1), (24, 2), (16, 2)), start=1):
            xvector[f"block{i}"] = DenseBlock(layers, channels, growth, bottleneck, 3, dilation)
            channels += layers * growth
            xvector[f"transit{i}"] = Transit(channels, channels // 2)
            channels //= 2
        xvector["out_nonlinear"] = bn_relu(channels)
        xvector["stats"] = TSTP(std_eps)
        xvector["dense"] = Dense(channels * 2, EMBEDDING_DIM)
        self.xvector = nn.ModuleDict(xvector)  # same keys as upstream's nn.Sequential

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.xvector["tdnn"](self.head(feats.transpose(1, 2)))
        pooling = segment_pooling(x.shape[-1], x)
        for i in (1, 2, 3):
            x = self.xvector[f"transit{i}"](self.xvector[f"block{i}"](x, pooling))
        return self.xvector["dense"](self.xvector["stats"](self.xvector["out_nonlinear"](x)))


def threed_speaker_state(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """3D-Speaker's checkpoint is the bare state_dict that CAMPPlus.load_state_dict reads."""
    obj = load_checkpoint(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"{path}: not a {THREED_LAYOUT} checkpoint: expected a raw state_dict of tensors")
    return obj


def build(arch: str, checkpoint: Path) -> Built:
    """Load a CAM++ checkpoint for `arch` ("campplus": 3D-Speaker, "campplus-wespeaker": WeSpeaker)."""
    if arch == "campplus-wespeaker":
        return wespeaker_built(arch, checkpoint, CAMPPlus(std_eps=VAR_EPS), wespeaker_state(checkpoint),
                               WESPEAKER_LAYOUT,
                               f"{WESPEAKER} wespeaker/models/campplus.py CAMPPlus(80, embed_dim=512, TSTP)",
                               EMBEDDING_DIM, {"pooling": "TSTP sqrt(var + 1e-7)"}, THRESHOLD, THRESHOLD_SOURCE)
    net = CAMPPlus(std_eps=None)
    state = check_state_dict(checkpoint, threed_speaker_state(checkpoint), net, THREED_LAYOUT)
    net.load_state_dict(state, strict=True)
    net.eval()
    frontend = KaldiFbank(window="povey", input_scale=1.0, cmn=True)
    source = f"{THREED_SPEAKER} speakerlab/models/campplus/DTDNN.py CAMPPlus(feat_dim=80, embedding_size=512)"
    card = ModelCard(arch=arch, source=source, embedding_dim=EMBEDDING_DIM, fingerprint=fingerprint(arch, state),
                     frontend=frontend.describe(), threshold=THRESHOLD, threshold_source=THRESHOLD_SOURCE,
                     extra={"pooling": "mean + unbiased std (no eps)"})
    sherpa_meta = {"framework": "3d-speaker", "language": "English",
                   "url": "https://www.modelscope.cn/models/iic/speech_campplus_sv_en_voxceleb_16k",
                   "comment": source, "sample_rate": "16000", "output_dim": str(EMBEDDING_DIM),
                   "normalize_samples": "1", "feature_normalize_type": "global-mean"}
    return Built(encoder=nn.Sequential(frontend, net).eval(), card=card, sherpa=net, sherpa_meta=sherpa_meta)

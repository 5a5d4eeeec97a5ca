"""IDRnD ReDimNet (ReDimNetWrap, sizes b0..b6) rebuilt from a release checkpoint's own `model_config`.

Our own definition with upstream's parameter names (IDRnD/ReDimNet redimnet/model.py at the commit
below), so `{'model_config', 'state_dict'}` release files load with strict key checking; the log-mel
front end is inside the model (MelBanks in export/frontends.py) and exports to ONNX with the legacy exporter;
the config is read and checked in export/redimnet_config.py.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from voxfloat.export.core import Built, ExportError, check_state_dict, fingerprint, load_checkpoint
from voxfloat.export.frontends import MelBanks
from voxfloat.export.layers import ASTP, TSTP
from voxfloat.export.redimnet_config import config_error, frontend_text, parse_config, variant_of
from voxfloat.runtime.card import ModelCard

COMMIT = "c994fce84d592930697852f8aa4884ba75760b18"
SOURCE = f"IDRnD/ReDimNet@{COMMIT} redimnet/model.py ReDimNetWrap"
LAYOUT = "IDRnD release layout {'model_config', 'state_dict'}"
THRESHOLD = 0.351
CHECKPOINT = "an IDRnD ReDimNet release file such as b2-vox2-ft_lm.pt"


def _groups(c: int, gdiv: int | None) -> int:
    return c // gdiv if gdiv is not None else 1


class LayerNorm(nn.Module):
    """Upstream's channels-first LayerNorm: normalise over dim 1 of (B, C, ...), biased variance, eps 1e-6."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class To1d(nn.Module):
    """(B, C, F, T) -> (B, F*C, T), frequency-major: channel index f*C + c."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, c * f, t)


class To2d(nn.Module):
    """Inverse of To1d for a stage's (f, c)."""

    def __init__(self, f: int, c: int):
        super().__init__()
        self.f, self.c = f, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.f, self.c, x.shape[2]).permute(0, 2, 1, 3)


class Weight1d(nn.Module):
    """Softmax(w over the N inputs)-weighted sum of all previous 1-D outputs; w is (1, N, C or 1, 1)."""

    def __init__(self, n: int, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, n, c, 1), requires_grad=n > 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.w, dim=1)
        return (w * torch.stack(xs, dim=1)).sum(dim=1)


class ConvNeXtLikeBlock(nn.Module):
    """x + pw(act(BN(cat of grouped convs with the given odd kernels)))  (1-D or 2-D, 'same' padding)."""

    def __init__(self, c: int, dim: int, kernel_sizes: list, gdiv: int | None, act: str = "gelu"):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.dwconvs = nn.ModuleList(
            conv(c, c, ks, padding=(ks // 2 if isinstance(ks, int) else tuple(k // 2 for k in ks)),
                 groups=_groups(c, gdiv)) for ks in kernel_sizes)
        self.norm = bn(c * len(kernel_sizes))
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.pwconv1 = conv(c * len(kernel_sizes), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([dw(x) for dw in self.dwconvs], dim=1)
        return x + self.pwconv1(self.act(self.norm(y)))


class FwSE(nn.Module):
    """Frequency-wise squeeze-excitation over (B, C, F, T)."""

    def __init__(self, num_freq: int, num_feats: int):
        super().__init__()
        self.squeeze = nn.Linear(num_freq, num_feats)
        self.exitation = nn.Linear(num_feats, num_freq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.exitation(torch.relu(self.squeeze(x.mean(dim=(1, 3))))))
        return x * s[:, None, :, None]


class ResBasicBlock(nn.Module):
    """Upstream's basic residual block with equal in/out channels (ReLU before each first BN, as upstream)."""

    def __init__(self, c: int, num_freq: int, gdiv: int | None, use_fwse: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=_groups(c, gdiv))
        self.conv1pw = nn.Conv2d(c, c, 1) if gdiv is not None else nn.Identity()
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, groups=_groups(c, gdiv))
        self.conv2pw = nn.Conv2d(c, c, 1) if gdiv is not None else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c)
        self.se = FwSE(num_freq, min(64, max(c, 32))) if use_fwse else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(torch.relu(self.conv1pw(self.conv1(x))))
        out = self.se(self.bn2(self.conv2pw(self.conv2(out))))
        return torch.relu(out + x)


class ConvBlock2d(nn.Module):
    """One 2-D block of a stage, of the configured type."""

    def __init__(self, c: int, f: int, block_type: str, gdiv: int | None):
        super().__init__()
        if block_type.startswith("convnext_like"):
            act = "relu" if block_type == "convnext_like_relu" else "gelu"
            self.conv_block: nn.Module = ConvNeXtLikeBlock(c, 2, [(3, 3)], gdiv, act)
        else:
            self.conv_block = ResBasicBlock(c, f, gdiv, use_fwse=block_type == "basic_resnet_fwse")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class FeedForward(nn.Module):
    """Transformer MLP with the tanh ('gelu_new') GELU."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden, inner)
        self.output_dense = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dense(x)
        x = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        return self.output_dense(x)


class MultiHeadAttention(nn.Module):
    """Full self-attention over time, q scaled by head_dim**-0.5 before the product (as upstream)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

        q = split(self.q_proj(x) * self.head_dim ** -0.5)
        att = torch.softmax(torch.matmul(q, split(self.k_proj(x)).transpose(2, 3)), dim=-1)
        out = torch.matmul(att, split(self.v_proj(x))).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer on channels-first (B, C, T) input."""

    def __init__(self, dim: int, mlp: int, heads: int = 4):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feed_forward = FeedForward(dim, mlp)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        x = self.layer_norm(x + self.attention(x))
        x = self.final_layer_norm(x + self.feed_forward(x))
        return x.transpose(1, 2)


class PosEncConv(nn.Module):
    """x + LayerNorm(depthwise conv(x)) (the 'att' block's convolutional position encoding)."""

    def __init__(self, c: int, ks: int):
        super().__init__()
        self.conv = nn.Conv1d(c, c, ks, padding=ks // 2, groups=c)
        self.norm = LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv(x))


class TimeContextBlock1d(nn.Module):
    """x + expand(tcm(reduce(x))): the 1-D time-context block of a stage, width hC = C*F // att_block_red."""

    def __init__(self, c: int, hc: int, block_type: str):
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(c, hc, 1), LayerNorm(hc))
        if block_type == "fc":
            self.tcm = nn.Sequential(nn.Conv1d(hc, hc * 2, 1), LayerNorm(hc * 2), nn.GELU(), nn.Conv1d(hc * 2, hc, 1))
        elif block_type == "conv":
            self.tcm = nn.Sequential(*[ConvNeXtLikeBlock(hc, 1, [7, 15, 31], 1) for _ in range(4)])
        elif block_type == "att":
            self.tcm = nn.Sequential(PosEncConv(hc, 59), TransformerEncoderLayer(hc, hc * 2))
        else:  # conv+att
            self.tcm = nn.Sequential(*[ConvNeXtLikeBlock(hc, 1, [ks], 1) for ks in (7, 19, 31, 59)],
                                     TransformerEncoderLayer(hc, hc))
        self.exp_dim_conv = nn.Conv1d(hc, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


class Backbone(nn.Module):
    """ReDimNet proper: stem, stages fed with weighted sums of all earlier 1-D outputs, final weighting."""

    def __init__(self, cfg: dict):
        super().__init__()
        big_f, big_c, gdiv = cfg["F"], cfg["C"], cfg["group_divisor"]
        self.stem = nn.Sequential(nn.Conv2d(1, big_c, 3, padding=1), LayerNorm(big_c), To1d())
        c, f = big_c, big_f
        self.num_stages = len(cfg["stages_setup"])
        for i, (stride, num_blocks, conv_exp, _kernels, att_red) in enumerate(cfg["stages_setup"]):
            layers: list[nn.Module] = [Weight1d(i + 1, big_f * big_c if i > 0 else 1), To2d(f, c),
                                       nn.Conv2d(c, stride * c * conv_exp, (stride, 1), stride=(stride, 1))]
            c, f = stride * c, f // stride
            layers += [ConvBlock2d(c * conv_exp, f, cfg["block_2d_type"], gdiv) for _ in range(num_blocks)]
            if conv_exp != 1:  # squeeze channels back; upstream's ReLU variant needs a 'relu' 1-D type, never valid
                layers.append(nn.Sequential(nn.Conv2d(c * conv_exp, c, 3, padding=1, groups=_groups(c, gdiv)),
                                            nn.BatchNorm2d(c, eps=1e-6), nn.GELU(), nn.Conv2d(c, c, 1)))
            layers.append(To1d())
            if att_red is not None:
                layers.append(TimeContextBlock1d(big_c * big_f, (big_c * big_f) // att_red, cfg["block_1d_type"]))
            setattr(self, f"stage{i}", nn.Sequential(*layers))
        self.fin_wght1d = Weight1d(self.num_stages + 1, big_f * big_c)
        out = cfg["out_channels"]
        self.mfa = (nn.Sequential(nn.Conv1d(big_f * big_c, out, 1), nn.BatchNorm1d(out)) if out is not None
                    else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.stem(x)]
        for i in range(self.num_stages):
            outs.append(getattr(self, f"stage{i}")(outs))
        return self.mfa(self.fin_wght1d(outs))


class ReDimNetWrap(nn.Module):
    """Waveform (B, N) 16 kHz -> unnormalised speaker embedding (B, embed_dim), as upstream in eval mode."""

    def __init__(self, cfg: dict):
        super().__init__()
        sp = cfg["spec_params"]
        self.backbone = Backbone(cfg)
        self.spec = MelBanks(cfg["F"], cfg["hop_length"], norm_signal=sp.get("norm_signal", False),
                             do_preemph=sp.get("do_preemph", True), spec_norm=sp.get("spec_norm", "mn"))
        dim = cfg["out_channels"] if cfg["out_channels"] is not None else cfg["C"] * cfg["F"]
        self.pool = ASTP(dim, cfg["global_context_att"]) if cfg["pooling_func"] == "ASTP" else TSTP()
        self.bn = nn.BatchNorm1d(2 * dim)
        self.linear = nn.Linear(2 * dim, cfg["embed_dim"])
        self.bn2 = nn.BatchNorm1d(cfg["embed_dim"]) if cfg["emb_bn"] else None

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.bn(self.pool(self.backbone(self.spec(waveform).unsqueeze(1)))))
        return self.bn2(out) if self.bn2 is not None else out


def load_model(path: Path) -> tuple[ReDimNetWrap, dict, dict[str, torch.Tensor]]:
    """Read an IDRnD release checkpoint and return the loaded model, its parsed config and state dict."""
    ckpt = load_checkpoint(path)
    wrong = f"{path}: not a ReDimNet checkpoint ({LAYOUT}):"
    if not isinstance(ckpt, Mapping) or "model_config" not in ckpt or "state_dict" not in ckpt:
        got = ", ".join(map(str, list(ckpt)[:3])) + ", ..." if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ExportError(f"{wrong} no model_config and state_dict at the top level (found {got})")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise ExportError(f"{wrong} state_dict is {type(ckpt['state_dict']).__name__}")
    cfg = parse_config(ckpt["model_config"], path)
    try:
        model = ReDimNetWrap(cfg).eval()
    except (ValueError, RuntimeError) as e:  # e.g. channels not divisible by the conv groups
        raise config_error(path, str(e).splitlines()[0]) from None
    ignore = ("cls_head.",) if cfg["num_classes"] is not None else ()
    state = check_state_dict(path, ckpt["state_dict"], model, f"ReDimNet {variant_of(cfg)} ({LAYOUT})", ignore)
    model.load_state_dict(state, strict=True)
    return model, cfg, state


def build(arch: str, checkpoint: Path) -> Built:
    """Registry entry: waveform-in ReDimNet encoder and its card from an IDRnD release checkpoint."""
    model, cfg, state = load_model(checkpoint)
    variant = variant_of(cfg)
    card = ModelCard(arch=arch, source=SOURCE, embedding_dim=cfg["embed_dim"], fingerprint=fingerprint(arch, state),
                     frontend=frontend_text(cfg), threshold=THRESHOLD,
                     threshold_source="published ReDimNet default",
                     extra={"variant": variant, "params": sum(p.numel() for p in model.parameters()),
                            "hop_length": cfg["hop_length"], "n_mels": cfg["F"]})
    return Built(encoder=model, card=card, dynamo=False)

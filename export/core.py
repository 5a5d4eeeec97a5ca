"""What every architecture shares at export: the registry's build, checkpoint loading, fingerprint, scaling node,
ONNX writing."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from voxfloat.errors import UsageError, VoxfloatError
from voxfloat.export import ARCHS
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from voxfloat.store.formats import get_format


class ExportError(VoxfloatError):
    """A checkpoint or model that cannot be exported; the message is one line for the user."""


@dataclasses.dataclass
class Built:
    """A loaded encoder ready for export_onnx: waveform (B, T) in, unscaled embedding (B, D) out."""

    encoder: nn.Module
    card: ModelCard
    dynamo: bool = False              # which torch.onnx exporter handles this architecture
    sherpa: nn.Module | None = None   # encoder alone, fbank (B, T, 80) in, for `--sherpa`
    sherpa_meta: dict[str, str] = dataclasses.field(default_factory=dict)


def build(arch: str, checkpoint: str | os.PathLike | None) -> Built:
    """Load `checkpoint` for `arch` with its module's `build`; None is only for a module with a default (GE2E)."""
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    module = importlib.import_module(f"voxfloat.export.{ARCHS[arch]}")
    if checkpoint is None and module.CHECKPOINT:
        raise ExportError(f"{arch}: needs --checkpoint ({module.CHECKPOINT})")
    return module.build(arch, None if checkpoint is None else Path(checkpoint))


def load_checkpoint(path: str | os.PathLike) -> object:
    """torch.load with weights_only=True (no pickled code runs), with a one-line error on failure."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here: pickle, zip, unsupported global
        first = (str(e).strip().splitlines() or [""])[0]  # torch raises some errors with an empty message
        raise ExportError(f"{path}: not a loadable PyTorch checkpoint ({type(e).__name__}{': ' + first if first else ''})") from None


def check_state_dict(path: str | os.PathLike, state: Mapping[str, torch.Tensor], model: nn.Module,
                     layout: str, ignore_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Compare keys and shapes with `model` and raise one line naming the layout and the first differences."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {expected[k]}" for k in expected
              if k in got and tuple(got[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3})" if len(unexpected) > 3 else ""))
        if shapes:
            parts.append(f"shape {shapes[0]}")
        raise ExportError(f"{path}: not a {layout} checkpoint: " + "; ".join(parts))
    return dict(got)


def fingerprint(arch: str, state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the architecture name and every tensor (key, dtype, shape, bytes), in key order."""
    h = hashlib.sha256(arch.encode())
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class ScaleToFormat(nn.Module):
    """The appended scaling node: E * target / max|E| per embedding (the study's eq. 6)."""

    def __init__(self, target: float):
        super().__init__()
        self.target = float(target)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        peak = e.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
        return e * (self.target / peak)


class _Scaled(nn.Module):
    def __init__(self, encoder: nn.Module, scale: nn.Module):
        super().__init__()
        self.encoder, self.scale = encoder, scale

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.scale(self.encoder(waveform))


def export_onnx(encoder: nn.Module, card: ModelCard, out: str | os.PathLike, scale_format: str | None,
                *, opset: int = 17, example_seconds: float = 3.0, dynamo: bool = False) -> ModelCard:
    """Write `encoder` (waveform (B, T) -> embedding (B, D)) as ONNX with the scaling node and metadata.

    The file is checked with onnx.checker and compared with PyTorch on a random input before it
    replaces `out` (atomic rename); returns a copy of `card` with the scaling fields as written.
    """
    encoder = encoder.eval()
    if scale_format:
        fmt = get_format(scale_format)
        card = dataclasses.replace(card, scale_format=fmt.name, scale_target=fmt.scale_target)
        model: nn.Module = _Scaled(encoder, ScaleToFormat(fmt.scale_target)).eval()
    else:
        card = dataclasses.replace(card, scale_format="", scale_target=0.0)
        model = encoder
    gen = torch.Generator().manual_seed(0)
    n = int(example_seconds * card.sample_rate)
    example = (torch.randn(2, n, generator=gen) * 0.1).clamp(-1, 1)
    write_onnx(model, example, out, card.to_metadata(), input_name=INPUT_NAME, output_name=OUTPUT_NAME,
               dynamic=("batch", "samples"), opset=opset, dynamo=dynamo)
    return card


def write_onnx(model: nn.Module, example: torch.Tensor, out: str | os.PathLike, metadata: Mapping[str, str], *,
               input_name: str, output_name: str, dynamic: tuple[str, ...], opset: int = 17,
               dynamo: bool = False) -> None:
    """Export `model` (one input, one output, dims 0.. of the input named by `dynamic`) with `metadata`.

    The file is checked with onnx.checker and compared with PyTorch on `example` before it replaces
    `out` (atomic rename), so a failed export never leaves a half-written model behind.
    """
    import onnxruntime as ort

    out = Path(out)
    model = model.eval()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise ExportError(f"{out}: cannot write: {e.strerror}") from None
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The exporters' deprecation and constant-folding notes are about torch, not the user's model.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            kwargs = dict(input_names=[input_name], output_names=[output_name], opset_version=opset)
            if dynamo:
                dims = {i: torch.export.Dim(name) for i, name in enumerate(dynamic)}
                torch.onnx.export(model, (example,), tmp, dynamo=True, external_data=False,
                                  dynamic_shapes=(dims,), **kwargs)
            else:
                torch.onnx.export(model, (example,), tmp, dynamo=False,
                                  dynamic_axes={input_name: dict(enumerate(dynamic)), output_name: {0: dynamic[0]}},
                                  **kwargs)
            expected = model(example).numpy()
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for k, v in metadata.items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name = "voxfloat"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = sess.run([output_name], {input_name: example.numpy()})[0]
        cos = np.sum(got * expected, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
        if not np.all(cos >= 0.9999):
            raise ExportError(f"{out}: ONNX Runtime disagrees with PyTorch (cosine {cos.min():.6f})")
        os.replace(tmp, out)
    except OSError as e:  # full disk, read-only folder, `out` a directory
        raise ExportError(f"{out}: cannot write: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

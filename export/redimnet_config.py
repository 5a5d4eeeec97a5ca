"""ReDimNet's `model_config`: ReDimNetWrap's defaults, the published sizes, and the checks before anything is built."""
from __future__ import annotations

from collections.abc import Mapping

from voxfloat.export.core import ExportError
from voxfloat.export.frontends import FRAME_LENGTH, N_FFT, SAMPLE_RATE, SPEC_NORMS

BLOCK_1D = ("att", "fc", "conv", "conv+att")
BLOCK_2D = ("convnext_like", "convnext_like_relu", "basic_resnet", "basic_resnet_fwse")
POOLINGS = ("ASTP", "TSTP")

# ReDimNetWrap's constructor defaults; a checkpoint's model_config overrides them, other keys are refused.
DEFAULTS: dict = dict(
    F=72, C=16, block_1d_type="att", block_2d_type="convnext_like",
    stages_setup=[(1, 2, 1, [(3, 3)], 12), (2, 2, 1, [(3, 3)], 12), (1, 3, 1, [(3, 3)], 12),
                  (2, 4, 1, [(3, 3)], 8), (1, 4, 1, [(3, 3)], 8), (2, 4, 1, [(3, 3)], 4)],
    group_divisor=4, out_channels=None, embed_dim=192, num_classes=None, class_dropout=0.0,
    feat_agg_dropout=0.0, head_activation=None, hop_length=160, pooling_func="ASTP", feat_type="pt",
    global_context_att=False, emb_bn=False,
    spec_params=dict(do_spec_aug=False, freq_mask_width=(0, 6), time_mask_width=(0, 8)),
    return_all_outputs=False, tf_optimized_arch=False,
)
# MelBanks keywords that only matter in training (spec augment) or are fixed by the checkpoint buffers.
SPEC_TRAIN_ONLY = {"do_spec_aug", "freq_mask_width", "time_mask_width", "freq_start_bin", "num_apply_spec_aug"}
SPEC_FIXED = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": FRAME_LENGTH}

# The published sizes (upstream b0..b6, as also ported to wespeaker): F, C, 1-D/2-D block types,
# group_divisor and stages (stride, num_blocks, conv_exp, kernel_sizes, att_block_red); used to name the variant.
VARIANTS: dict[str, tuple] = {
    "b0": (60, 10, "conv+att", "basic_resnet", 1,
           [(1, 2, 1, 30), (2, 3, 2, 30), (1, 3, 3, 30), (2, 4, 2, 10), (1, 3, 1, 10)]),
    "b1": (72, 12, "conv+att", "convnext_like", 8,
           [(1, 2, 1, None), (2, 3, 1, None), (3, 4, 1, 12), (2, 5, 1, 12), (2, 3, 1, 8)]),
    "b2": (72, 16, "conv+att", "convnext_like", 4,
           [(1, 2, 1, 12), (2, 2, 1, 12), (1, 3, 1, 12), (2, 4, 1, 8), (1, 4, 1, 8), (2, 4, 1, 4)]),
    "b3": (72, 16, "conv+att", "basic_resnet_fwse", 1,
           [(1, 6, 4, 32), (2, 6, 2, 32), (1, 8, 2, 32), (2, 10, 2, 16), (1, 10, 1, 16), (2, 8, 1, 16)]),
    "b4": (72, 32, "conv+att", "basic_resnet_fwse", 1,
           [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)]),
    "b5": (72, 32, "conv+att", "basic_resnet_fwse", 16,
           [(1, 4, 2, 48), (2, 4, 2, 48), (1, 6, 2, 48), (2, 6, 1, 32), (1, 8, 1, 24), (2, 4, 1, 16)]),
    "b6": (72, 32, "conv+att", "basic_resnet", 32,
           [(1, 4, 4, 32), (2, 6, 2, 32), (1, 6, 2, 24), (3, 8, 1, 24), (1, 8, 1, 16), (2, 8, 1, 16)]),
}


def config_error(path: object, what: str) -> ExportError:
    """The one-line error for a model_config voxfloat cannot build."""
    return ExportError(f"{path}: unsupported ReDimNet model_config: {what}")


def parse_config(raw: object, path: object = "checkpoint") -> dict:
    """Merge a checkpoint's model_config over ReDimNetWrap's defaults and check everything we build from."""
    if not isinstance(raw, Mapping):
        raise ExportError(f"{path}: model_config is {type(raw).__name__}, expected a dict of ReDimNetWrap arguments")
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        raise config_error(path, f"unknown argument(s) {', '.join(map(str, unknown[:3]))}")
    cfg = {**DEFAULTS, **raw}
    for key in ("F", "C", "embed_dim", "hop_length"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise config_error(path, f"{key}={cfg[key]!r} is not a positive integer")
    for key, allowed in (("block_1d_type", BLOCK_1D), ("block_2d_type", BLOCK_2D), ("pooling_func", POOLINGS),
                         ("feat_type", ("pt", "pt_mel"))):
        if cfg[key] not in allowed:
            raise config_error(path, f"{key}={cfg[key]!r} (supported: {', '.join(allowed)})")
    if cfg["tf_optimized_arch"]:
        raise config_error(path, "tf_optimized_arch=True")
    for key in ("group_divisor", "out_channels", "num_classes"):
        v = cfg[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise config_error(path, f"{key}={v!r} is not a positive integer or None")
    cfg["stages_setup"] = _parse_stages(cfg, path)
    sp = cfg["spec_params"] if cfg["spec_params"] is not None else {}
    if not isinstance(sp, Mapping):
        raise config_error(path, f"spec_params is {type(sp).__name__}, expected a dict")
    for k, v in sp.items():
        if k in SPEC_FIXED and v != SPEC_FIXED[k]:
            raise config_error(path, f"spec_params {k}={v!r} (only {SPEC_FIXED[k]} is supported)")
        if k not in SPEC_TRAIN_ONLY | set(SPEC_FIXED) | {"f_min", "f_max", "norm_signal", "do_preemph", "spec_norm"}:
            raise config_error(path, f"spec_params {k!r}")
    if sp.get("spec_norm", "mn") not in SPEC_NORMS:
        raise config_error(path, f"spec_params spec_norm={sp['spec_norm']!r} (supported: {', '.join(SPEC_NORMS)})")
    cfg["spec_params"] = dict(sp)
    return cfg


def _parse_stages(cfg: dict, path: object) -> list[tuple]:
    stages, f = [], cfg["F"]
    if not isinstance(cfg["stages_setup"], (list, tuple)) or not cfg["stages_setup"]:
        raise config_error(path, "stages_setup must be a non-empty list")
    for i, st in enumerate(cfg["stages_setup"]):
        if not isinstance(st, (list, tuple)) or len(st) != 5:
            raise config_error(path, f"stages_setup[{i}] is not (stride, num_blocks, conv_exp, kernel_sizes, att_block_red)")
        stride, blocks, exp, kernels, red = st
        if stride not in (1, 2, 3) or f % stride:
            raise config_error(path, f"stages_setup[{i}] stride {stride!r} (1, 2 or 3, dividing the {f} frequency bins)")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (blocks, exp)) or (
                red is not None and (not isinstance(red, int) or red <= 0)):
            raise config_error(path, f"stages_setup[{i}] = {st!r}")
        if red is not None and "att" in cfg["block_1d_type"] and (cfg["C"] * cfg["F"] // red) % 4:
            raise config_error(path, f"stages_setup[{i}] attention width C*F//{red} is not divisible by its 4 heads")
        f //= stride
        stages.append((stride, blocks, exp, kernels, red))
    return stages


def variant_of(cfg: dict) -> str:
    """Name of the published size (b0..b6) whose architecture `cfg` has, else 'custom'."""
    shape = (cfg["F"], cfg["C"], cfg["block_1d_type"], cfg["block_2d_type"], cfg["group_divisor"],
             [(s, n, e, r) for s, n, e, _k, r in cfg["stages_setup"]])
    return next((name for name, v in VARIANTS.items() if (v[:5] + ([tuple(s) for s in v[5]],)) == shape), "custom")


def frontend_text(cfg: dict) -> str:
    """One-line description of the in-graph front end for the model card."""
    sp = cfg["spec_params"]
    steps = (["waveform std-normalised"] if sp.get("norm_signal") else []) + (
        ["pre-emphasis 0.97 (reflect)"] if sp.get("do_preemph", True) else [])
    steps.append(f"STFT n_fft {N_FFT} win {FRAME_LENGTH} hamming hop {cfg['hop_length']} center/reflect as real"
                 f" conv1d, power, {cfg['F']} HTK mels {sp.get('f_min', 20)}-{sp.get('f_max', 7600)} Hz"
                 f" (checkpoint filterbank), log(x+1e-6), spec_norm {sp.get('spec_norm', 'mn')}")
    return "; ".join(steps)

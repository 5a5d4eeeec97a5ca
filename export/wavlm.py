"""WavLM-Base+ x-vector (microsoft/wavlm-base-plus-sv) through transformers' WavLMForXVector, waveform in.

The upstream `pytorch_model.bin` is a raw WavLMForXVector state dict; its config is built here from the
published facts because no hub is reachable at export time.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import WavLMConfig, WavLMForXVector

from voxfloat.export.core import Built, ExportError, check_state_dict, fingerprint, load_checkpoint
from voxfloat.runtime.card import ModelCard

CHECKPOINT = "microsoft/wavlm-base-plus-sv pytorch_model.bin"
LAYOUT = "microsoft/wavlm-base-plus-sv pytorch_model.bin (raw WavLMForXVector state dict)"
SOURCE = "microsoft/wavlm-base-plus-sv (HF rev feb593a), transformers WavLMForXVector .embeddings"
FRONTEND = ("raw waveform in [-1, 1] (Wav2Vec2FeatureExtractor do_normalize=False, attention mask all ones); "
            "conv feature encoder, 400-sample window, 320-sample hop")
THRESHOLD = 0.86
THRESHOLD_SOURCE = ("microsoft/wavlm-base-plus-sv model card example: cosine of L2-normalised x-vectors, "
                    "'the optimal threshold is dataset-dependent'")
EMBEDDING_DIM = 512
# legacy torch.nn.utils.weight_norm names -> torch.nn.utils.parametrizations.weight_norm names
_WEIGHT_NORM_NAMES = {".weight_g": ".parametrizations.weight.original0",
                      ".weight_v": ".parametrizations.weight.original1"}


def wavlm_config() -> WavLMConfig:
    """WavLM-Base+ with the x-vector head of microsoft/wavlm-base-plus-sv (config.json facts, inference only)."""
    return WavLMConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="group", feat_extract_activation="gelu",
        conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        num_buckets=320, max_bucket_distance=800, do_stable_layer_norm=False,
        use_weighted_layer_sum=True, tdnn_dim=[512, 512, 512, 512, 1500], tdnn_kernel=[5, 3, 3, 1, 1],
        tdnn_dilation=[1, 2, 3, 1, 1], xvector_output_dim=EMBEDDING_DIM, num_labels=1211,
    )


def canonical_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy weight-norm keys (`weight_g`/`weight_v`) to the parametrisation names torch uses now."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old, repl in _WEIGHT_NORM_NAMES.items():
            if key.endswith(old) and key[: -len(old)] + repl not in state:
                new = key[: -len(old)] + repl
        out[new] = value
    return out


class WavLMEmbedder(nn.Module):
    """Waveform (B, T) -> x-vector (B, 512), the `.embeddings` of WavLMForXVector before L2 normalisation.

    Same computation as WavLMForXVector.forward without an attention mask (all ones), written out so that
    the 13 hidden states for the weighted layer sum come without transformers' output hooks.
    """

    def __init__(self, model: WavLMForXVector):
        super().__init__()
        self.model = model.eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        m, w = self.model, self.model.wavlm
        x = w.feature_extractor(waveform).transpose(1, 2)   # do_normalize=False: the waveform as it is
        x, _ = w.feature_projection(x)
        enc = w.encoder
        x = enc.layer_norm(x + enc.pos_conv_embed(x))
        states, bias = [x], None
        for layer in enc.layers:                             # the position bias comes from layer 0 only
            x, bias = layer(x, position_bias=bias)
            states.append(x)
        weights = nn.functional.softmax(m.layer_weights, dim=-1)
        x = (torch.stack(states, dim=1) * weights.view(-1, 1, 1)).sum(dim=1)
        x = m.projector(x)
        for tdnn in m.tdnn:
            x = tdnn(x)
        return m.feature_extractor(torch.cat([x.mean(dim=1), x.std(dim=1)], dim=-1))


def load_model(checkpoint: Path) -> tuple[WavLMForXVector, dict[str, torch.Tensor]]:
    """Load a WavLMForXVector strictly from either weight-norm naming; returns the model and its state."""
    obj = load_checkpoint(checkpoint)
    if not isinstance(obj, Mapping):
        raise ExportError(f"{checkpoint}: not a {LAYOUT} checkpoint: expected a dict of tensors, "
                          f"got {type(obj).__name__}")
    wrapped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if wrapped:
        raise ExportError(f"{checkpoint}: not a {LAYOUT} checkpoint: expected a flat dict of tensors, "
                          f"entry {wrapped[0]!r} is a {type(obj[wrapped[0]]).__name__}")
    with torch.device("meta"):
        model = WavLMForXVector(wavlm_config())
    state = check_state_dict(checkpoint, canonical_names(obj), model, LAYOUT)
    state = {k: v.float() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), state


def build(arch: str, checkpoint: Path) -> Built:
    """The waveform-in WavLM x-vector encoder and its card, from an upstream `pytorch_model.bin`."""
    model, state = load_model(checkpoint)
    # fold the weight norm into a plain conv weight: the exported graph then has no norm to recompute
    parametrize.remove_parametrizations(model.wavlm.encoder.pos_conv_embed.conv, "weight", leave_parametrized=True)
    card = ModelCard(arch=arch, source=SOURCE, embedding_dim=EMBEDDING_DIM, fingerprint=fingerprint(arch, state),
                     frontend=FRONTEND, threshold=THRESHOLD, threshold_source=THRESHOLD_SOURCE,
                     min_seconds=0.5)  # >= 0.325 s needed: 16 conv frames, 14 eaten by the TDNN, 2 for std
    return Built(encoder=WavLMEmbedder(model).eval(), card=card, dynamo=False)

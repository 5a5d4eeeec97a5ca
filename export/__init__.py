"""`voxfloat export`: PyTorch speaker encoders to self-contained ONNX models.

ARCHS names every architecture and the module that builds it; it lives here, free of torch, so the
command line can list the architectures without importing the exporter (voxfloat.export.core.build).
"""

ARCHS: dict[str, str] = {
    "ge2e": "ge2e",
    "campplus": "campplus",
    "campplus-wespeaker": "campplus",
    "ecapa": "ecapa",
    "resnet34": "resnet",
    "redimnet": "redimnet",
    "wavlm": "wavlm",
}

"""voxfloat: speaker verification at the edge with ONNX encoders and packed minifloat voiceprint stores."""

__version__ = "0.1.0"

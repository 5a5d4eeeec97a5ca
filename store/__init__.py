"""Compact voiceprint stores: minifloat codecs (ml_dtypes rounding), packed .vxf files and cosine scoring."""
from voxfloat.store.codec import SCALE_MODES, Codec
from voxfloat.store.errors import StoreError
from voxfloat.store.formats import FORMATS, Format, get_format
from voxfloat.store.store import VoiceprintStore

__all__ = ["FORMATS", "SCALE_MODES", "Codec", "Format", "StoreError", "VoiceprintStore", "get_format"]

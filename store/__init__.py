"""Compact voiceprint stores: minifloat codecs (ml_dtypes rounding), packed .vxf files and cosine scoring."""
import importlib.util
import sys


def _lazy(submodule: str):
    """A compiled-loop module (numba) that is imported on first use only: opening a store and 1:1 scoring
    (numpy) never wait for numba or its compiled loops."""
    name = f"{__name__}.{submodule}"
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


kernels, vecscan = _lazy("kernels"), _lazy("vecscan")

from voxfloat.store.codec import SCALE_MODES, Codec  # noqa: E402  (after the lazy modules they import)
from voxfloat.store.errors import StoreError
from voxfloat.store.formats import FORMATS, Format, get_format
from voxfloat.store.store import VoiceprintStore, check_speaker_id

__all__ = ["FORMATS", "SCALE_MODES", "Codec", "Format", "StoreError", "VoiceprintStore", "check_speaker_id", "get_format"]

"""ONNX Runtime sessions for voxfloat models: the card in the metadata, CUDA when it really loads, else CPU."""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import io
import logging
import os
from pathlib import Path

import onnxruntime as ort

from voxfloat.errors import UsageError
from voxfloat.files import read_regular
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelError
from voxfloat.runtime.default_model import shipped_fingerprint
from voxfloat.runtime.modelmeta import metadata_props

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
ORT_DEFAULT_LOG_SEVERITY = 2  # warning: onnxruntime's own default
CUDA_DRIVER = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"  # installed by the NVIDIA driver, not by pip


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, for errors that must fit on one line."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def card_from_metadata(path: str | os.PathLike, props: dict[str, str]) -> ModelCard:
    """ModelCard from metadata_props, or ModelError naming the file and the first missing field."""
    try:
        return ModelCard.from_metadata(props)
    except KeyError as e:
        raise ModelError(f"{path}: no voxfloat metadata (missing voxfloat.{e.args[0]}); "
                         "export it with `voxfloat export`") from None
    except (ValueError, TypeError, ModelError) as e:
        raise ModelError(f"{path}: unreadable voxfloat metadata ({one_line(e)})") from None


def read_card(model_path: str | os.PathLike) -> ModelCard:
    """The ModelCard an exported file carries, its metadata checked, and the fingerprint computed from its graph.

    Only a regular file is read; the declared `voxfloat.fingerprint` is not trusted: stores compare what the
    graph computes (see voxfloat.runtime.fingerprint). Weights are parsed, not run.
    """
    path = Path(model_path)
    data = read_regular(path, ModelError, "model file")
    fingerprint = shipped_fingerprint(data) or _graph_fingerprint(path, data)  # the shipped model: no onnx import
    try:
        props = metadata_props(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not an ONNX model ({one_line(e)})") from None
    card = card_from_metadata(path, props)
    return dataclasses.replace(card, fingerprint=fingerprint)


def _graph_fingerprint(path: Path, data: bytes) -> str:
    """voxfloat.runtime.fingerprint of a serialised model (external data loaded from beside `path`)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from voxfloat.runtime.fingerprint import graph_fingerprint

    try:
        proto = onnx.load_model_from_string(data)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            load_external_data_for_model(proto, str(path.parent))
        return graph_fingerprint(proto)
    except Exception as e:  # protobuf DecodeError, onnx's own errors for damaged files, missing external data
        raise ModelError(f"{path}: not an ONNX model ({one_line(e)})") from None


def cuda_options(device_id: int = 0) -> dict[str, str]:
    """CUDAExecutionProvider options for speaker encoders fed utterances of every length.

    cudnn_conv_algo_search HEURISTIC: EXHAUSTIVE benchmarks every cuDNN algorithm again for each new
    input shape, and with one shape per utterance length that search costs more than it saves.
    kNextPowerOfTwo lets the arena grow in few steps as lengths vary; copies in the default stream keep
    the I/O-bound inputs ordered with the compute.
    """
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "do_copy_in_default_stream": "1",
    }


def session_options(threads: int = 0) -> ort.SessionOptions:
    """All graph optimisations, `threads` intra-op threads (0: one per physical core), sequential graph."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # encoders are chains: no branches to run side by side
    so.intra_op_num_threads = max(0, int(threads))
    so.inter_op_num_threads = 1
    return so


def _create(path: Path, providers: list, threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises Fail, InvalidGraph, InvalidProtobuf, NotImplemented, ...
        raise ModelError(f"{path}: onnxruntime cannot load it ({one_line(e)})") from None


@functools.cache
def gpu_driver_present() -> bool:
    """Whether the NVIDIA driver's CUDA library loads; without it no CUDA session can, so `auto` skips the attempt."""
    try:
        ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return False
    return True


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries of the nvidia-* pip packages (extra `cuda`) when they are installed.

    onnxruntime-gpu's CUDA provider does not search site-packages/nvidia; onnxruntime.preload_dlls() loads
    them from there first. Its messages (printed) go to the debug log. False: no such packages.
    """
    if importlib.util.find_spec("nvidia") is None or not hasattr(ort, "preload_dlls"):
        return False
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        ort.preload_dlls()
    if said.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", said.getvalue().strip())
    return True


def make_session(model_path: str | os.PathLike, device: str = "auto", threads: int = 0,
                 device_id: int = 0) -> tuple[ort.InferenceSession, str]:
    """Create a session on `device` ("auto", "cpu" or "cuda"); return it and the device it really uses.

    onnxruntime-gpu lists CUDA even where its libraries cannot load and then quietly runs on CPU, so
    the answer comes from session.get_providers(). "cuda" that does not load is a ModelError; "auto"
    falls back to CPU with a logging warning.
    """
    if device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if device == "cpu":
        return _create(path, [CPU], threads), "cpu"
    if CUDA not in ort.get_available_providers():
        if device == "cuda":
            raise ModelError(f"{path}: device cuda requested but this onnxruntime has no {CUDA} "
                             "(install onnxruntime-gpu)")
        log.info("onnxruntime has no %s; running on CPU", CUDA)
        return _create(path, [CPU], threads), "cpu"
    if device == "auto" and not gpu_driver_present():  # nothing to try: CPU, quietly (the device is reported)
        log.info("no NVIDIA driver (%s); running on CPU", CUDA_DRIVER)
        return _create(path, [CPU], threads), "cpu"

    preload_cuda_libraries()
    quiet = device == "auto"  # onnxruntime logs its failed CUDA load itself; the warning below says it once
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        session, failure = _create(path, [(CUDA, cuda_options(device_id)), CPU], threads), ""
    except ModelError as e:
        if device == "cuda":
            raise
        session, failure = None, f" ({str(e).removeprefix(f'{path}: ')})"
    finally:
        if quiet:
            ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
    if session is not None and CUDA in session.get_providers():
        return session, "cuda"
    if device == "cuda":
        raise ModelError(f"{path}: device cuda requested but {CUDA} did not load (CUDA/cuDNN libraries or "
                         "GPU missing; onnxruntime's log above names what); use device auto or cpu")
    log.warning("%s: %s is listed but did not load%s; running on CPU (--device cpu skips the attempt; --device cuda shows why)",
                path, CUDA, failure)
    return session or _create(path, [CPU], threads), "cpu"


def check_io(path: str | os.PathLike, session: ort.InferenceSession) -> None:
    """ModelError unless the graph takes INPUT_NAME (B, T) and gives OUTPUT_NAME, as export writes them."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs or len(inputs[INPUT_NAME].shape) != 2:
        got = ", ".join(f"{i.name}{list(i.shape)}" for i in session.get_inputs())
        raise ModelError(f"{path}: not a voxfloat encoder (wants input {INPUT_NAME}[batch, samples] and output "
                         f"{OUTPUT_NAME}; has inputs {got})")

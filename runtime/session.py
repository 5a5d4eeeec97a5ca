"""ONNX Runtime sessions for voxfloat models: the card in the metadata, CUDA when it really loads, else CPU."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
from pathlib import Path

import onnx
import onnxruntime as ort

from voxfloat.errors import UsageError
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME, ModelCard, ModelError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
ORT_DEFAULT_LOG_SEVERITY = 2  # warning: onnxruntime's own default


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
    except (ValueError, TypeError) as e:
        raise ModelError(f"{path}: unreadable voxfloat metadata ({one_line(e)})") from None


def read_card(model_path: str | os.PathLike) -> ModelCard:
    """The ModelCard an exported file carries, without creating a session (weights are parsed, not run)."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError, or onnx's own errors for damaged files
        raise ModelError(f"{path}: not an ONNX model ({one_line(e)})") from None
    return card_from_metadata(path, {p.key: p.value for p in proto.metadata_props})


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

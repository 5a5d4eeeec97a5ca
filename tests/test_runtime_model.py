"""Model card, session factory (CUDA selection and every fallback, without a GPU) and SpeakerEncoder batching."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from voxfloat.runtime import (AudioError, EmbedResult, ModelCard, ModelError, SpeakerEncoder, load_audio,
                              make_session, read_card)
from voxfloat.runtime import encoder as encoder_module
from voxfloat.runtime import session as session_module
from voxfloat.runtime.card import INPUT_NAME, OUTPUT_NAME
from voxfloat.runtime.fingerprint import graph_fingerprint
from parity import cosine

CHANNELS, DIM = 12, 8


def tiny_card(**changes) -> ModelCard:
    card = ModelCard(arch="tiny", source="tests: conv framewise log power -> mean/std pooling -> matmul",
                     embedding_dim=DIM, fingerprint="f" * 64, min_seconds=0.5)
    for k, v in changes.items():
        setattr(card, k, v)
    return card


def write_tiny_model(path: Path, card: ModelCard | None = None, input_name: str = INPUT_NAME) -> Path:
    """waveform (B, T) -> 25 ms/10 ms conv filterbank -> log power -> mean and std over frames -> (B, D).

    Like every real encoder, its pooling sees padded frames, so zero padding changes the embedding.
    """
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((CHANNELS, 1, 400)).astype(np.float32) * 0.05, "filters"),
        numpy_helper.from_array(rng.standard_normal((2 * CHANNELS, DIM)).astype(np.float32), "proj"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array(5.8, np.float32), "centre"),  # mean log power of 0.1-RMS noise
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", [input_name, "axis1"], ["x3"]),
        helper.make_node("Conv", ["x3", "filters"], ["conv"], strides=[160]),
        helper.make_node("Mul", ["conv", "conv"], ["power"]),
        helper.make_node("Add", ["power", "eps"], ["power_eps"]),
        helper.make_node("Log", ["power_eps"], ["log_power"]),
        helper.make_node("Add", ["log_power", "centre"], ["feat"]),
        helper.make_node("ReduceMean", ["feat"], ["mean"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["feat", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[2], keepdims=0),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Squeeze", ["mean", "axis2"], ["mean2"]),
        helper.make_node("Concat", ["mean2", "std"], ["pooled"], axis=1),
        helper.make_node("MatMul", ["pooled", "proj"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["B", "T"])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["B", DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        for k, v in card.to_metadata().items():
            model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny.onnx", tiny_card())


# ---- card ----------------------------------------------------------------------------------------

def test_read_card_round_trips(model_path: Path):
    """Every field comes back, except the fingerprint: that one is computed from the graph, never believed."""
    card = read_card(model_path)
    assert card == dataclasses.replace(tiny_card(), fingerprint=graph_fingerprint(onnx.load(model_path)))
    assert card.fingerprint != tiny_card().fingerprint


def test_read_card_errors(tmp_path: Path):
    with pytest.raises(ModelError, match=r"nope\.onnx: no such model file"):
        read_card(tmp_path / "nope.onnx")
    text = tmp_path / "text.onnx"
    text.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelError, match=r"text\.onnx: not an ONNX model"):
        read_card(text)
    bare = write_tiny_model(tmp_path / "bare.onnx", card=None)
    with pytest.raises(ModelError, match=r"bare\.onnx: no voxfloat metadata \(missing voxfloat\.arch\)"):
        read_card(bare)
    with pytest.raises(ModelError, match=r"bare\.onnx: no voxfloat metadata"):
        SpeakerEncoder(bare, device="cpu")


def test_encoder_refuses_other_graphs(tmp_path: Path):
    other = write_tiny_model(tmp_path / "other.onnx", tiny_card(), input_name="audio")
    with pytest.raises(ModelError, match=r"other\.onnx: not a voxfloat encoder"):
        SpeakerEncoder(other, device="cpu")


# ---- session factory -------------------------------------------------------------------------------

class FakeSession:
    """Stands in for ort.InferenceSession: records what was asked, reports `loaded` as get_providers()."""

    calls: list[list] = []
    loaded: list[str] = []
    fail_with_cuda = False

    def __init__(self, path: str, sess_options: ort.SessionOptions, providers: list):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        FakeSession.calls.append(providers)
        self.options = sess_options
        if self.fail_with_cuda and "CUDAExecutionProvider" in names:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        self._providers = [n for n in names if n in FakeSession.loaded] or ["CPUExecutionProvider"]

    def get_providers(self) -> list[str]:
        return self._providers


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch):
    def setup(available: list[str], loaded: list[str], fail_with_cuda: bool = False) -> type[FakeSession]:
        FakeSession.calls, FakeSession.loaded, FakeSession.fail_with_cuda = [], loaded, fail_with_cuda
        monkeypatch.setattr(session_module.ort, "get_available_providers", lambda: available)
        monkeypatch.setattr(session_module.ort, "InferenceSession", FakeSession)
        monkeypatch.setattr(session_module, "gpu_driver_present", lambda: True)  # the faked machine has a driver
        return FakeSession

    return setup


GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_BUILD = ["CPUExecutionProvider"]


def asked(fake: type[FakeSession]) -> list[list[str]]:
    return [[p[0] if isinstance(p, tuple) else p for p in call] for call in fake.calls]


def test_cpu_never_asks_for_cuda(model_path: Path, fake_ort):
    fake = fake_ort(GPU_BUILD, loaded=GPU_BUILD)
    _, device = make_session(model_path, "cpu", threads=3)
    assert device == "cpu" and asked(fake) == [["CPUExecutionProvider"]]


def test_cuda_that_loads(model_path: Path, fake_ort):
    fake = fake_ort(GPU_BUILD, loaded=GPU_BUILD)
    session, device = make_session(model_path, "cuda", device_id=1)
    assert device == "cuda"
    assert asked(fake) == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    options = fake.calls[0][0][1]
    assert options["device_id"] == "1"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kNextPowerOfTwo"
    assert options["do_copy_in_default_stream"] == "1"
    assert session.options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_auto_picks_cuda_when_it_loads(model_path: Path, fake_ort):
    fake_ort(GPU_BUILD, loaded=GPU_BUILD)
    assert make_session(model_path, "auto")[1] == "cuda"


def test_auto_without_cuda_in_build_uses_cpu(model_path: Path, fake_ort, caplog: pytest.LogCaptureFixture):
    fake = fake_ort(CPU_BUILD, loaded=CPU_BUILD)
    with caplog.at_level(logging.WARNING):
        assert make_session(model_path, "auto")[1] == "cpu"
    assert asked(fake) == [["CPUExecutionProvider"]] and not caplog.records


def test_auto_with_cuda_listed_but_not_loaded_warns_and_uses_cpu(model_path: Path, fake_ort,
                                                               caplog: pytest.LogCaptureFixture):
    fake_ort(GPU_BUILD, loaded=CPU_BUILD)
    with caplog.at_level(logging.WARNING, logger=session_module.__name__):
        session, device = make_session(model_path, "auto")
    assert device == "cpu" and session.get_providers() == ["CPUExecutionProvider"]
    assert len(caplog.records) == 1 and "did not load; running on CPU" in caplog.records[0].getMessage()


def test_auto_when_cuda_creation_raises_retries_on_cpu(model_path: Path, fake_ort, caplog: pytest.LogCaptureFixture):
    fake = fake_ort(GPU_BUILD, loaded=GPU_BUILD, fail_with_cuda=True)
    with caplog.at_level(logging.WARNING, logger=session_module.__name__):
        assert make_session(model_path, "auto")[1] == "cpu"
    assert asked(fake) == [["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]]
    assert "no CUDA-capable device" in caplog.records[0].getMessage()


@pytest.mark.parametrize("available,loaded,fail,words", [
    (CPU_BUILD, CPU_BUILD, False, "this onnxruntime has no CUDAExecutionProvider"),
    (GPU_BUILD, CPU_BUILD, False, "CUDAExecutionProvider did not load"),
    (GPU_BUILD, GPU_BUILD, True, "onnxruntime cannot load it (CUDA failure 100"),
])
def test_cuda_that_cannot_run_is_one_clear_error(model_path: Path, fake_ort, available, loaded, fail, words):
    fake_ort(available, loaded=loaded, fail_with_cuda=fail)
    with pytest.raises(ModelError) as info:
        make_session(model_path, "cuda")
    message = str(info.value)
    assert message.startswith(f"{model_path}: device cuda requested" if not fail else f"{model_path}: ")
    assert words in message and "\n" not in message


def test_bad_device_and_missing_model(model_path: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="device must be one of"):
        make_session(model_path, "gpu")
    with pytest.raises(ModelError, match="no such model file"):
        make_session(tmp_path / "nope.onnx")


def test_real_session_reports_what_it_runs_on(model_path: Path):
    """Unpatched: here onnxruntime-gpu lists CUDA but cannot load it; the device must follow get_providers()."""
    session, device = make_session(model_path, "auto", threads=1)
    assert device == ("cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu")
    assert session.get_session_options().intra_op_num_threads == 1


# ---- encoder: exact batching ---------------------------------------------------------------------------

def waves(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def test_padding_would_change_the_embedding(model_path: Path):
    """Why batching is by exact length: the tiny model, like upstream encoders, is not padding-invariant."""
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    short, long_ = waves([8000, 12000])
    padded = np.stack([np.pad(short, (0, 4000)), long_])
    got = enc.session.run([OUTPUT_NAME], {INPUT_NAME: padded})[0]
    assert cosine(got[0], enc.embed(short)) < 0.99


def test_batch_equals_one_by_one_and_keeps_order(model_path: Path, monkeypatch: pytest.MonkeyPatch):
    enc = SpeakerEncoder(model_path, device="cpu", threads=1, batch_size=3)
    lengths = [8000, 9600, 8000, 11111, 8000, 9600, 8000, 8000, 16000]
    inputs = waves(lengths)
    single = np.stack([enc.embed(w) for w in inputs])
    shapes: list[tuple[int, int]] = []
    run = enc.session.run
    monkeypatch.setattr(enc.session, "run", lambda out, feed: (shapes.append(feed[INPUT_NAME].shape), run(out, feed))[1])
    batched = enc.embed_batch(inputs)
    assert batched.shape == (len(lengths), DIM) and batched.dtype == np.float32
    assert np.all(cosine(batched, single) >= 0.99999)
    assert sorted(shapes) == sorted([(3, 8000), (2, 8000), (2, 9600), (1, 11111), (1, 16000)])


def test_embed_checks_its_input(model_path: Path):
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    assert enc.embed(waves([8000])[0]).shape == (DIM,)
    assert enc.embed_batch([]).shape == (0, DIM)
    with pytest.raises(ValueError, match="expected a non-empty 1-D array"):
        enc.embed(np.zeros((2, 8000), np.float32))


def test_too_short_for_the_graph_is_a_model_error(model_path: Path):
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    with pytest.raises(ModelError, match=r"tiny\.onnx: inference failed on input \[1, 100\]"):
        enc.embed(np.ones(100, np.float32))


def test_io_binding_path_gives_the_same_result(model_path: Path):
    """The CUDA path binds OrtValues on the device; bound on CPU here, it must match session.run."""
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    inputs = waves([8000, 8000, 12000], seed=3)
    plain = enc.embed_batch(inputs)
    enc._bind_device = "cpu"
    assert np.array_equal(enc.embed_batch(inputs), plain)


def test_encoder_properties(model_path: Path):
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    assert enc.card == read_card(model_path) and enc.device == "cpu" and enc.providers == ["CPUExecutionProvider"]


# ---- encoder: files ---------------------------------------------------------------------------------

def test_embed_files_reports_bad_files_and_embeds_the_rest(model_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    rng = np.random.default_rng(5)
    good = []
    for i, (rate, seconds) in enumerate([(16000, 1.0), (44100, 0.8), (16000, 1.0), (8000, 2.0), (22050, 1.0)]):
        path = tmp_path / f"good{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32), rate, subtype="PCM_16")
        good.append(path)
    short = tmp_path / "short.wav"
    sf.write(short, np.full(3000, 0.1, np.float32), 16000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.wav"
    paths = [good[0], short, good[1], missing, good[2], good[3], empty, good[4]]

    enc = SpeakerEncoder(model_path, device="cpu", threads=1, batch_size=2, vad=False)  # noise, not speech
    result = enc.embed_files(paths, progress=True)
    assert isinstance(result, EmbedResult)
    assert result.paths_ok == good
    assert [p for p, _ in result.errors] == [short, missing, empty]
    for p, message in result.errors:
        with pytest.raises(AudioError) as info:
            load_audio(p)
        assert message == str(info.value)
    expected = np.stack([enc.embed(load_audio(p)) for p in good])
    assert result.embeddings.shape == (len(good), DIM)
    assert np.all(cosine(result.embeddings, expected) >= 0.99999)
    assert "8/8" in capsys.readouterr().err


def test_embed_files_all_bad_and_decoder_crash(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    enc = SpeakerEncoder(model_path, device="cpu", threads=1)
    result = enc.embed_files([tmp_path / "a.wav", tmp_path / "b.wav"])
    assert result.embeddings.shape == (0, DIM) and result.paths_ok == [] and len(result.errors) == 2

    def crash(*args, **kwargs):
        raise MemoryError("decoder crashed")

    monkeypatch.setattr(encoder_module, "load_audio", crash)
    with pytest.raises(MemoryError, match="decoder crashed"):
        enc.embed_files([tmp_path / "a.wav"])


# ---- imports ---------------------------------------------------------------------------------------

def test_runtime_never_imports_torch_and_card_stays_light():
    """runtime must run without torch; export and store read voxfloat.runtime.card without onnxruntime."""
    import subprocess
    import sys

    code = ("import sys, voxfloat.runtime.card; light = 'onnxruntime' not in sys.modules and 'soundfile' not in sys.modules; "
            "from voxfloat.runtime import SpeakerEncoder, load_audio, make_session, read_card, EmbedResult; "
            "from voxfloat.runtime import audio, encoder, session; "
            "print(light, 'onnxruntime' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]


def test_public_names_resolve():
    import voxfloat.runtime as runtime

    assert [name for name in runtime.__all__ if not hasattr(runtime, name)] == []
    with pytest.raises(AttributeError):
        runtime.no_such_name  # noqa: B018

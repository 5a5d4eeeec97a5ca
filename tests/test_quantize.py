"""`voxfloat quantize`: every encoder quantizes and loads, GE2E int8 keeps parity and EER, stores gate children on parity.

The seed architectures use the reference weights (exported once per module, WavLM's 400 MB deleted at the
end) and calibrate on a few corpus files; GE2E (trained weights) is checked on a 20-speaker subset of the
shared corpus (320 files; its trial lists restricted to them) to keep the module to a few minutes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from voxfloat.api import admit_child
from voxfloat.evaluate import evaluate, read_trials
from voxfloat.export.core import build, export_onnx
from voxfloat.runtime.card import PREFIX
from voxfloat.runtime.encoder import SpeakerEncoder
from voxfloat.runtime.fingerprint import graph_fingerprint
from voxfloat.runtime.quantize import ENCODERS, OPSET, WEIGHTS, e2m1_round, quantize, weighted_nodes
from voxfloat.runtime.session import ModelError
from voxfloat.store import StoreError, VoiceprintStore
from voxfloat.store.store import CHILD_MIN_COSINE
from parity import cosine

pytestmark = pytest.mark.parity  # exports need torch; the module takes minutes
SEED = {"campplus": "campplus_3dspeaker", "ecapa": "ecapa_tdnn_glob_c512", "resnet34": "resnet34_wespeaker",
        "redimnet": "redimnet_b2", "wavlm": "wavlm_base_plus_sv"}
# Every precision on GE2E and ECAPA (all recipes and weight-only storages); the other encoders their int8 recipe,
# WavLM also int4 (MatMulNBits); bench/quant_bench.py runs every pair.
TESTED = {"ge2e": WEIGHTS, "ecapa": WEIGHTS, "campplus": ("int8",), "resnet34": ("int8",), "redimnet": ("int8",),
          "wavlm": ("int8", "int4")}
SPEAKERS = 20  # GE2E subset: speakers (of 60) whose 8 clean and 8 hard utterances are embedded


@pytest.fixture(scope="session")
def calibration(corpus_dir, tmp_path_factory) -> Path:
    """A folder of links to six corpus files (clean and degraded, six speakers): enough to calibrate and check."""
    folder = tmp_path_factory.mktemp("calibration")
    speakers = sorted(p.name for p in (corpus_dir / "clean").iterdir())[::10]
    for i, s in enumerate(speakers):
        kind = "clean" if i % 2 else "hard"
        (folder / f"{s}.flac").symlink_to(corpus_dir / kind / s / f"{s}-u0{i}.flac")
    return folder


@pytest.fixture(scope="module", params=["ge2e", *SEED])
def parent(request, official_checkpoint, tmp_path_factory) -> Path:
    """Each encoder exported with its scaling node (GE2E: trained weights; others: reference weights)."""
    arch = request.param
    folder = tmp_path_factory.mktemp(arch)
    checkpoint = official_checkpoint(SEED[arch], "quantize") if arch in SEED else None  # a copy of its own: deleted below
    built = build(arch, checkpoint)
    out = folder / f"{arch}.onnx"
    export_onnx(built.encoder, built.card, out, "e4m3", dynamo=built.dynamo)
    yield out
    shutil.rmtree(folder, ignore_errors=True)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)


def frontend_signature(model: onnx.ModelProto) -> list[tuple[str, str, tuple[str, ...]]]:
    """Front-end nodes with weights and their inputs: a quantized child must have them as its parent has."""
    return sorted((n.name, n.op_type, tuple(n.input)) for n in weighted_nodes(model)[1])


def test_every_encoder_quantizes(parent, calibration, reference_inputs, tmp_path):
    wave = min(reference_inputs.values(), key=len)
    float32 = SpeakerEncoder(parent, device="cpu")
    reference = float32.embed(wave)
    parent_proto = onnx.load(str(parent))
    assert frontend_signature(parent_proto) or parent.stem == "wavlm", "front end not found: it would be quantized"
    for weights in TESTED[parent.stem]:
        out = tmp_path / f"{weights}.onnx"
        result = quantize(parent, weights, out, calibration)
        child = SpeakerEncoder(out, device="cpu")
        got = child.embed(wave)
        q = child.card.quantization
        assert got.shape == reference.shape == (float32.card.embedding_dim,) and np.isfinite(got).all(), weights
        assert q["weights"] == weights and q["parent_fingerprint"] == float32.card.fingerprint
        assert q["fingerprint"] == graph_fingerprint(onnx.load(str(out))) != graph_fingerprint(parent_proto)
        assert q["parity"]["files"] == 6 - len(result.skipped) and -1 <= q["parity"]["min"] <= q["parity"]["mean"] <= 1
        assert sum(len(v) for v in q["methods"].values()) > 0, f"{weights}: nothing quantized"
        assert out.stat().st_size < 0.45 * parent.stat().st_size, f"{weights}: {out.stat().st_size} bytes"
        assert frontend_signature(onnx.load(str(out))) == frontend_signature(parent_proto), f"{weights}: front end changed"
        assert child.card.scale_target == float32.card.scale_target, weights
        out.unlink()


def test_e2m1_rounding():
    values = np.array([0.2, 0.3, 0.7, 1.3, 2.4, 2.6, 5.2, 9.0, -0.8, -3.4], np.float32)
    assert e2m1_round(values).tolist() == [0, 0.5, 0.5, 1.5, 2, 3, 6, 6, -1, -3]


@pytest.fixture(scope="module")
def ge2e_subset(corpus_dir, tmp_path_factory) -> tuple[list[Path], dict[str, object]]:
    """The subset's audio files and its trials per list (clean, hard, mixed), restricted to those files."""
    speakers = sorted(p.name for p in (corpus_dir / "clean").iterdir())[::60 // SPEAKERS]
    files = [corpus_dir / kind / s / f"{s}-u{u:02d}.flac" for kind in ("clean", "hard") for s in speakers for u in range(8)]
    wanted = {str(f.relative_to(corpus_dir)) for f in files}
    folder = tmp_path_factory.mktemp("trials")
    lists = {}
    for name in ("clean", "hard", "mixed"):
        lines = [ln for ln in (corpus_dir / f"trials_{name}.txt").read_text().splitlines()
                 if set(ln.split()[1:]) <= wanted]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
        lists[name] = read_trials(folder / f"{name}.txt")
    return files, lists


@pytest.fixture(scope="module")
def ge2e_models(calibration, tmp_path_factory) -> dict[str, Path]:
    """GE2E float32 with its int8 and mxfp4 children (parity recorded on the six calibration files)."""
    folder = tmp_path_factory.mktemp("ge2e-children")
    built = build("ge2e", None)
    models = {"float32": folder / "ge2e.onnx"}
    export_onnx(built.encoder, built.card, models["float32"], "e4m3")
    for weights in ("int8", "mxfp4"):
        models[weights] = folder / f"ge2e-{weights}.onnx"
        quantize(models["float32"], weights, models[weights], calibration)
    return models


def test_ge2e_int8_keeps_cosine_and_eer(ge2e_models, ge2e_subset, corpus_dir):
    files, lists = ge2e_subset
    paths = [str(f.relative_to(corpus_dir)) for f in files]
    embeddings = {}
    for name in ("float32", "int8"):
        result = SpeakerEncoder(ge2e_models[name], device="cpu", vad=False).embed_files(files)  # the model alone
        assert not result.errors
        embeddings[name] = result.embeddings
    cos = cosine(embeddings["int8"], embeddings["float32"])
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f})"
    for name, trials in lists.items():
        eer = {m: evaluate(e, paths, trials, ["f32"], ["none"], None)[0][0].point.eer for m, e in embeddings.items()}
        # 10 % relative, but never finer than one target trial of the subset (its EER resolution)
        slack = max(0.10 * eer["float32"], 100.0 / int(trials.labels.sum()))
        assert abs(eer["int8"] - eer["float32"]) <= slack, f"{name}: EER {eer}"


def test_store_accepts_only_children_admitted_with_measured_parity(ge2e_models, calibration, tmp_path):
    """A child's own parity record is a claim anyone can write: the store accepts it only after `admit` measured it."""
    parent = SpeakerEncoder(ge2e_models["float32"], device="cpu").card
    path = tmp_path / "s.vxf"
    with VoiceprintStore.edit(path, fmt="e4m3", scale="vector", dim=parent.embedding_dim,
                              model={"fingerprint": parent.fingerprint, "arch": parent.arch}):
        pass
    assert VoiceprintStore.open(path).check_model(parent.fingerprint) == ""
    good = SpeakerEncoder(ge2e_models["int8"], device="cpu").card
    bad = SpeakerEncoder(ge2e_models["mxfp4"], device="cpu").card
    assert good.quantization["parity"]["mean"] >= CHILD_MIN_COSINE > bad.quantization["parity"]["mean"]
    with pytest.raises(StoreError, match="not admitted"):  # recorded parity above the bar is not enough
        VoiceprintStore.open(path).check_model(good.fingerprint, good.quantization)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="below 0.99"):
        admit_child(path, ge2e_models["mxfp4"], calibration, parent=ge2e_models["float32"])
    assert path.read_bytes() == before
    with pytest.raises(ModelError, match="not a quantized child"):
        admit_child(path, ge2e_models["float32"], calibration, parent=ge2e_models["int8"])
    done = admit_child(path, ge2e_models["int8"], calibration, parent=ge2e_models["float32"])
    assert done.mean >= CHILD_MIN_COSINE and done.files == 6 and done.fingerprint == good.fingerprint
    store = VoiceprintStore.open(path)
    assert "accepting int8 child" in store.check_model(good.fingerprint, good.quantization)
    forged = {**bad.quantization, "parity": {"mean": 0.9999, "min": 0.999, "files": 6}}
    with pytest.raises(StoreError, match="not admitted"):  # a forged record on the mxfp4 child changes nothing
        store.check_model(bad.fingerprint, forged)


def test_child_with_edited_graph_is_refused(ge2e_models, tmp_path):
    """Recorded parity belongs to one graph: a child whose weights were changed afterwards does not load."""
    proto = onnx.load(str(ge2e_models["int8"]))
    init = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2)
    array = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    with pytest.raises(ModelError, match="does not match the fingerprint"):
        SpeakerEncoder(edited, device="cpu")


def test_quantize_refuses_a_child_and_unknown_precision(ge2e_models, tmp_path):
    with pytest.raises(ModelError, match="already quantized"):
        quantize(ge2e_models["int8"], "int4", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown weight precision"):
        quantize(ge2e_models["float32"], "int3", tmp_path / "x.onnx")
    props = {p.key: p.value for p in onnx.load(str(ge2e_models["int8"]), load_external_data=False).metadata_props}
    assert json.loads(props[PREFIX + "quantization"])["weights"] == "int8"


@pytest.mark.parametrize("weights", ["int4", "e4m3", "mxfp4"])
@pytest.mark.parametrize("shape,axis", [((48, 40, 3), 1), ((1, 96, 40), 2), ((70, 33), 0)])
def test_weights_decode_in_onnxruntime(weights, shape, axis):
    """Each storage decodes in onnxruntime to the weight's shape; mxfp4 to exactly its e2m1 grid times 2^k per block."""
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    nodes = ENCODERS[weights]("w", w, 0, axis)
    graph = onnx.helper.make_graph(nodes + [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET[weights])], ir_version=10)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert got.shape == w.shape
    assert np.corrcoef(got.ravel(), w.ravel())[0, 1] > (0.999 if weights == "e4m3" else 0.99)
    if weights == "mxfp4":
        blocks = np.moveaxis(got, axis, -1)
        blocks = np.pad(blocks, [(0, 0)] * (w.ndim - 1) + [(0, -shape[axis] % 32)]).reshape(*blocks.shape[:-1], -1, 32)
        peak = np.abs(blocks).max(-1, keepdims=True)
        scale = 2.0 ** np.floor(np.log2(np.where(peak > 0, peak, 1) / 4))  # 6 * 2^k >= peak >= 4 * 2^k for e2m1's 4 and 6
        assert np.array_equal(e2m1_round(blocks / scale), blocks / scale)


def test_cli_quantize(ge2e_models, calibration, tmp_path):
    """The verb writes the child, reports its parity as JSON, and refuses bad requests with one line and code 2 or 4."""
    from typer.testing import CliRunner

    from voxfloat.cli import FATAL, USAGE, app

    runner, out = CliRunner(), tmp_path / "e4m3.onnx"
    done = runner.invoke(app, ["quantize", str(ge2e_models["float32"]), "--weights", "e4m3", "--out", str(out),
                               "--calibration", str(calibration), "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["weights"] == "e4m3" and report["parity"]["files"] == 6 and report["parity"]["mean"] > 0.99
    assert SpeakerEncoder(out, device="cpu").card.quantization["parity"] == report["parity"]
    for args, code in ((["--weights", "int3", "--out", str(tmp_path / "x.onnx")], USAGE),
                       (["--weights", "int8", "--out", str(ge2e_models["float32"])], USAGE),
                       (["--weights", "int8", "--out", str(tmp_path / "x.onnx"), "--calibration", str(tmp_path / "none")], FATAL)):
        refused = runner.invoke(app, ["quantize", str(ge2e_models["float32"]), *args])
        assert refused.exit_code == code and len(refused.stderr.strip().splitlines()) == 1, refused.output

"""Issue 7, class 4: the model fingerprint comes from the graph, metadata is checked, and a model that fails,
gives NaN or another width at run time is one line; `embed` never writes a NaN row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from trust import enrolled, one_line_error, run, store, utterance, voices  # noqa: F401 (fixtures)
from voxfloat.runtime import read_card

FATAL, BAD_INPUT = 4, 3


def variant(src: Path, dst: Path, *, meta: dict | None = None, tail: str | None = None) -> Path:
    """A copy of `src` with metadata values replaced (JSON text) and/or an extra node on the output:
    "nan" multiplies it by NaN, "wide" doubles its width, "fail" reshapes it to an impossible shape."""
    proto = onnx.load(src)
    for p in proto.metadata_props:
        if meta and p.key in meta:
            p.value = meta[p.key]
    if tail:
        last = next(n for n in proto.graph.node if "embedding" in n.output)
        last.output[list(last.output).index("embedding")] = "pre_embedding"
        if tail == "nan":
            proto.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_scalar"))
            node = helper.make_node("Mul", ["pre_embedding", "nan_scalar"], ["embedding"])
        elif tail == "wide":
            node = helper.make_node("Concat", ["pre_embedding", "pre_embedding"], ["embedding"], axis=1)
        else:
            proto.graph.initializer.append(numpy_helper.from_array(np.array([7, 5], np.int64), "bad_shape"))
            node = helper.make_node("Reshape", ["pre_embedding", "bad_shape"], ["embedding"])
        proto.graph.node.append(node)
    onnx.save(proto, dst)
    return dst


def test_other_weights_with_the_same_metadata_are_refused(model: Path, store: Path, voices, tmp_path: Path) -> None:
    proto = onnx.load(model)
    weight = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(0.5), weight.name))
    other = tmp_path / "other.onnx"
    onnx.save(proto, other)  # metadata untouched: it still declares GE2E's fingerprint
    assert read_card(other).fingerprint != read_card(model).fingerprint
    before = store.read_bytes()
    probe = utterance(voices[0], 5)
    csv = tmp_path / "new.csv"
    csv.write_text(f"newcomer,{probe}\n")
    for result in (run("verify", probe, "--model", other, "--store", store, "--speaker", voices[0].name),
                   run("identify", probe, "--model", other, "--store", store),
                   run("enroll", csv, "--model", other, "--out", store)):
        line = one_line_error(result, FATAL)
        assert str(store) in line and "built with model" in line
    assert store.read_bytes() == before


@pytest.mark.parametrize("key,value", [
    ("embedding_dim", "128"), ("embedding_dim", '"abc"'), ("embedding_dim", "0"), ("embedding_dim", "2.5"),
    ("sample_rate", "0"), ("sample_rate", '"fast"'), ("sample_rate", "1"), ("min_seconds", '"half"'),
    ("min_seconds", "-1"), ("min_seconds", "NaN"), ("threshold", "7"), ("threshold", '"high"'),
    ("arch", "[]"), ("extra", '"x"'), ("fingerprint", "{not json"),
])
def test_bad_metadata_is_one_line(model: Path, store: Path, voices, tmp_path: Path, key: str, value: str) -> None:
    bad = variant(model, tmp_path / "bad.onnx", meta={f"voxfloat.{key}": value})
    probe = utterance(voices[0], 5)
    before = store.read_bytes()
    results = [run("verify", probe, "--model", bad, "--store", store, "--speaker", voices[0].name),
               run("embed", probe, "--model", bad, "--out", tmp_path / "e.npy")]
    if value != "128":  # a well-formed width that the graph does not give is found by running it, not by info
        results.append(run("info", bad))
    for result in results:
        line = one_line_error(result, FATAL)
        assert str(bad) in line
    assert not (tmp_path / "e.npy").exists() and store.read_bytes() == before


def test_nan_wide_and_failing_models(model: Path, store: Path, voices, tmp_path: Path) -> None:
    probes = [utterance(voices[0], 5), utterance(voices[1], 5)]
    out, fresh = tmp_path / "e.npy", tmp_path / "new.vxf"
    csv = tmp_path / "new.csv"
    csv.write_text("".join(f"{d.name},{utterance(d, 5)}\n" for d in voices))
    for tail, words in (("nan", "NaN or inf"), ("wide", "output of shape"), ("fail", "inference failed")):
        broken = variant(model, tmp_path / f"{tail}.onnx", tail=tail)
        line = one_line_error(run("embed", *probes, "--model", broken, "--out", out), FATAL)
        assert words in line and str(broken) in line
        assert not out.exists()
        one_line_error(run("verify", probes[0], "--model", broken, "--store", store, "--speaker", voices[0].name), FATAL)
        one_line_error(run("enroll", csv, "--model", broken, "--out", fresh), FATAL)
        assert not fresh.exists()


def test_embed_lists_a_file_the_model_turns_into_nan(model: Path, voices, tmp_path: Path, monkeypatch) -> None:
    """A model that gives NaN for one input only: that file is listed, the others written, no NaN row."""
    from voxfloat.runtime.encoder import SpeakerEncoder

    real = SpeakerEncoder._run
    calls = []

    def nan_on_second_file(self, batch):
        out = real(self, batch)
        calls.append(batch.shape)
        if len(calls) == 3:  # call 1 is the load-time probe
            out = out.copy()
            out[0, 3] = np.nan
        return out

    monkeypatch.setattr(SpeakerEncoder, "_run", nan_on_second_file)
    probes = [utterance(voices[0], 5), utterance(voices[1], 5), utterance(voices[2], 5)]
    out = tmp_path / "e.npy"
    result = run("embed", *probes, "--model", model, "--out", out)
    assert result.exit_code == BAD_INPUT and "Traceback" not in result.output
    assert f"{probes[1]}: the model gave a non-finite embedding" in result.stderr
    rows = np.load(out)
    assert rows.shape == (2, 256) and np.isfinite(rows).all()
    assert out.with_suffix(".paths.txt").read_text().split() == [str(probes[0]), str(probes[2])]

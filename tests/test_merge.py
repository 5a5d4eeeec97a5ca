"""`voxfloat.store.merge`: byte-exact merging of shards, duplicate rules, thresholds, refusals."""
from __future__ import annotations

import numpy as np
import pytest

from voxfloat.store import StoreError, VoiceprintStore
from voxfloat.store.merge import merge

MODEL = {"fingerprint": "f" * 64, "arch": "test", "source": "unit test"}


def make(path, speakers, seed, fmt="e4m3", scale="vector", model=MODEL, thresholds=None, source="calibrated"):
    rng = np.random.default_rng(seed)
    embeddings = {s: rng.standard_normal((3, 32)).astype(np.float32) for s in speakers}
    with VoiceprintStore.edit(path, fmt=fmt, scale=scale, dim=32, model=model) as st:
        for s, e in embeddings.items():
            st.add(s, e)
        if thresholds:
            st.set_thresholds(thresholds, source)
    return embeddings


def rows(path):
    st = VoiceprintStore.open(path)
    return {s: (bytes(st.packed[i]), int(st.n_utterances[i])) for i, s in enumerate(st.speakers)}


def test_merge_of_shards_equals_one_enrollment(tmp_path):
    a = make(tmp_path / "a.vxf", ["s1", "s2", "s3"], 1)
    b = make(tmp_path / "b.vxf", ["s4", "s5"], 2)
    with VoiceprintStore.edit(tmp_path / "one.vxf", fmt="e4m3", scale="vector", dim=32, model=MODEL) as st:
        for s, e in {**a, **b}.items():
            st.add(s, e)
    report = merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "c.vxf")
    assert report.speakers == 5 and report.utterances == 15
    assert rows(tmp_path / "c.vxf") == rows(tmp_path / "one.vxf")
    assert (tmp_path / "c.vxf").stat().st_mode & 0o777 == 0o600


def test_duplicate_speaker_needs_a_rule(tmp_path):
    make(tmp_path / "a.vxf", ["s1", "s2"], 1)
    make(tmp_path / "b.vxf", ["s2", "s3"], 2)
    with pytest.raises(StoreError, match="'s2' is also in"):
        merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "c.vxf")
    assert not (tmp_path / "c.vxf").exists()
    last = merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "last.vxf", replace="last")
    first = merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "first.vxf", replace="first")
    assert last.replaced == first.replaced == ["s2"]
    assert rows(tmp_path / "last.vxf")["s2"] == rows(tmp_path / "b.vxf")["s2"]
    assert rows(tmp_path / "first.vxf")["s2"] == rows(tmp_path / "a.vxf")["s2"]
    assert sorted(rows(tmp_path / "first.vxf")) == ["s1", "s2", "s3"]


@pytest.mark.parametrize("change", [{"fmt": "e2m1"}, {"scale": "block32"},
                                    {"model": {**MODEL, "fingerprint": "0" * 64}}])
def test_incompatible_stores_are_refused(tmp_path, change):
    make(tmp_path / "a.vxf", ["s1"], 1)
    make(tmp_path / "b.vxf", ["s2"], 2, **change)
    with pytest.raises(StoreError, match="cannot merge"):
        merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "c.vxf")
    assert not (tmp_path / "c.vxf").exists()


def test_thresholds_carried_only_when_they_agree(tmp_path):
    make(tmp_path / "a.vxf", ["s1"], 1, thresholds={"e4m3": 0.7})
    make(tmp_path / "b.vxf", ["s2"], 2, thresholds={"e4m3": 0.7})
    make(tmp_path / "c.vxf", ["s3"], 3, thresholds={"e4m3": 0.6}, source="other")
    same = merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "ab.vxf")
    assert same.thresholds == {"e4m3": 0.7} and same.threshold_source == "calibrated"
    differ = merge([tmp_path / "a.vxf", tmp_path / "c.vxf"], tmp_path / "ac.vxf")
    assert differ.thresholds == {} and differ.threshold_source is None
    assert VoiceprintStore.open(tmp_path / "ac.vxf").threshold is None
    chosen = merge([tmp_path / "a.vxf", tmp_path / "c.vxf"], tmp_path / "ac2.vxf", thresholds_from=tmp_path / "c.vxf")
    assert chosen.thresholds == {"e4m3": 0.6} and chosen.threshold_source == "other"


def test_output_may_be_an_input_but_not_a_stranger(tmp_path):
    make(tmp_path / "a.vxf", ["s1"], 1)
    make(tmp_path / "b.vxf", ["s2"], 2)
    make(tmp_path / "x.vxf", ["s9"], 9)
    before = (tmp_path / "x.vxf").read_bytes()
    with pytest.raises(StoreError, match="not one of the inputs"):
        merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "x.vxf")
    assert (tmp_path / "x.vxf").read_bytes() == before
    merge([tmp_path / "a.vxf", tmp_path / "b.vxf"], tmp_path / "a.vxf")
    assert sorted(rows(tmp_path / "a.vxf")) == ["s1", "s2"]

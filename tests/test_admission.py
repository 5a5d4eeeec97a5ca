"""Quantized children are accepted by a store only once admitted with measured parity, never on their own claim."""
from __future__ import annotations

import numpy as np
import pytest

from test_trust_store import rewrite
from voxfloat.store import StoreError, VoiceprintStore
from voxfloat.store.store import CHILD_MIN_COSINE

PARENT, CHILD = "a" * 64, "b" * 64
CLAIM = {"weights": "int8", "parent_fingerprint": PARENT, "parity": {"mean": 0.9999, "min": 0.999, "files": 50}}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.vxf"
    with VoiceprintStore.edit(path, fmt="e4m3", scale="vector", dim=16, model={"fingerprint": PARENT, "arch": "t"}) as st:
        st.add("alice", np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    return path


def test_a_claimed_parity_admits_nothing(store):
    st = VoiceprintStore.open(store)
    assert st.check_model(PARENT) == ""
    with pytest.raises(StoreError, match="not admitted"):
        st.check_model(CHILD, CLAIM)
    with pytest.raises(StoreError, match="built with model"):
        st.check_model(CHILD, {**CLAIM, "parent_fingerprint": "c" * 64})


def test_admitted_child_is_accepted_and_survives_a_rewrite(store):
    with VoiceprintStore.edit(store) as st:
        st.admit_child(CHILD, "int8", 0.995, 0.98, 6)
    with VoiceprintStore.edit(store) as st:  # any later edit keeps the admission
        st.remove("alice")
    note = VoiceprintStore.open(store).check_model(CHILD)
    assert "accepting int8 child bbbbbbbbbbbb" in note and "0.9950 on 6 files" in note


@pytest.mark.parametrize("mean", [CHILD_MIN_COSINE - 1e-6, float("nan"), 0.2])
def test_a_child_below_the_bar_is_refused_and_nothing_written(store, mean):
    before = store.read_bytes()
    with pytest.raises(StoreError, match="below 0.99"):
        with VoiceprintStore.edit(store) as st:
            st.admit_child(CHILD, "mxfp4", mean, 0.5, 6)
    assert store.read_bytes() == before
    with pytest.raises(StoreError):
        with VoiceprintStore.edit(store) as st:
            st.admit_child(PARENT, "int8", 0.999, 0.99, 6)  # the store's own model is no child of it


@pytest.mark.parametrize("record", [
    {"weights": "int8", "mean": 0.5, "min": 0.4, "files": 6, "admitted": "2026-01-01T00:00:00+00:00"},
    {"weights": "int8", "mean": 0.995, "min": 0.99, "files": 0, "admitted": "2026-01-01T00:00:00+00:00"},
    {"weights": "int8", "mean": 0.995, "min": 0.99, "files": 6},
    {"weights": 8, "mean": 0.995, "min": 0.99, "files": 6, "admitted": "2026-01-01T00:00:00+00:00"},
    "yes",
])
def test_a_forged_admission_record_makes_the_store_unreadable(store, record):
    with VoiceprintStore.edit(store) as st:  # a real admission makes room in the header for the forged one
        st.admit_child(CHILD, "int8", 0.995, 0.98, 6)
    assert rewrite(store, lambda h: h["model"].__setitem__("children", {CHILD: record}))
    with pytest.raises(StoreError, match="child bbbbbbbbbbbb"):
        VoiceprintStore.open(store)


def test_children_must_be_fingerprints(store):
    good = {"weights": "int8", "mean": 0.995, "min": 0.99, "files": 6, "admitted": "2026-01-01T00:00:00+00:00"}
    with VoiceprintStore.edit(store) as st:
        st.admit_child(CHILD, "int8", 0.995, 0.98, 6)
    assert rewrite(store, lambda h: h["model"].__setitem__("children", {"not-a-fingerprint": good}))
    with pytest.raises(StoreError, match="not a sha256"):
        VoiceprintStore.open(store)

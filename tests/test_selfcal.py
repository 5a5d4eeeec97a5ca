"""Self-calibration at enrollment (voxfloat.selfcal): the leave-one-out rule, when it applies, and what it
gives on real recorded voices (tests/real_speech.py: Debian's Asterisk and KLettres recordings)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from real_speech import corpus

from voxfloat.api import Verifier, embed_audio
from voxfloat.selfcal import (MIN_SPEAKERS, RATIO, SELF, calibrate_enrollment, leave_one_out_scores,
                              operating_point, self_calibrate)
from voxfloat.store import VoiceprintStore

DIM = 32
DRAWS = 8  # random 3-utterance enrollments of the real voices, pooled
MODEL = {"fingerprint": "f" * 64, "arch": "test"}


def speakers(n: int, k: int, spread: float = 0.3, seed: int = 0) -> dict[str, np.ndarray]:
    """n synthetic speakers with k utterances each: a random direction plus noise."""
    rng = np.random.default_rng(seed)
    return {f"s{i}": (rng.standard_normal(DIM) + spread * rng.standard_normal((k, DIM))).astype(np.float32)
            for i in range(n)}


def test_leave_one_out_scores_each_utterance_against_the_others_only() -> None:
    E = speakers(3, 2)
    genuine, impostor, n = leave_one_out_scores(E)
    unit = {s: e / np.linalg.norm(e, axis=1, keepdims=True) for s, e in E.items()}
    want = [float(unit[s][j] @ unit[s][1 - j]) for s in E for j in range(2)]  # two utterances: the other one
    assert n == 3 and np.allclose(genuine, want, atol=1e-6)
    assert len(impostor) == 3 * 2 * 2  # every utterance against the two other speakers


def test_operating_point_sits_at_the_documented_z_ratio() -> None:
    rng = np.random.default_rng(1)
    g, i = rng.normal(0.9, 0.04, 500), rng.normal(0.6, 0.1, 5000)
    t = operating_point(g, i)
    assert (t - i.mean()) / i.std() == pytest.approx(RATIO * (g.mean() - t) / g.std())
    assert i.mean() < t < g.mean()


def test_too_little_material_names_the_reason() -> None:
    E = speakers(MIN_SPEAKERS - 1, 3) | {"single": speakers(1, 1, seed=5)["s0"]}
    cal = self_calibrate(E, 0.8, "e4m3")
    assert cal.threshold is None and f"needs {MIN_SPEAKERS} speakers" in cal.source and cal.speakers == MIN_SPEAKERS - 1


def test_enough_material_sets_the_store_format_and_records_counts(tmp_path: Path) -> None:
    E = speakers(6, 3)
    with VoiceprintStore.edit(tmp_path / "s.vxf", fmt="e2m1", scale="vector", dim=DIM, model=MODEL) as store:
        for s, e in E.items():
            store.add(s, e)
        cal = calibrate_enrollment(store, E, 0.8, "test default")
    opened = VoiceprintStore.open(tmp_path / "s.vxf")
    assert cal.changed and opened.thresholds == {"e2m1": pytest.approx(cal.threshold)}
    assert opened.threshold_source.startswith(SELF) and "6 speakers, 18 genuine / 90 impostor" in opened.threshold_source


def test_small_enrollment_seeds_the_model_default_and_says_why(tmp_path: Path) -> None:
    E = speakers(2, 3)
    with VoiceprintStore.edit(tmp_path / "s.vxf", fmt="e4m3", scale="vector", dim=DIM, model=MODEL) as store:
        cal = calibrate_enrollment(store, E, 0.8, "test default")
        assert store.threshold == 0.8
    assert cal.source.startswith("model default: test default; not self-calibrated")


def test_a_trial_list_calibration_is_never_overridden(tmp_path: Path) -> None:
    with VoiceprintStore.edit(tmp_path / "s.vxf", fmt="e4m3", scale="vector", dim=DIM, model=MODEL) as store:
        store.set_thresholds({"e4m3": 0.7}, "calibrated on trials.txt (10 target trials, vector scaling), EER point")
        cal = calibrate_enrollment(store, speakers(8, 4), 0.8, "test default")
        assert store.threshold == 0.7 and not cal.changed


def held_out(path: Path, tests: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Whether each genuine and each impostor trial of held-out embeddings is accepted by the store at `path`."""
    store = VoiceprintStore.open(path)
    tests = [(s, e) for s, e in tests if s in store]
    ranked = store.identify(np.stack([e for _, e in tests]), top_k=len(store))
    genuine = [dict(r)[s] for (s, _), r in zip(tests, ranked)]
    impostor = [v for (s, _), r in zip(tests, ranked) for t, v in r if t != s]
    return np.array(genuine) >= store.threshold, np.array(impostor) >= store.threshold


@pytest.mark.parity  # slow tier: several seconds
def test_self_calibrated_threshold_on_real_voices(tmp_path: Path) -> None:
    """Each real speaker enrolls 3 utterances (the README's advice) and its other 4 are verified against every
    voiceprint. Enrollment 0 runs end to end through Verifier.enroll_many; DRAWS - 1 random ones reuse the
    embeddings through calibrate_enrollment; the rates are pooled over all of them."""
    voices = corpus(count=7)
    verifier = Verifier(tmp_path / "draw0.vxf", device="cpu")
    flat = [(s, j, w) for s, waves in voices.items() for j, w in enumerate(waves)]
    rows, errors = embed_audio(verifier.encoder, [w for _, _, w in flat])
    assert len(errors) <= 0.05 * len(flat), errors  # speech trimming finds too little speech in a few
    emb = {(s, j): r for (s, j, _), r in zip(flat, rows) if r is not None}
    card = verifier.encoder.card
    rng = np.random.default_rng(0)
    genuine, impostor = [], []
    for draw in range(DRAWS):
        order = {s: np.arange(len(w)) if draw == 0 else rng.permutation(len(w)) for s, w in voices.items()}
        path = tmp_path / f"draw{draw}.vxf"
        if draw == 0:
            report = verifier.enroll_many([(s, voices[s][j]) for s, o in order.items() for j in o[:3]])
            assert report.threshold is not None and report.threshold.source.startswith(SELF), report.threshold
        else:
            rows_of = {s: [emb[s, j] for j in o[:3] if (s, j) in emb] for s, o in order.items()}
            by = {s: np.stack(r) for s, r in rows_of.items() if r}  # a speaker whose 3 had no speech is left out
            with VoiceprintStore.edit(path, fmt="e4m3", scale="vector", dim=card.embedding_dim,
                                      model={"fingerprint": card.fingerprint, "arch": card.arch}) as store:
                for s, e in by.items():
                    store.add(s, e)
                assert calibrate_enrollment(store, by, card.threshold, card.threshold_source).changed
        g, i = held_out(path, [(s, emb[s, j]) for s, o in order.items() for j in o[3:] if (s, j) in emb])
        genuine.append(g)
        impostor.append(i)
    accepted, false_accepts = np.concatenate(genuine).mean(), np.concatenate(impostor).mean()
    assert accepted >= 0.90 and false_accepts <= 0.05, (accepted, false_accepts)

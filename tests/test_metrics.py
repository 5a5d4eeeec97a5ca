"""Tie-aware metrics pinned against scikit-learn's ROC curve, order independence, the FAR point, pair scoring."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from voxfloat.evaluate import (REFERENCE, Trials, TrialsError, evaluate, read_trials, stored_rows, unit_rows,
                               write_scores)
from voxfloat.metrics import MetricsError, det_curve, eer, flips, min_dcf, threshold_at_far
from voxfloat.store import Codec

DATA = Path(__file__).parent / "data"


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """The usual recipe: EER where 1 - FPR meets the linearly interpolated ROC, solved with brentq."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def sklearn_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    cost = p_target * (1 - tpr) + (1 - p_target) * fpr
    return float(cost.min() / min(p_target, 1 - p_target))


def synthetic(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels of one named case."""
    rng = np.random.default_rng(seed)
    y = rng.random(3000) < 0.2
    s = rng.normal(np.where(y, 1.5, 0.0), 1.0)
    if kind == "ties":          # one decimal: runs of equal scores holding targets and non-targets
        s = np.round(s, 1)
    elif kind == "few-levels":  # five distinct scores only, like a 4-bit code without scaling
        s = np.clip(np.round(s), -2, 2)
    elif kind == "all-equal":
        s = np.full(len(y), 0.25)
    elif kind == "separable":
        s = np.where(y, 2.0, 0.0) + rng.random(len(y))
    elif kind == "inverted":
        s = np.where(y, 0.0, 2.0) + rng.random(len(y))
    elif kind == "touching":    # separable except that the lowest target ties with the highest non-target
        s = np.where(y, 1.0 + rng.random(len(y)), rng.random(len(y)))
        s[np.flatnonzero(y)[0]] = s[~y].max()
    elif kind == "one-each":
        y, s = np.array([True, False]), np.array([0.8, 0.3])
    elif kind == "one-each-inverted":
        y, s = np.array([True, False]), np.array([0.3, 0.8])
    elif kind == "one-each-tied":
        y, s = np.array([True, False]), np.array([0.5, 0.5])
    return s, y


CASES = ["gaussian", "ties", "few-levels", "all-equal", "separable", "inverted", "touching", "one-each",
         "one-each-inverted", "one-each-tied"]


@pytest.fixture(scope="module")
def real() -> dict[str, np.ndarray]:
    """Real scores: GE2E (no scaling node) on ../shared/corpus trials_mixed.txt, every target and every tenth
    non-target, from `voxfloat eval --scores` (columns f32/none, e2m1/none, e2m1/vector; e2m1/none is heavily tied)."""
    z = np.load(DATA / "ge2e_mixed_scores.npz")
    return {k: z[k] for k in z.files}


def real_cases(real: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    f32 = real["f32/none"]
    return {"f32": f32, "f32-rounded": np.round(f32.astype(np.float64), 2), "e2m1-none": real["e2m1/none"],
            "e2m1-vector": real["e2m1/vector"], "e2m1-none-rounded": np.round(real["e2m1/none"].astype(np.float64), 2)}


@pytest.mark.parametrize("kind", CASES)
def test_eer_and_min_dcf_match_sklearn_on_synthetic_scores(kind: str) -> None:
    s, y = synthetic(kind)
    curve = det_curve(s, y)
    assert eer(curve)[0] == pytest.approx(sklearn_eer(s, y), abs=1e-9)
    for p in (0.01, 0.05, 0.5):
        assert min_dcf(curve, p)[0] == pytest.approx(sklearn_min_dcf(s, y, p), abs=1e-12)


def test_eer_and_min_dcf_match_sklearn_on_real_scores(real) -> None:
    y = real["labels"]
    for name, s in real_cases(real).items():
        curve = det_curve(s, y)
        assert eer(curve)[0] == pytest.approx(sklearn_eer(s, y), abs=1e-9), name
        assert min_dcf(curve)[0] == pytest.approx(sklearn_min_dcf(s, y, 0.01), abs=1e-12), name


def test_known_values_of_the_edge_cases() -> None:
    expected = {"all-equal": (0.5, 1.0), "separable": (0.0, 0.0), "inverted": (1.0, 1.0),
                "one-each": (0.0, 0.0), "one-each-inverted": (1.0, 1.0), "one-each-tied": (0.5, 1.0)}
    for kind, (rate, dcf) in expected.items():
        s, y = synthetic(kind)
        curve = det_curve(s, y)
        assert (eer(curve)[0], min_dcf(curve)[0]) == (rate, dcf), kind
    s, y = synthetic("separable")
    assert eer(det_curve(s, y))[1] == s[y].min()  # the EER threshold accepts every target and no non-target


@pytest.mark.parametrize("kind", ["gaussian", "ties", "few-levels"])
def test_det_curve_is_sklearns_full_roc(kind: str) -> None:
    s, y = synthetic(kind)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    curve = det_curve(s, y)
    np.testing.assert_array_equal(curve.far[::-1], fpr)
    np.testing.assert_allclose(curve.frr[::-1], 1 - tpr, atol=1e-15)
    np.testing.assert_array_equal(curve.thresholds[::-1][1:], thr[1:])


def every_figure(s: np.ndarray, y: np.ndarray) -> tuple:
    curve = det_curve(s, y)
    return (eer(curve), min_dcf(curve), threshold_at_far(s, y, 0.01), threshold_at_far(s, y, 0.1),
            curve.far.tolist(), curve.frr.tolist(), curve.thresholds.tolist())


@pytest.mark.parametrize("kind", ["ties", "few-levels", "all-equal", "touching", "one-each-tied"])
def test_shuffling_the_trials_changes_no_figure(kind: str) -> None:
    s, y = synthetic(kind)
    base = every_figure(s, y)
    rng = np.random.default_rng(1)
    for _ in range(12):
        p = rng.permutation(len(s))
        assert every_figure(s[p], y[p]) == base
    order = np.lexsort((~y, s))  # within each tie, targets last: the order the old per-trial points favoured most
    assert every_figure(s[order], y[order]) == base


def test_shuffling_real_rounded_scores_changes_no_figure(real) -> None:
    y = real["labels"]
    rng = np.random.default_rng(2)
    for name in ("f32-rounded", "e2m1-none-rounded"):
        s = real_cases(real)[name]
        base = every_figure(s, y)
        for _ in range(4):
            p = rng.permutation(len(s))
            assert every_figure(s[p], y[p]) == base, name


def check_far_point(s: np.ndarray, y: np.ndarray, target: float) -> None:
    t = threshold_at_far(s, y, target)
    assert (s[~y] >= t).mean() <= target  # never above the target, ties included
    below = s[s < t]
    if len(below):  # and it is the lowest such threshold: the next score down overshoots
        assert (s[~y] >= below.max()).mean() > target


def test_far_point_meets_its_target_exactly_on_tied_scores() -> None:
    # 1000 non-targets: 985 at 0.1, 15 tied at 0.7 (FAR 1.5 % there), 5 targets at 0.7 and 0.9
    s = np.array([0.1] * 985 + [0.7] * 15 + [0.7, 0.7, 0.9, 0.9, 0.9])
    y = np.array([False] * 1000 + [True] * 5)
    t = threshold_at_far(s, y, 0.01)
    assert t == 0.9 and (s[~y] >= t).mean() == 0.0
    assert threshold_at_far(s, y, 0.015) == 0.7
    for kind in ("ties", "few-levels", "all-equal", "touching"):
        s, y = synthetic(kind)
        for target in (0.0, 0.001, 0.01, 0.05, 0.2, 0.5):
            check_far_point(s, y, target)


def test_far_point_on_real_rounded_scores(real) -> None:
    y = real["labels"]
    for name, s in real_cases(real).items():
        for target in (0.001, 0.01, 0.05):
            check_far_point(s, y, target)


def test_far_point_above_every_score_rejects_everything() -> None:
    s, y = np.array([0.2, 0.9, 0.9]), np.array([True, False, True])
    t = threshold_at_far(s, y, 0.01)
    assert 0.9 < t < 0.9 + 1e-12


@pytest.mark.parametrize("scores, labels, message", [
    ([0.1, 0.2], [True, True], "both target and non-target"),
    ([0.1, 0.2], [0, 0], "both target and non-target"),
    ([0.1, 0.2, 0.3], [1, 0], "3 scores for 2 labels"),
    ([0.1, np.nan], [1, 0], "NaN or infinite"),
    ([0.1, 0.2], [1, 2], "labels must be 0"),
])
def test_undefined_metrics_fail_with_one_line(scores, labels, message) -> None:
    with pytest.raises(MetricsError, match=message) as e:
        det_curve(np.array(scores), np.array(labels))
    assert "\n" not in str(e.value)


def test_flips_and_mean_score_change() -> None:
    ref = np.array([0.1, 0.5, 0.6, 0.9])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    assert flips(s, ref, 0.55) == (0.5, pytest.approx(0.3 / 4))
    assert flips(ref, ref, 0.55) == (0.0, 0.0)


# -- evaluation of trial lists ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, list[str], list[str]]:
    """GE2E-like embeddings (non-negative, unit norm) of 30 speakers x 4 utterances, and every trial line."""
    rng = np.random.default_rng(3)
    centres = np.abs(rng.normal(size=(30, 64)))
    E = np.abs(np.repeat(centres, 4, axis=0) + rng.normal(scale=0.8, size=(120, 64))).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    paths = [f"s{i // 4:02d}/u{i % 4}.wav" for i in range(120)]
    lines = [f"{int(i // 4 == j // 4)} {paths[i]} {paths[j]}" for i in range(120) for j in range(i + 1, 120)]
    return E, paths, lines


def trials_file(tmp_path: Path, lines: list[str], name: str = "trials.txt") -> Trials:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return read_trials(path)


FORMATS, SCALES = ["f32", "e4m3", "e3m2", "e2m1"], ["none", "vector", "block32"]


def test_shuffling_the_trial_list_changes_no_row_of_the_table(population, tmp_path: Path) -> None:
    E, paths, lines = population
    rows, _, _ = evaluate(E, paths, trials_file(tmp_path, lines), FORMATS, SCALES, 0.5)
    rng = np.random.default_rng(4)
    shuffled = [lines[i] for i in rng.permutation(len(lines))]
    again, _, _ = evaluate(E, paths, trials_file(tmp_path, shuffled, "shuffled.txt"), FORMATS, SCALES, 0.5)
    assert [r.as_dict() for r in again] == [r.as_dict() for r in rows]
    e2m1 = next(r for r in rows if (r.format, r.scale) == ("e2m1", "none"))
    assert e2m1.flip_rate > 0 and e2m1.mean_abs_change > 0.01  # the unscaled 4-bit store does change decisions
    assert next(r for r in rows if (r.format, r.scale) == REFERENCE).flip_rate == 0


def test_listed_pairs_score_as_the_store_scores_them(population, tmp_path: Path) -> None:
    """Chunked pair scores equal the codec's full cosine matrix at the same (test, enroll) positions."""
    E, paths, lines = population
    trials = trials_file(tmp_path, lines)
    _, scores, _ = evaluate(E, paths, trials, FORMATS, SCALES, None)
    index = {p: i for i, p in enumerate(paths)}
    e = np.array([index[trials.files[k]] for k in trials.enroll])
    t = np.array([index[trials.files[k]] for k in trials.test])
    for fmt in FORMATS:
        for scale in SCALES:
            codec = Codec(fmt, scale)
            matrix = codec.cosine(codec.encode(E), E.shape[1], E)  # (test, enroll)
            np.testing.assert_allclose(scores[fmt, scale], matrix[t, e], atol=2e-6, err_msg=f"{fmt}/{scale}")


def test_zero_stored_rows_score_zero() -> None:
    tiny = np.full((1, 32), 0.01, np.float32)  # below e2m1's smallest step without scaling: stored as zeros
    assert not stored_rows(tiny, "e2m1", "none").any()
    np.testing.assert_allclose(np.linalg.norm(unit_rows(np.ones((2, 8))), axis=1), 1.0, rtol=1e-6)


def test_scores_file_round_trips_every_figure(population, tmp_path: Path) -> None:
    E, paths, lines = population
    trials = trials_file(tmp_path, lines + ["1 s00/u0.wav missing.wav"])
    rows, scores, labels = evaluate(E, paths, trials, ["f32", "e2m1"], ["none", "vector"], None)
    out = tmp_path / "scores.tsv"
    write_scores(out, trials, paths, scores)
    assert out.stat().st_mode & 0o777 == 0o600
    with out.open(newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))
    assert table[0] == ["label", "enroll", "test", "f32/none", "e2m1/none", "f32/vector", "e2m1/vector"]
    body = table[1:]
    assert len(body) == len(lines) and [" ".join(r[:3]) for r in body] == lines  # the unscorable trial is left out
    y = np.array([r[0] == "1" for r in body])
    np.testing.assert_array_equal(y, labels)
    for k, row in enumerate(rows, start=3):
        s = np.array([float(r[k]) for r in body])  # read back as float64, as another tool would
        assert np.array_equal(s.astype(np.float32), scores[row.format, row.scale])
        curve = det_curve(s, y)
        assert eer(curve)[0] * 100 == pytest.approx(row.point.eer, abs=1e-12)
        assert min_dcf(curve)[0] == pytest.approx(row.point.min_dcf, abs=1e-12)


def test_trials_without_both_classes_left_fail_with_one_line(population, tmp_path: Path) -> None:
    E, paths, lines = population
    trials = trials_file(tmp_path, ["1 s00/u0.wav s00/u1.wav", "0 s00/u0.wav gone.wav"])
    with pytest.raises(TrialsError, match="need targets and non-targets"):
        evaluate(E, paths, trials, ["f32"], ["none"], None)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a b\n2 a b\n")
    with pytest.raises(TrialsError, match=f"{bad}:2"):
        read_trials(bad)


def test_metrics_and_evaluation_import_no_scipy_sklearn_or_matplotlib() -> None:
    code = ("import sys, voxfloat.metrics, voxfloat.evaluate; "
            "print(sorted(m for m in ('scipy', 'sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Tie-aware detection metrics of a scored trial list: DET curve, EER, minDCF, the FAR point, decision flips.

A trial is accepted when its score is >= the threshold. Only thresholds where the score changes can be
reached, so the operating points are the distinct score values (ascending) plus +inf (reject everything):
a run of equal scores is accepted or rejected as a whole, and no figure depends on the order of the trials.
The DET staircase joins these points (FAR falls, FRR rises). The EER is where that staircase crosses
FAR = FRR, linearly interpolated between the last point with FAR > FRR and the first with FRR >= FAR: the
definition of scikit-learn's ROC curve solved with brentq on its linear interpolation. Needs only numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxfloat.errors import UsageError


class MetricsError(UsageError):
    """Scores that no detection metric is defined for (one class only, lengths differ, NaN or inf)."""


@dataclass(frozen=True)
class DetCurve:
    """Operating points at every reachable threshold: FAR and FRR as fractions, thresholds ascending."""

    far: np.ndarray         # (k + 1,) float64, from 1 down to 0
    frr: np.ndarray         # (k + 1,) float64, from 0 up to 1
    thresholds: np.ndarray  # (k + 1,) float64: the k distinct scores, then +inf
    n_target: int
    n_nontarget: int


def check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as a finite 1-D array and labels as bool of the same length, with both classes present."""
    s, y = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if len(s) != len(y):
        raise MetricsError(f"{len(s)} scores for {len(y)} labels")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise MetricsError("labels must be 0 (non-target) or 1 (target)")
        y = y.astype(bool)
    n_tar = int(y.sum())
    if n_tar == 0 or n_tar == len(y):
        raise MetricsError(f"metrics need both target and non-target trials, got {n_tar} target and "
                           f"{len(y) - n_tar} non-target")
    if not np.isfinite(s).all():
        raise MetricsError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return s, y


def det_curve(scores: np.ndarray, labels: np.ndarray) -> DetCurve:
    """FAR and FRR at each distinct score and at +inf, accepting scores >= the threshold."""
    s, y = check_scores(scores, labels)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    start = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1])  # first trial of each run of equal scores
    below = np.append(start, len(s))  # trials rejected at each threshold: those sorted before its run
    miss = np.concatenate([[0], np.cumsum(y)])[below]  # targets among them
    n_tar, n_non = int(miss[-1]), len(s) - int(miss[-1])
    fa = n_non - (below - miss)  # non-targets accepted
    return DetCurve(fa / n_non, miss / n_tar, np.append(s[start].astype(np.float64), np.inf), n_tar, n_non)


def eer(curve: DetCurve) -> tuple[float, float]:
    """(EER as a fraction, its threshold): the DET staircase's crossing of FAR = FRR, linearly interpolated.

    The threshold is interpolated the same way between the two bracketing scores (the highest score when the
    crossing lies between it and rejecting everything).
    """
    far, frr, thr = curve.far, curve.frr, curve.thresholds
    i = int(np.argmax(frr >= far))  # >= 1: the first point accepts everything (FAR 1, FRR 0)
    d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
    w = d0 / (d0 - d1)  # d0 > 0 >= d1
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    threshold = thr[i - 1] + w * (thr[i] - thr[i - 1]) if np.isfinite(thr[i]) else thr[i - 1]
    return float(rate), float(threshold)


def min_dcf(curve: DetCurve, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """(Normalised minimum detection cost, its threshold) over the reachable operating points."""
    cost = c_miss * p_target * curve.frr + c_fa * (1 - p_target) * curve.far
    j = int(np.argmin(cost))
    return float(cost[j] / min(c_miss * p_target, c_fa * (1 - p_target))), float(curve.thresholds[j])


def threshold_at_far(scores: np.ndarray, labels: np.ndarray, target_far: float) -> float:
    """Lowest threshold whose FAR (a fraction) is at most `target_far`, ties included: never above the target.

    When only rejecting everything meets the target, the threshold is the next float above the highest score.
    """
    curve = det_curve(scores, labels)
    k = int(np.argmax(curve.far <= target_far))
    t = curve.thresholds[k]
    return float(t) if np.isfinite(t) else float(np.nextafter(curve.thresholds[k - 1], np.inf))


def rates_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) as fractions when accepting scores >= `threshold`."""
    s, y = check_scores(scores, labels)
    accept = s >= threshold
    return float(accept[~y].mean()), float((~accept[y]).mean())


def flips(scores: np.ndarray, reference: np.ndarray, threshold: float) -> tuple[float, float]:
    """(Share of trials whose decision at `threshold` differs from the reference's, mean |score change|)."""
    s, r = np.asarray(scores).reshape(-1), np.asarray(reference).reshape(-1)
    if len(s) != len(r) or len(s) == 0:
        raise MetricsError(f"{len(s)} scores against {len(r)} reference scores")
    flipped = np.count_nonzero((s >= threshold) != (r >= threshold))
    change = np.abs(s.astype(np.float64) - r.astype(np.float64)).mean()
    return flipped / len(s), float(change)

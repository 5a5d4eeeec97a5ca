"""Trial-list evaluation: EER, minDCF and operating points of every storage format, as in the study."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxfloat.store import Codec, get_format


class TrialsError(ValueError):
    """A trial list that cannot be read; the message names the file and line."""


@dataclass
class Trials:
    """A VoxCeleb-style trial list: label (1 = same speaker), enroll path, test path."""

    labels: np.ndarray  # (n,) bool
    enroll: list[str]
    test: list[str]

    @property
    def files(self) -> list[str]:
        """Every audio path the list names, each once, in first-seen order."""
        return list(dict.fromkeys(self.enroll + self.test))


def read_trials(path: str | Path) -> Trials:
    """Parse `label enroll test` lines; blank lines are ignored, anything else malformed is an error."""
    labels, enroll, test = [], [], []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TrialsError(f"{path}: cannot read trial list ({e.strerror})") from None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TrialsError(f"{path}:{n}: expected 'label enroll test' with label 0 or 1, got {line[:80]!r}")
        labels.append(parts[0] == "1")
        enroll.append(parts[1])
        test.append(parts[2])
    trials = Trials(np.array(labels, dtype=bool), enroll, test)
    if not trials.labels.any() or trials.labels.all():
        raise TrialsError(f"{path}: needs both target (1) and non-target (0) trials")
    return trials


@dataclass
class Operating:
    """Error rates of one score set."""

    eer: float             # equal error rate, percent
    eer_threshold: float
    min_dcf: float         # normalised minimum detection cost, P_target 0.01, C_miss = C_fa = 1
    min_dcf_threshold: float
    far: float | None      # percent, at the given threshold
    frr: float | None
    threshold: float | None


def error_curves(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR and FRR (fractions) when accepting scores >= each threshold; thresholds ascending."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    n_tar, n_non = y.sum(), (~y).sum()
    # Rejecting everything below position i: misses are targets before i, false alarms non-targets from i on.
    miss = np.concatenate([[0], np.cumsum(y)])
    fa = n_non - np.concatenate([[0], np.cumsum(~y)])
    thresholds = np.concatenate([s, [np.inf]])
    return fa / n_non, miss / n_tar, thresholds


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None,
                    p_target: float = 0.01) -> Operating:
    """EER (crossing of FAR and FRR, interpolated), minDCF, and FAR/FRR at `threshold`."""
    far, frr, thr = error_curves(scores, labels)
    i = int(np.argmax(frr >= far))  # first index where FRR has caught up with FAR
    if i == 0:
        eer, eer_thr = (far[0] + frr[0]) / 2, thr[0]
    else:  # linear interpolation between the two points either side of the crossing
        d0, d1 = far[i - 1] - frr[i - 1], far[i] - frr[i]
        w = d0 / (d0 - d1) if d0 != d1 else 0.5
        eer = far[i - 1] + w * (far[i] - far[i - 1])
        eer_thr = thr[i - 1] + w * (thr[i] - thr[i - 1]) if np.isfinite(thr[i]) else thr[i - 1]
    cost = (frr * p_target + far * (1 - p_target)) / min(p_target, 1 - p_target)
    j = int(np.argmin(cost))
    at_far = at_frr = None
    if threshold is not None:
        accept = scores >= threshold
        at_far = 100.0 * float(accept[~labels].mean())
        at_frr = 100.0 * float((~accept[labels]).mean())
    return Operating(100.0 * float(eer), float(eer_thr), float(cost[j]), float(thr[j]), at_far, at_frr, threshold)


def threshold_at_far(scores: np.ndarray, labels: np.ndarray, target_far: float) -> float:
    """Lowest threshold whose false-acceptance rate is at most `target_far` (a fraction)."""
    far, _, thr = error_curves(scores, labels)
    return float(thr[int(np.argmax(far <= target_far))])


@dataclass
class FormatResult:
    """One row of the evaluation table."""

    format: str
    scale: str
    bits: int
    bytes_per_voiceprint: int
    n_target: int
    n_nontarget: int
    point: Operating

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("point"))
        return d


def trial_scores(embeddings: np.ndarray, index: dict[str, int], trials: Trials, fmt: str, scale: str) -> np.ndarray:
    """Cosine of each trial: enroll side stored in `fmt`/`scale` (as a store would hold it), test side float32."""
    codec = Codec(fmt, scale)
    dim = embeddings.shape[1]
    enroll_ids = sorted({index[p] for p in trials.enroll})
    test_ids = sorted({index[p] for p in trials.test})
    packed = codec.encode(embeddings[enroll_ids])
    matrix = codec.cosine(packed, dim, embeddings[test_ids])  # (n_test, n_enroll)
    row = {k: r for r, k in enumerate(test_ids)}
    col = {k: c for c, k in enumerate(enroll_ids)}
    t = np.fromiter((row[index[p]] for p in trials.test), dtype=np.int64, count=len(trials.test))
    e = np.fromiter((col[index[p]] for p in trials.enroll), dtype=np.int64, count=len(trials.enroll))
    return matrix[t, e]


def evaluate(embeddings: np.ndarray, paths: Sequence[str], trials: Trials, formats: Sequence[str],
             scales: Sequence[str], threshold: float | None) -> tuple[list[FormatResult], dict[tuple[str, str], np.ndarray], np.ndarray]:
    """Score `trials` in every format and scale mode; trials naming a path without an embedding are dropped.

    Returns the table rows, the scores by (format, scale) and the labels of the trials kept.
    """
    index = {p: i for i, p in enumerate(paths)}
    keep = np.array([e in index and t in index for e, t in zip(trials.enroll, trials.test)], dtype=bool)
    kept = Trials(trials.labels[keep], [p for p, k in zip(trials.enroll, keep) if k],
                  [p for p, k in zip(trials.test, keep) if k])
    if not kept.labels.any() or kept.labels.all():
        raise TrialsError("too few trials left after dropping unreadable audio: need targets and non-targets")
    dim = embeddings.shape[1]
    rows, scores = [], {}
    for scale in scales:
        for fmt in formats:
            s = trial_scores(embeddings, index, kept, fmt, scale)
            scores[fmt, scale] = s
            rows.append(FormatResult(fmt, scale, get_format(fmt).bits, Codec(fmt, scale).row_bytes(dim),
                                     int(kept.labels.sum()), int((~kept.labels).sum()),
                                     operating_point(s, kept.labels, threshold)))
    return rows, scores, kept.labels


def format_table(rows: Sequence[FormatResult]) -> str:
    """The study's table: per format EER, minDCF, EER threshold and FAR/FRR at the model's threshold."""
    base = {r.scale: r.point.eer for r in rows if r.format == "f32"}
    head = f"{'format':<6} {'scale':<7} {'bits':>4} {'bytes':>6} {'EER %':>7} {'dEER':>6} {'minDCF':>7} {'EER thr':>8} {'FAR %':>7} {'FRR %':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r.point
        d = f"{p.eer - base[r.scale]:+6.2f}" if r.scale in base else f"{'':>6}"
        far = f"{p.far:7.2f}" if p.far is not None else f"{'-':>7}"
        frr = f"{p.frr:7.2f}" if p.frr is not None else f"{'-':>7}"
        lines.append(f"{r.format:<6} {r.scale:<7} {r.bits:>4} {r.bytes_per_voiceprint:>6} {p.eer:7.2f} {d} "
                     f"{p.min_dcf:7.4f} {p.eer_threshold:8.4f} {far} {frr}")
    n = rows[0]
    thr = f"at threshold {n.point.threshold:.4f}" if n.point.threshold is not None else "(no model threshold)"
    lines.append(f"{n.n_target} target / {n.n_nontarget} non-target trials; FAR/FRR {thr}; "
                 f"one target trial moves the EER by {50.0 / n.n_target:.3f} points")
    return "\n".join(lines)


def plot(scores: dict[tuple[str, str], np.ndarray], labels: np.ndarray, out: str | Path) -> None:
    """DET curves (probit axes) of every format, and target/non-target score histograms per format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    keys = list(scores)
    cols = 3
    hist_rows = (len(keys) + cols - 1) // cols
    fig = plt.figure(figsize=(4 * cols, 4 + 2.6 * hist_rows))
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[1.6] + [1] * hist_rows)
    det = fig.add_subplot(grid[0, :])
    ticks = np.array([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40])
    for fmt, scale in keys:
        far, frr, _ = error_curves(scores[fmt, scale], labels)
        far, frr = np.clip(far, 1e-4, 1 - 1e-4), np.clip(frr, 1e-4, 1 - 1e-4)  # probit of 0 or 1 is infinite
        det.plot(norm.ppf(far), norm.ppf(frr), label=f"{fmt}/{scale}", lw=1)
    det.set_xticks(norm.ppf(ticks / 100), [f"{t:g}" for t in ticks])
    det.set_yticks(norm.ppf(ticks / 100), [f"{t:g}" for t in ticks])
    det.set_xlim(norm.ppf(0.0005), norm.ppf(0.5))
    det.set_ylim(norm.ppf(0.0005), norm.ppf(0.5))
    det.set_xlabel("false acceptance rate (%)")
    det.set_ylabel("false rejection rate (%)")
    det.set_title("DET curves")
    det.grid(True, alpha=0.3)
    det.legend(fontsize=7, ncol=3)
    for k, (fmt, scale) in enumerate(keys):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        s = scores[fmt, scale]
        bins = np.linspace(float(s.min()), float(s.max()), 60)
        ax.hist(s[~labels], bins=bins, density=True, alpha=0.6, label="non-target")
        ax.hist(s[labels], bins=bins, density=True, alpha=0.6, label="target")
        ax.set_title(f"{fmt}/{scale}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

"""Trial-list evaluation: EER, minDCF, operating points and decision flips of every storage format.

Only the listed pairs are scored, chunk by chunk, so a list of millions of trials never needs an
n_test x n_enroll score matrix. The metrics are tie-aware (see voxfloat.metrics): no figure depends on the
order of the trial list. Needs only numpy (and matplotlib for `plot`, imported when called).
"""
from __future__ import annotations

import io
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import BinaryIO

import numpy as np

from voxfloat.errors import OutputError, VoxfloatError
from voxfloat.files import open_regular, write_private
from voxfloat.metrics import det_curve, eer, flips, min_dcf, rates_at
from voxfloat.store import Codec, get_format

PAIR_CHUNK = 4096      # trials scored at a time: two (chunk, dim) float32 gathers, cache-sized
ROWS_PER_WRITE = 65536  # score-file rows formatted at a time
REFERENCE = ("f32", "none")  # what flip rates and score changes are measured against: the plain float32 cosine


class TrialsError(VoxfloatError):
    """A trial list that cannot be read; the message names the file and line."""


@dataclass
class Trials:
    """A VoxCeleb-style trial list: label (1 = same speaker) and the enroll and test file of each trial."""

    labels: np.ndarray  # (n,) bool
    enroll: np.ndarray  # (n,) int32 index into files
    test: np.ndarray    # (n,) int32 index into files
    files: list[str]    # every audio path the list names, each once, in first-seen order


def read_trials(path: str | Path) -> Trials:
    """Parse `label enroll test` lines; blank lines are ignored, anything else malformed is an error."""
    labels, enroll, test = bytearray(), array("i"), array("i")
    index: dict[str, int] = {}
    # utf-8-sig: a byte-order mark, as editors on Windows write it, is not part of the first label
    with open_regular(path, TrialsError, "trial list") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as text:
        try:
            for n, line in enumerate(text, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 3 or parts[0] not in ("0", "1"):
                    raise TrialsError(f"{path}:{n}: expected 'label enroll test' with label 0 or 1, got {line.strip()[:80]!r}")
                labels.append(parts[0] == "1")
                enroll.append(index.setdefault(parts[1], len(index)))
                test.append(index.setdefault(parts[2], len(index)))
        except UnicodeDecodeError:
            raise TrialsError(f"{path}: not UTF-8 text") from None
        except OSError as e:
            raise TrialsError(f"{path}: cannot read trial list ({e.strerror})") from None
    trials = Trials(np.frombuffer(labels, np.uint8).astype(bool), np.frombuffer(enroll, np.intc),
                    np.frombuffer(test, np.intc), list(index))
    if not trials.labels.any() or trials.labels.all():
        raise TrialsError(f"{path}: needs both target (1) and non-target (0) trials")
    return trials


def scored_pairs(trials: Trials, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask of the trials whose two files have an embedding, their enroll rows, their test rows in `paths`)."""
    row = {p: i for i, p in enumerate(paths)}
    row_of_file = np.array([row.get(f, -1) for f in trials.files], np.int32)
    e, t = row_of_file[trials.enroll], row_of_file[trials.test]
    keep = (e >= 0) & (t >= 0)
    return (keep, e, t) if keep.all() else (keep, e[keep], t[keep])


def compact(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values of `rows`, ascending, and each entry's position among them), in O(len + n) memory."""
    used = np.flatnonzero(np.bincount(rows, minlength=n))
    position = np.zeros(n, np.int32)
    position[used] = np.arange(len(used), dtype=np.int32)
    return used, position[rows]


@dataclass
class Operating:
    """Error rates of one score set (tie-aware, see voxfloat.metrics)."""

    eer: float             # equal error rate, percent
    eer_threshold: float
    min_dcf: float         # normalised minimum detection cost, P_target 0.01, C_miss = C_fa = 1
    min_dcf_threshold: float
    far: float | None      # percent, at the given threshold
    frr: float | None
    threshold: float | None


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None,
                    p_target: float = 0.01) -> Operating:
    """EER and its threshold, minDCF and its threshold, and FAR/FRR at `threshold`."""
    curve = det_curve(scores, labels)
    rate, eer_thr = eer(curve)
    dcf, dcf_thr = min_dcf(curve, p_target)
    far = frr = None
    if threshold is not None:
        far, frr = (100.0 * r for r in rates_at(scores, labels, threshold))
    return Operating(100.0 * rate, eer_thr, dcf, dcf_thr, far, frr, threshold)


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
    flip_rate: float        # percent of trials decided otherwise than float32 at float32's EER threshold
    mean_abs_change: float  # mean |score - float32 score|
    flip_threshold: float   # float32's EER threshold

    def as_dict(self) -> dict:
        """Flat dict for JSON: the operating point's fields beside the row's."""
        d = asdict(self)
        d.update(d.pop("point"))
        return d


def unit_rows(E: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (norms in float64), as float32; zero rows stay zero and so score 0."""
    E = np.asarray(E, np.float32)
    norms = np.linalg.norm(E.astype(np.float64), axis=1, keepdims=True)
    return (E / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def stored_rows(embeddings: np.ndarray, fmt: str, scale: str) -> np.ndarray:
    """Unit rows of the embeddings as a store in `fmt`/`scale` holds them (encoded, then decoded)."""
    codec = Codec(fmt, scale)
    return unit_rows(codec.decode(codec.encode(embeddings), embeddings.shape[1]))


def pair_scores(enrolled: np.ndarray, queries: np.ndarray, enroll_rows: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
    """(n,) float32 cosine of unit rows enrolled[enroll_rows[i]] and queries[test_rows[i]], only the listed pairs.

    Products in float32, each pair's sum in float64, chunk by chunk: a pair's score never depends on its
    position in the list, and memory stays at two (chunk, dim) gathers whatever the list's length.
    """
    out = np.empty(len(enroll_rows), np.float32)
    for lo in range(0, len(out), PAIR_CHUNK):
        x = enrolled[enroll_rows[lo:lo + PAIR_CHUNK]]
        x *= queries[test_rows[lo:lo + PAIR_CHUNK]]
        out[lo:lo + len(x)] = x.sum(axis=1, dtype=np.float64)
    return out


def evaluate(embeddings: np.ndarray, paths: Sequence[str], trials: Trials, formats: Sequence[str],
             scales: Sequence[str], threshold: float | None) -> tuple[list[FormatResult], dict[tuple[str, str], np.ndarray], np.ndarray]:
    """Score `trials` in every format and scale mode; trials naming a path without an embedding are dropped.

    The enrolled side is stored in each format, the test side stays float32. Returns the table rows, the
    scores by (format, scale) and the labels of the trials kept.
    """
    keep, e_rows, t_rows = scored_pairs(trials, paths)
    labels = trials.labels[keep]
    if not labels.any() or labels.all():
        raise TrialsError("too few trials left after dropping unreadable audio: need targets and non-targets")
    embeddings = np.asarray(embeddings, np.float32)
    enroll_ids, e_pair = compact(e_rows, len(embeddings))
    test_ids, t_pair = compact(t_rows, len(embeddings))
    queries = unit_rows(embeddings[test_ids])
    reference = pair_scores(unit_rows(embeddings[enroll_ids]), queries, e_pair, t_pair)
    flip_threshold = eer(det_curve(reference, labels))[1]
    dim = embeddings.shape[1]
    rows, scores = [], {}
    for scale in scales:
        for fmt in formats:
            s = reference if (fmt, scale) == REFERENCE else \
                pair_scores(stored_rows(embeddings[enroll_ids], fmt, scale), queries, e_pair, t_pair)
            scores[fmt, scale] = s
            flip, change = flips(s, reference, flip_threshold)
            rows.append(FormatResult(fmt, scale, get_format(fmt).bits, Codec(fmt, scale).row_bytes(dim),
                                     int(labels.sum()), int((~labels).sum()), operating_point(s, labels, threshold),
                                     100.0 * flip, change, flip_threshold))
    return rows, scores, labels


def write_scores(path: str | Path, trials: Trials, paths: Sequence[str], scores: dict[tuple[str, str], np.ndarray]) -> None:
    """Per-trial scores as TSV (`label enroll test` then one `FORMAT/SCALE` column each), private and atomic.

    Scores are written as the shortest decimals that read back as the same float32, so ties and order survive
    and any other tool recomputes the same metrics. The rows are the trials `evaluate` kept, in list order.
    """
    keep, _, _ = scored_pairs(trials, paths)
    files = np.array(trials.files, dtype=object)
    enroll, test = files[trials.enroll[keep]], files[trials.test[keep]]
    labels = np.where(trials.labels[keep], "1", "0")
    keys = list(scores)

    def write(f: BinaryIO) -> None:
        f.write(("\t".join(["label", "enroll", "test"] + [f"{fmt}/{scale}" for fmt, scale in keys]) + "\n").encode())
        for lo in range(0, len(labels), ROWS_PER_WRITE):
            cut = slice(lo, lo + ROWS_PER_WRITE)
            cols = [labels[cut], enroll[cut], test[cut]] + [scores[k][cut].astype(np.float32).astype(str) for k in keys]
            f.write(("\n".join(map("\t".join, zip(*cols))) + "\n").encode())

    write_private(path, write)


def format_table(rows: Sequence[FormatResult]) -> str:
    """The study's table: per format EER, minDCF, EER threshold, flips against float32, FAR/FRR at the threshold."""
    base = {r.scale: r.point.eer for r in rows if r.format == "f32"}
    head = (f"{'format':<6} {'scale':<7} {'bits':>4} {'bytes':>6} {'EER %':>7} {'dEER':>6} {'minDCF':>7} "
            f"{'EER thr':>8} {'flip %':>7} {'mean|ds|':>9} {'FAR %':>7} {'FRR %':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r.point
        d = f"{p.eer - base[r.scale]:+6.2f}" if r.scale in base else f"{'':>6}"
        far = f"{p.far:7.2f}" if p.far is not None else f"{'-':>7}"
        frr = f"{p.frr:7.2f}" if p.frr is not None else f"{'-':>7}"
        lines.append(f"{r.format:<6} {r.scale:<7} {r.bits:>4} {r.bytes_per_voiceprint:>6} {p.eer:7.2f} {d} "
                     f"{p.min_dcf:7.4f} {p.eer_threshold:8.4f} {r.flip_rate:7.3f} {r.mean_abs_change:9.2e} {far} {frr}")
    n = rows[0]
    thr = f"at threshold {n.point.threshold:.4f}" if n.point.threshold is not None else "(no model threshold)"
    lines.append(f"{n.n_target} target / {n.n_nontarget} non-target trials; FAR/FRR {thr}; flips against float32 "
                 f"at its EER threshold {n.flip_threshold:.4f}; one target trial moves the EER by "
                 f"{50.0 / n.n_target:.3f} points")
    return "\n".join(lines)


def check_plotting() -> None:
    """Refuse `--plot` up front, with one line, when matplotlib is not installed."""
    if find_spec("matplotlib") is None:
        raise OutputError("--plot needs matplotlib: pip install 'voxfloat[plot]'")


def probit(p: np.ndarray) -> np.ndarray:
    """Inverse standard normal CDF for DET axes, for p in [1e-4, 1 - 1e-4] (numpy only, error < 2e-6)."""
    from statistics import NormalDist

    z = np.linspace(-3.8, 3.8, 4001)
    cdf = np.array([NormalDist().cdf(v) for v in z])
    return np.interp(p, cdf, z)


def plot(scores: dict[tuple[str, str], np.ndarray], labels: np.ndarray, out: str | Path) -> None:
    """DET curves (probit axes) of every format, and target/non-target score histograms per format."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(scores)
    cols = 3
    hist_rows = (len(keys) + cols - 1) // cols
    fig = plt.figure(figsize=(4 * cols, 4 + 2.6 * hist_rows))
    kind = Path(out).suffix[1:].lower() or "png"
    if kind not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise OutputError(f"{out}: cannot draw a .{kind} file; use .png, .pdf or .svg")
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[1.6] + [1] * hist_rows)
    det = fig.add_subplot(grid[0, :])
    ticks = np.array([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40])
    for fmt, scale in keys:
        curve = det_curve(scores[fmt, scale], labels)
        far, frr = np.clip(curve.far, 1e-4, 1 - 1e-4), np.clip(curve.frr, 1e-4, 1 - 1e-4)  # probit of 0 or 1 is infinite
        det.plot(probit(far), probit(frr), label=f"{fmt}/{scale}", lw=1)
    det.set_xticks(probit(ticks / 100), [f"{t:g}" for t in ticks])
    det.set_yticks(probit(ticks / 100), [f"{t:g}" for t in ticks])
    det.set_xlim(*probit(np.array([0.0005, 0.5])))
    det.set_ylim(*probit(np.array([0.0005, 0.5])))
    det.set_xlabel("false acceptance rate (%)")
    det.set_ylabel("false rejection rate (%)")
    det.set_title("DET curves")
    det.grid(True, alpha=0.3)
    det.legend(fontsize=7, ncol=3)
    for k, (fmt, scale) in enumerate(keys):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        s = scores[fmt, scale]
        lo, hi = float(s.min()), float(s.max())
        bins = np.linspace(lo, hi, 60) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, 3)  # all-equal scores
        ax.hist(s[~labels], bins=bins, density=True, alpha=0.6, label="non-target")
        ax.hist(s[labels], bins=bins, density=True, alpha=0.6, label="target")
        ax.set_title(f"{fmt}/{scale}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.axes[1].legend(fontsize=7)
    fig.tight_layout()
    try:
        write_private(out, lambda f: fig.savefig(f, format=kind, dpi=110))
    finally:
        plt.close(fig)

"""Benchmark of `voxfloat eval`'s trial scoring and metrics on a synthetic list of millions of trials (one core).

Writes synthetic GE2E-like embeddings and a VoxCeleb-style trial list to a temporary folder, then runs each
stage in a fresh process so that its peak memory (ru_maxrss above the process's start, inputs loaded and
numba kernels compiled) is its own: reading the list; scoring the listed pairs in every format with the
metrics of each; writing the per-trial scores file. Prints CPU seconds (the machine is shared: wall time would measure the neighbours),
peak memory, and what the n_test x n_enroll score matrix that is no longer built would have needed.

    python bench/eval_bench.py                       # 10 million trials, 40,000 files, f32,e4m3,e2m1
    python bench/eval_bench.py --trials 1000000 --scores
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DIM = 256
PER_SPEAKER = 8


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(folder: Path, n_files: int, n_trials: int, seed: int = 0) -> None:
    """GE2E-like embeddings (non-negative, unit norm, 8 utterances a speaker) and a random trial list, 10 % targets."""
    rng = np.random.default_rng(seed)
    speakers = n_files // PER_SPEAKER
    centres = np.abs(rng.standard_normal((speakers, DIM), dtype=np.float32))
    E = np.abs(np.repeat(centres, PER_SPEAKER, axis=0)
               + rng.standard_normal((speakers * PER_SPEAKER, DIM), dtype=np.float32) * np.float32(0.9))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    np.save(folder / "embeddings.npy", E)
    names = np.array([f"spk{i // PER_SPEAKER:05d}/utt{i % PER_SPEAKER}.wav" for i in range(len(E))], dtype=object)
    (folder / "paths.txt").write_text("\n".join(names) + "\n")
    with open(folder / "trials.txt", "w") as fh:
        for lo in range(0, n_trials, 500_000):
            m = min(500_000, n_trials - lo)
            enroll = rng.integers(0, len(E), m)
            target = rng.random(m) < 0.1
            other = rng.integers(0, len(E), m)
            same = enroll // PER_SPEAKER * PER_SPEAKER + (enroll + 1 + rng.integers(0, PER_SPEAKER - 1, m)) % PER_SPEAKER
            test = np.where(target, same, other)
            target = test // PER_SPEAKER == enroll // PER_SPEAKER
            label = np.where(target, "1", "0")
            fh.write("\n".join(map(" ".join, zip(label, names[enroll], names[test]))) + "\n")


def stage(folder: Path, name: str, formats: list[str]) -> dict:
    """Run one stage in this process (called in a child); returns CPU seconds and peak memory above the start."""
    from voxfloat.evaluate import evaluate, read_trials, stored_rows, write_scores
    from voxfloat.metrics import det_curve, eer, min_dcf

    E = np.load(folder / "embeddings.npy")
    paths = (folder / "paths.txt").read_text().split()
    for fmt in formats:  # compile the codec's numba kernels first: a fixed cost, not the list's
        stored_rows(E[:2], fmt, "vector")
    base = rss_mb()
    out: dict = {}
    t = time.process_time()
    trials = read_trials(folder / "trials.txt")
    out["read_s"] = time.process_time() - t
    out["n_trials"] = len(trials.labels)
    out["n_enroll"] = len(np.unique(trials.enroll))
    out["n_test"] = len(np.unique(trials.test))
    if name != "read":
        t = time.process_time()
        rows, scores, labels = evaluate(E, paths, trials, formats, ["vector"], None)
        out["eval_s"] = time.process_time() - t
        t = time.process_time()
        curve = det_curve(scores[formats[0], "vector"], labels)
        eer(curve), min_dcf(curve)
        out["metrics_s"] = time.process_time() - t
        out["eer"] = {r.format: r.point.eer for r in rows}
        if name == "scores":
            t = time.process_time()
            write_scores(folder / "scores.tsv", trials, paths, scores)
            out["scores_s"] = time.process_time() - t
            out["scores_mb"] = (folder / "scores.tsv").stat().st_size / 2**20
    out["peak_mb"] = rss_mb() - base
    return out


def child(folder: Path, name: str, formats: list[str]) -> dict:
    """One stage in a fresh process, so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--stage", name, "--folder", str(folder), "--formats", ",".join(formats)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"stage {name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=40_000)
    ap.add_argument("--formats", default="f32,e4m3,e2m1")
    ap.add_argument("--scores", action="store_true", help="also time writing the per-trial scores file")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    formats = args.formats.split(",")
    if args.stage:
        print(json.dumps(stage(args.folder, args.stage, formats)))
        return
    with tempfile.TemporaryDirectory(prefix="eval_bench.") as tmp:
        folder = Path(tmp)
        t = time.process_time()
        make_inputs(folder, args.files, args.trials)
        print(f"inputs: {args.trials:,} trials over {args.files:,} synthetic {DIM}-dim embeddings "
              f"({time.process_time() - t:.0f} CPU s to make)")
        read = child(folder, "read", formats)
        ev = child(folder, "scores" if args.scores else "eval", formats)
    n, k = ev["n_trials"], len(formats) + 1  # the float32 reference is always scored too
    matrix_gb = ev["n_test"] * ev["n_enroll"] * 4 / 2**30
    print(f"\n{'stage':<44} {'CPU s':>8} {'peak MB':>9} {'trials/s':>11}")
    print("-" * 75)
    print(f"{'read the trial list':<44} {read['read_s']:8.1f} {read['peak_mb']:9.0f} {n / read['read_s']:11,.0f}")
    print(f"{f'score {len(formats)} formats + float32 reference, metrics':<44} {ev['eval_s']:8.1f} {'':>9} "
          f"{n * k / ev['eval_s']:11,.0f}")
    print(f"{'metrics of one score set (DET, EER, minDCF)':<44} {ev['metrics_s']:8.1f} {'':>9} "
          f"{n / ev['metrics_s']:11,.0f}")
    if args.scores:
        label = f"write the scores file ({ev['scores_mb']:.0f} MB)"
        print(f"{label:<44} {ev['scores_s']:8.1f} {'':>9} {n / ev['scores_s']:11,.0f}")
    print(f"{'whole eval (read, score, metrics' + (', write' if args.scores else '') + ')':<44} "
          f"{ev['read_s'] + ev['eval_s'] + ev.get('scores_s', 0):8.1f} {ev['peak_mb']:9.0f}")
    print(f"\n{ev['n_enroll']:,} enroll x {ev['n_test']:,} test files: a full score matrix would take "
          f"{matrix_gb:.1f} GB per format; EER % (vector): "
          + ", ".join(f"{f} {v:.3f}" for f, v in ev["eer"].items()))


if __name__ == "__main__":
    main()

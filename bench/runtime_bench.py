"""Extraction throughput of ONNX Runtime CPU (voxfloat.runtime.SpeakerEncoder) against PyTorch eager.

The same model (default: the embedded GE2E) runs in one process on both engines with the same
thread count, on 2, 6 and 10 s inputs at batch 1 and 16 (equal lengths: SpeakerEncoder's exact
batching puts all 16 in one run). RTF = compute seconds per audio second; "x RT" = 1 / RTF.
Run: .venv/bin/python bench/runtime_bench.py [--arch ge2e] [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from voxfloat.export.core import build, export_onnx
from voxfloat.runtime import SpeakerEncoder


def race(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Fastest of `repeats` calls of each, after a warm-up, in seconds; calls alternate so that load
    from other processes falls on both engines alike, and the minimum is the least disturbed run."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def speechlike(seconds: float, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` noise waveforms with a 4 Hz syllable envelope at 16 kHz (encoder cost ignores content)."""
    n = int(seconds * 16000)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(n) / 16000)
    return [(0.1 * envelope * rng.standard_normal(n)).astype(np.float32) for _ in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ge2e")
    ap.add_argument("--checkpoint", type=Path, default=None, help="weights (default: the arch's embedded default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 6.0, 10.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    built = build(args.arch, args.checkpoint)
    model = built.encoder.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / f"{args.arch}.onnx"
        export_onnx(model, built.card, onnx_path, None, dynamo=built.dynamo)  # same model: no scaling node
        enc = SpeakerEncoder(onnx_path, device="cpu", threads=args.threads, batch_size=max(args.batches))
    rng = np.random.default_rng(0)
    speedups: list[float] = []
    print(f"{args.arch}: {built.card.source}; {args.threads} thread(s) each, fastest of {args.repeats} "
          f"alternating runs after a warm-up; torch {torch.__version__}, providers {enc.providers}\n")
    print("| input | batch | PyTorch ms | ORT ms | PyTorch RTF | ORT RTF | PyTorch x RT | ORT x RT | ORT speed-up | cosine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        for batch in args.batches:
            waves = speechlike(seconds, batch, rng)
            stacked = torch.from_numpy(np.stack(waves))

            def run_torch() -> np.ndarray:
                with torch.inference_mode():
                    return model(stacked).numpy()

            def run_ort() -> np.ndarray:
                return enc.embed_batch(waves)

            a, b = run_torch(), run_ort()
            cos = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
            t_torch, t_ort = race([run_torch, run_ort], args.repeats)
            audio = seconds * batch
            speedups.append(t_torch / t_ort)
            print(f"| {seconds:g} s | {batch} | {1000 * t_torch:.1f} | {1000 * t_ort:.1f} | {t_torch / audio:.4f} | "
                  f"{t_ort / audio:.4f} | {audio / t_torch:.0f} | {audio / t_ort:.0f} | {t_torch / t_ort:.2f}x | "
                  f"{cos:.6f} |", flush=True)
    met = sum(x >= 1.5 for x in speedups)
    print(f"\ntarget ORT >= 1.5x PyTorch: met in {met} of {len(speedups)} cells "
          f"(speed-up {min(speedups):.2f}x to {max(speedups):.2f}x)")


if __name__ == "__main__":
    main()

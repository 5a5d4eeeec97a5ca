"""Quantized encoders: file size, peak memory, CPU real-time factor (1 thread) and cosine to float32, per precision.

Every exported encoder (GE2E with its trained weights; the seed architectures with the reference weights
rebuilt from ../shared/reference, for size, speed and cosine only) is quantized with voxfloat.runtime.quantize
to int8, int4, e4m3 and mxfp4, calibrated on files spread over ../shared/corpus. Speed: best (and median) of
--repeats rounds (the models interleaved) on a --seconds input in this process at 1 intra-op thread; memory: resident set of a fresh process
after it loaded the model and ran it once (onnxruntime's arena keeps the run's peak), and its growth over the imports.
Cosine: embeddings of --cos-files corpus files (clean and degraded) against float32's. For GE2E also the EER on
the clean, hard and mixed lists (all 960 files, no VAD: the model alone) and the int8 layer-by-layer sensitivity.
Run: taskset -c 1 .venv/bin/python bench/quant_bench.py [--arch ge2e,campplus,...] [--seconds 10] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from export_bench import ARCHS, REFERENCE, checkpoint
from voxfloat.evaluate import evaluate, read_trials
from voxfloat.export.core import build, export_onnx
from voxfloat.runtime.encoder import SpeakerEncoder
from voxfloat.runtime.quantize import WEIGHTS, calibration_files, int8_dynamic, load_waves, quantize, weighted_nodes
from voxfloat.runtime.session import make_session

CORPUS = REFERENCE.parent / "corpus"
PEAK = """
import sys, numpy as np, onnxruntime as ort
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
before = rss()
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
s.run(None, {"waveform": np.zeros((1, int(sys.argv[2])), np.float32) + 0.01})
print(before, rss())
"""


def memory_mb(model: Path, samples: int) -> tuple[float, float]:
    """Resident MB of a fresh process after it loaded `model` and ran it once, and the growth over its imports.

    onnxruntime's arena keeps what the run allocated, so this is the run's peak (the process's own high-water
    mark is set by importing onnxruntime, whose libraries are mapped and then partly released).
    """
    out = subprocess.run([sys.executable, "-c", PEAK, str(model), str(samples)], capture_output=True, text=True, check=True)
    before, after = (int(v) / 1024 for v in out.stdout.split()[-2:])
    return after, after - before


def timings(models: dict[str, Path], wave: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Seconds of each model's runs on `wave` at 1 thread: rounds interleave the models, so a busy machine
    slows them alike; one warm-up run each first."""
    sessions = {name: make_session(path, device="cpu", threads=1)[0] for name, path in models.items()}
    feed = {"waveform": wave[None]}
    times: dict[str, list[float]] = {name: [] for name in models}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - t)
    return times


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine."""
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def ge2e_eers(models: dict[str, Path]) -> None:
    """EER of every GE2E variant on the three full trial lists, and its mean cosine to float32 on all 960 files."""
    lists = {name: read_trials(CORPUS / f"trials_{name}.txt") for name in ("clean", "hard", "mixed")}
    files = sorted({f for t in lists.values() for f in t.files})
    embedded = {}
    for name, path in models.items():
        result = SpeakerEncoder(path, device="cpu", threads=2, vad=False).embed_files([str(CORPUS / f) for f in files])
        assert not result.errors, result.errors[:3]
        embedded[name] = result.embeddings
    print(f"\nGE2E on all {len(files)} corpus files: EER % per list (relative change to float32), cosine to float32")
    head = f"{'weights':<8} {'clean':>14} {'hard':>14} {'mixed':>14} {'mean cos':>9} {'min cos':>8}"
    print(head + "\n" + "-" * len(head))
    base = {n: evaluate(embedded["float32"], files, t, ["f32"], ["none"], None)[0][0].point.eer for n, t in lists.items()}
    for name, e in embedded.items():
        cells = []
        for n, t in lists.items():
            eer = evaluate(e, files, t, ["f32"], ["none"], None)[0][0].point.eer
            cells.append(f"{eer:6.2f} ({100 * (eer / base[n] - 1):+5.1f}%)")
        c = cosines(e, embedded["float32"])
        print(f"{name:<8} {' '.join(f'{x:>14}' for x in cells)} {c.mean():>9.4f} {c.min():>8.4f}", flush=True)


def ge2e_layers(model: Path, waves: list[np.ndarray], work: Path) -> None:
    """Mean/min cosine to float32 with dynamic per-channel int8 on one weighted layer at a time, then on the sets used."""
    body, _ = weighted_nodes(onnx.load(str(model)))
    names = [n.name for n in body]
    reference = SpeakerEncoder(model, device="cpu", threads=2).embed_batch(waves)
    print(f"\nGE2E int8 layer by layer (dynamic per-channel int8 weights and activations), {len(waves)} calibration files")
    sets = [[n] for n in names] + [names[1:], names]
    for chosen in sets:
        out = work / "layer.onnx"
        int8_dynamic(model, out, chosen, ("LSTM", "Gemm", "MatMul"))
        c = cosines(SpeakerEncoder(out, device="cpu", threads=2).embed_batch(waves), reference)
        print(f"  {' + '.join(n.rsplit('/', 1)[-1] for n in chosen):<32} mean cos {c.mean():.4f}  min {c.min():.4f}", flush=True)


def bench_arch(name: str, args: argparse.Namespace, work: Path, wave: np.ndarray, cos_files: list[Path]) -> None:
    """Export, quantize to every precision and print one table for `name`."""
    ref = ARCHS[name]
    t0 = time.time()
    built = build(name.split("-c")[0] if name.startswith("ecapa") else name, checkpoint(ref, work) if ref else None)
    models = {"float32": work / f"{name}.onnx"}
    export_onnx(built.encoder, built.card, models["float32"], "e4m3", dynamo=built.dynamo)
    del built
    parity = {}
    for weights in WEIGHTS:
        models[weights] = work / f"{name}-{weights}.onnx"
        card = quantize(models["float32"], weights, models[weights], CORPUS, threads=2,
                        max_files=64 if name == "ge2e" else args.calib_files).card
        parity[weights] = card.quantization["parity"]
    waves, _ = load_waves(cos_files, SpeakerEncoder(models["float32"], device="cpu").card)
    reference = SpeakerEncoder(models["float32"], device="cpu", threads=2).embed_batch(waves)
    print(f"\n{name} ({time.time() - t0:.0f} s to export and quantize; parity = recorded on the calibration files)")
    head = (f"{'weights':<8} {'MB':>7} {'size':>6} {'RSS MB':>8} {'+MB':>7} {'RTF best':>9} {'median':>7} {'speed':>6} {'(med)':>6} "
            f"{'cos mean':>9} {'cos min':>8} {'parity':>7}")
    print(head + "\n" + "-" * len(head))
    times = timings(models, wave, args.repeats)
    best0, median0 = min(times["float32"]), statistics.median(times["float32"])
    for weights, path in models.items():
        best, median = min(times[weights]), statistics.median(times[weights])
        rss, grown = memory_mb(path, len(wave))
        c = cosines(SpeakerEncoder(path, device="cpu", threads=2).embed_batch(waves), reference)
        size0 = models["float32"].stat().st_size
        p = parity.get(weights)
        print(f"{weights:<8} {path.stat().st_size / 2**20:>7.2f} {path.stat().st_size / size0:>5.2f}x {rss:>8.0f} "
              f"{grown:>7.0f} {best / args.seconds:>9.4f} {median / args.seconds:>7.4f} {best0 / best:>5.2f}x {median0 / median:>5.2f}x "
              f"{c.mean():>9.4f} {c.min():>8.4f} {p['mean'] if p else 1:>7.4f}", flush=True)
    if name == "ge2e":
        calib, _ = load_waves(calibration_files(CORPUS, 64), SpeakerEncoder(models["float32"], device="cpu").card)
        ge2e_layers(models["float32"], calib, work)
        ge2e_eers(models)
    for path in models.values():
        path.unlink()
    for stale in work.glob("*.pt"):
        stale.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cos-files", type=int, default=32, help="corpus files for the seed architectures' cosine")
    ap.add_argument("--calib-files", type=int, default=32, help="calibration files for the seed architectures")
    args = ap.parse_args()
    wave = (np.random.default_rng(0).standard_normal(int(args.seconds * 16000)) * 0.05).astype(np.float32)
    everything = sorted(CORPUS.glob("*/*/*.flac"))
    cos_files = [everything[int(i)] for i in np.linspace(3, len(everything) - 5, args.cos_files).round()]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, affinity {sorted(os.sched_getaffinity(0))}, "
          f"load average {os.getloadavg()[0]:.1f} at start ({time.strftime('%H:%M UTC', time.gmtime())}); "
          f"RTF = compute time / audio time, {args.seconds:g} s input, 1 thread, {args.repeats} runs; "
          "RSS MB after loading and one run in a fresh process (+MB: growth over its imports)")
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
        for name in args.arch.split(","):
            bench_arch(name, args, Path(tmp), wave, cos_files)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end ({time.strftime('%H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()

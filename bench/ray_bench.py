"""Enrollment embedding throughput: the local engine against Ray with 1 and 2 workers, and a 10-million plan.

    python bench/ray_bench.py [--files 240] [--model M.onnx]

Every engine embeds the same corpus files with one ONNX thread per worker (each also decodes and trims speech
in a thread of its own); the cold Ray figures include starting the local cluster and the actor pool, as a
user's run does, the warm ones only the actor pool. The plan divides 10 million utterances by the local
engine's measured CPU time per utterance; decoding and speech trimming stay on the CPU even with a GPU
encoder, so their measured cost is the CPU floor per utterance there.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from voxfloat.api import open_encoder
from voxfloat.runtime.audio import load_audio

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
UTTERANCES = 10_000_000


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cpu_timed(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=240)
    ap.add_argument("--model", default=None, help="ONNX model (default: the shipped GE2E)")
    args = ap.parse_args()
    files = sorted(str(p) for p in (CORPUS / "clean").rglob("*.flac"))[:args.files]
    import ray

    from voxfloat.ray_engine import RayEncoder, RayOptions

    local = open_encoder(args.model, device="cpu", threads=1)
    model = str(local.path)
    _, decode_s = cpu_timed(lambda: [local.speech(load_audio(f, local.card.sample_rate, local.card.min_seconds), f)
                                 for f in files])
    (ref, local_s), local_cpu = cpu_timed(lambda: timed(lambda: local.embed_files(files)))
    rows = [("local engine, 1 thread", 1, local_s, 0.0)]
    for workers in (1, 2):
        def run():
            return RayEncoder(model, {"threads": 1}, RayOptions(workers=workers)).embed_files(files)
        got, seconds = timed(run)
        _, warm = timed(run)
        ray.shutdown()
        assert np.abs(got.embeddings - ref.embeddings).max() < 1e-4, "Ray and local embeddings differ"
        rows.append((f"ray, {workers} worker{'s' * (workers > 1)} (cold / warm cluster)", workers, seconds, warm))
    n = len(files)
    print(f"{n} files of {CORPUS / 'clean'}, {local.card.arch}; decoding and speech trimming alone "
          f"{1000 * decode_s / n:.1f} ms a file\n")
    print("| engine | workers | wall s | files/s | warm wall s | warm files/s | warm wall x workers vs local |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cores, s, warm in rows:
        over = "" if not warm else f"{100 * (warm * cores / local_s - 1):+.0f} %"
        print(f"| {name} | {cores} | {s:.1f} | {n / s:.1f} | {warm or s:.1f} | {n / (warm or s):.1f} | {over} |")
    per_utt = local_cpu / n
    core_hours = UTTERANCES * per_utt / 3600
    print(f"\n10 million utterances with {local.card.arch} on CPU: {per_utt * 1000:.1f} ms of CPU a file "
          f"(decoding, trimming and embedding) = {core_hours:,.0f} core-hours")
    for nodes, cores in ((4, 16), (16, 16), (32, 32)):
        print(f"  {nodes} nodes x {cores} cores: {core_hours / (nodes * cores):.1f} h")
    floor = decode_s / n
    print(f"with a GPU encoder the embedding leaves the CPU but decoding and trimming stay: {1000 * floor:.1f} ms of "
          f"CPU a file, {UTTERANCES * floor / 3600:,.0f} core-hours; a GPU that embeds R files/s needs about "
          f"R x {floor:.3f} CPU cores beside it (R from bench/gpu_check.sh)")

if __name__ == "__main__":
    main()

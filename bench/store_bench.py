"""Benchmark of voxfloat.store on random embedding-like vectors, against numpy float32 and FAISS (one core).

Prints tables: bytes per voiceprint and file size per format and scale mode; encode/decode throughput;
open time of .vxf files; 1:N identification (top-5) throughput for one query and a batch of 64 with
top-1 agreement to exact float32 search, next to numpy float32 matmul, FAISS IndexFlatIP and
IndexScalarQuantizer (QT_fp16, QT_8bit, QT_6bit, QT_4bit); then the scan target: one query, every format
in vector and block32 mode against the FAISS quantizer of the same bytes per vector (e2m1: 2x QT_4bit),
with the bytes scanned per second next to this machine's single-core read bandwidth, measured in the same
run. faiss-cpu is a benchmark-only dependency. The machine is shared, so pin it to one core and take the
best of several runs: CPU time of the fastest of --repeats calls.

    taskset -c 1 python bench/store_bench.py            # 100k for every format and mode, 1M for vector and block32
    taskset -c 1 python bench/store_bench.py --big 0    # skip the 1M runs
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # one core for everybody, FAISS and BLAS included

import argparse  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from voxfloat.store import FORMATS, SCALE_MODES, Codec, VoiceprintStore  # noqa: E402

DIM = 512
MODEL = {"fingerprint": "0" * 64, "arch": "bench"}
SQ_TYPES = ("QT_fp16", "QT_8bit", "QT_6bit", "QT_4bit")


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Roughly normal, anisotropic (per-dimension spread), L2-normalised float32 vectors."""
    rng = np.random.default_rng(seed)
    spread = rng.lognormal(0.0, 0.4, DIM).astype(np.float32)
    E = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - lo), DIM), dtype=np.float32) * spread + 0.02
        E[lo:lo + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return E


def queries(E: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    """New "utterances" of k enrolled speakers: their vector plus noise, cosine about 0.6 to it."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(E), k, replace=False)
    q = E[idx] + rng.standard_normal((k, DIM), dtype=np.float32) * np.float32(1.33 / np.sqrt(DIM))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def cpu(fn, reps: int = 1) -> float:
    """Least CPU seconds of `reps` calls (the machine is shared: wall time would measure the neighbours)."""
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def table(title: str, head: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in cells:
        print("| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(r)) + " |")


def mib(b: float) -> str:
    return f"{b / 2 ** 20:.1f}"


@numba.njit(nogil=True, cache=True)
def _xor_all(a: np.ndarray) -> np.uint64:
    acc = np.uint64(0)
    for i in range(a.size):
        acc ^= a[i]
    return acc


def read_bandwidth(mib: int = 512, reps: int = 5) -> float:
    """Bytes per second one core reads from memory: a vectorised XOR over `mib` MiB (far beyond the caches)."""
    a = np.arange(mib * 2 ** 17, dtype=np.uint64)
    _xor_all(a[:1024])
    return a.nbytes / cpu(lambda: _xor_all(a), reps)


def exact_top1(E: np.ndarray, Q: np.ndarray) -> np.ndarray:
    return np.concatenate([np.argmax(E @ Q[i:i + 64].T, axis=0) for i in range(0, len(Q), 64)])


def bench_store(tmp: Path, fmt: str, scale: str, E: np.ndarray, ids: list[str], Q64: np.ndarray,
                Qa: np.ndarray, top_a: np.ndarray) -> dict:
    path = tmp / f"{fmt}-{scale}.vxf"
    enc = cpu(lambda: Codec(fmt, scale).encode(E))
    t = time.perf_counter()
    with VoiceprintStore.edit(path, fmt=fmt, scale=scale, dim=DIM, model=MODEL) as s:
        s.add_many(ids, E)
    built = time.perf_counter() - t
    t = time.perf_counter()
    with VoiceprintStore.open(path) as s:
        opened = time.perf_counter() - t
        norms = cpu(lambda: s.identify(Q64[:1], 5))  # the first query also computes the cached row norms
        res = _searches(lambda q, k: s.identify(q, k), Q64, Qa, top_a, {sid: i for i, sid in enumerate(ids)})
        dec = cpu(lambda: s.codec.decode(s.packed[:100_000], DIM), reps=2)
        res.update(encode=enc, build=built, decode=min(len(E), 100_000) / dec, open=opened, norms=norms,
                   size=path.stat().st_size, row=s.codec.row_bytes(DIM))
    path.unlink()
    return res


REPEATS = 7  # calls timed per single-query figure (--repeats)
SQ_OF_BITS = {16: "QT_fp16", 8: "QT_8bit", 6: "QT_6bit", 4: "QT_4bit"}  # same bytes per vector


def _searches(search, Q64: np.ndarray, Qa: np.ndarray, top_a: np.ndarray, pos: dict | None = None) -> dict:
    """CPU time of a top-5 search for one query and for 64, and top-1 agreement with exact float32."""
    one = cpu(lambda: search(Q64[:1], 5), reps=REPEATS)
    batch = cpu(lambda: search(Q64, 5), reps=2)
    if pos is None:  # FAISS: (scores, ids)
        top = search(Qa, 1)[1][:, 0]
    else:  # VoiceprintStore.identify: [[(speaker id, score)]]
        top = np.array([pos[hits[0][0]] for hits in search(Qa, 1)])
    return dict(one=one, batch=batch, agree=float(np.mean(top == top_a)))


def _faiss_flat(E: np.ndarray, Q64: np.ndarray, Qa: np.ndarray, top_a: np.ndarray) -> dict:
    import faiss  # benchmark-only dependency (extra dev): gpu_check imports this module without it

    ix = faiss.IndexFlatIP(DIM)
    ix.add(E)
    return dict(**_searches(ix.search, Q64, Qa, top_a), size=E.nbytes, row=4 * DIM)


def _faiss_sq(qt: str, E: np.ndarray, Q64: np.ndarray, Qa: np.ndarray, top_a: np.ndarray) -> dict:
    import faiss

    ix = faiss.IndexScalarQuantizer(DIM, getattr(faiss.ScalarQuantizer, qt), faiss.METRIC_INNER_PRODUCT)
    ix.train(E[:100_000])
    enc = cpu(lambda: ix.add(E))
    return dict(**_searches(ix.search, Q64, Qa, top_a), encode=enc, size=ix.sa_code_size() * len(E),
                row=ix.sa_code_size())


def bench_faiss(E: np.ndarray, Q64: np.ndarray, Qa: np.ndarray, top_a: np.ndarray) -> dict[str, dict]:
    out = {"faiss IndexFlatIP": _faiss_flat(E, Q64, Qa, top_a)}
    for qt in SQ_TYPES:
        out[f"faiss SQ {qt}"] = _faiss_sq(qt, E, Q64, Qa, top_a)
    out["numpy f32 matmul"] = dict(one=cpu(lambda: np.argpartition(-(E @ Q64[0]), 5)[:5], 5),
                                   batch=cpu(lambda: [np.argpartition(-(E[i:i + 65536] @ Q64.T), 5, axis=0)
                                                      for i in range(0, len(E), 65536)], 2),
                                   agree=1.0, size=E.nbytes, row=4 * DIM)
    return out


def scan_rows(n: int, results: dict[str, dict]) -> list[list]:
    rows = []
    for name, r in results.items():
        rows.append([name, r["row"], mib(r["size"]), f"{n / r['one'] / 1e6:.1f}", f"{1 / r['one']:.0f}",
                     f"{64 * n / r['batch'] / 1e6:.1f}", f"{64 / r['batch']:.0f}", f"{100 * r['agree']:.1f}"])
    return rows


def target_rows(n: int, ours: dict[str, dict], theirs: dict[str, dict], bandwidth: float) -> list[list]:
    """Per vector/block32 combination: scan speed and bytes/s, the FAISS counterpart, the ratio and the target."""
    rows = []
    for name, r in ours.items():
        fmt, scale = name.split("/")
        bits = Codec(fmt, scale).format.bits
        if scale == "none" or bits not in SQ_OF_BITS:
            continue
        sq = SQ_OF_BITS[bits]
        ratio, want = theirs[f"faiss SQ {sq}"]["one"] / r["one"], 2.0 if fmt == "e2m1" else 1.0
        rate = n * r["row"] / r["one"]
        rows.append([name, r["row"], f"{n / r['one'] / 1e6:.1f}", f"{rate / 1e9:.2f}",
                     f"{100 * rate / bandwidth:.0f}", sq, f"{n / theirs[f'faiss SQ {sq}']['one'] / 1e6:.1f}",
                     f"{ratio:.2f}x", f"{want:.1f}x", "yes" if ratio >= want else "NO", f"{100 * r['agree']:.1f}"])
    return rows


def run(n: int, combos: list[tuple[str, str]], tmp: Path, n_agree: int) -> None:
    t0 = time.perf_counter()
    E = embeddings(n)
    ids = [f"spk{i:07d}" for i in range(n)]
    Q64, Qa = queries(E, 64), queries(E, n_agree, seed=2)
    top_a = exact_top1(E, Qa)
    print(f"\n## {n:,} x {DIM} vectors (data ready in {time.perf_counter() - t0:.0f} s)")
    ours = {f"{f}/{s}": bench_store(tmp, f, s, E, ids, Q64, Qa, top_a) for f, s in combos}
    table(f"Encode, decode, build and open ({n:,} voiceprints; encode/decode: Codec, CPU time; build: "
          "add_many + atomic write, wall; open: wall, incl. crc32)",
          ["format/scale", "bytes/vector", "file MiB", "encode s", "encode Mval/s", "decode Mval/s",
           "build s", "open ms", "first query (norms) ms"],
          [[k, r["row"], mib(r["size"]), f"{r['encode']:.2f}", f"{n * DIM / r['encode'] / 1e6:.0f}",
            f"{r['decode'] * DIM / 1e6:.0f}", f"{r['build']:.1f}", f"{1e3 * r['open']:.1f}",
            f"{1e3 * r['norms']:.0f}"]
           for k, r in ours.items()])
    theirs = bench_faiss(E, Q64, Qa, top_a)
    table(f"1:N identification, top-5, {n:,} vectors, one core (best CPU time of {REPEATS} / 2 runs); agreement = "
          f"top-1 equal to exact float32 on {n_agree} queries",
          ["method", "bytes/vector", "MiB held", "1 query Mvec/s", "queries/s", "batch 64 Mvec/s", "queries/s",
           "top-1 agree %"],
          scan_rows(n, {**ours, **theirs}))
    bandwidth = read_bandwidth()
    table(f"Scan target, {n:,} vectors, one query, top-5, one core: every format >= 1.0x the FAISS scalar quantizer "
          f"of the same bytes per vector, e2m1 >= 2x QT_4bit; single-core read bandwidth {bandwidth / 1e9:.1f} GB/s",
          ["format/scale", "bytes/vector", "Mvec/s", "GB/s", "% of bandwidth", "FAISS", "FAISS Mvec/s", "ratio",
           "target", "met", "top-1 agree %"],
          target_rows(n, ours, theirs, bandwidth))


def main() -> None:
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100_000, help="vectors for every format and scale mode")
    ap.add_argument("--big", type=int, default=1_000_000, help="vectors for vector and block32 modes (0: skip)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timed calls per single-query figure (best)")
    args = ap.parse_args()
    REPEATS = args.repeats
    import faiss

    print(f"voxfloat store benchmark: numpy {np.__version__}, faiss {faiss.__version__}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, pinned to cores {sorted(os.sched_getaffinity(0))}; "
          f"single-query figures: best of {REPEATS} calls, CPU time")
    codec_sizes = [[f"{f}", *[Codec(f, s).row_bytes(DIM) for s in SCALE_MODES]] for f in FORMATS]
    table(f"Bytes per {DIM}-dim voiceprint (file: + 4 bytes n_utterances + id + header)", ["format", *SCALE_MODES],
          codec_sizes)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as d:
        run(args.small, [(f, s) for f in FORMATS for s in SCALE_MODES], Path(d), 512)
        if args.big:
            big = [(f, s) for f in FORMATS if f != "f32" for s in ("vector", "block32")]
            run(args.big, big, Path(d), 64)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"\npeak resident memory of this process: {peak:.1f} GiB")


if __name__ == "__main__":
    main()

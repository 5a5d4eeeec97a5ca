"""GPU acceptance checks, one step per call; bench/gpu_check.sh runs every step under its own time limit.

Steps (each prints its table and appends it to --out row by row, so a cut-off run keeps what it measured):
  env         GPU, driver, onnxruntime with its CUDA build, the CUDA runtime and cuDNN it really loads
  export      GE2E (embedded weights), CAM++ and WavLM (reference weights, ../shared/reference) to ONNX
  providers   the provider of each CUDA session and where its nodes run (onnxruntime's profile)
  parity      GE2E and CAM++ on CUDA against CPU: reference inputs and corpus files, one by one and batched
  throughput  RTF and embeddings/s, CUDA and CPU, batch 1 and 16 of 10 s inputs, I/O binding on and off
  scan        the store's 1:N scan of a million voiceprints on this machine's CPU, one core
Exit status 0: every check of the step passed; 1: a check failed (the table says which).
--quick shrinks the sizes (GE2E only, 2 s inputs, batches 1 and 4, 20,000 voiceprints) for the CPU-only test.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MIN_COSINE = 0.9999
PARITY_MODELS = ("ge2e", "campplus")
CORPUS_FILES = 4  # the first utterance of the first speakers of ../shared/corpus/clean


class Table:
    """A markdown table written to stdout and appended to a file one row at a time."""

    def __init__(self, out: Path, title: str, head: list[str]):
        self.out, self.failed = out, False
        self._write(f"\n### {title}\n\n| {' | '.join(head)} |\n|{'|'.join('---' for _ in head)}|")

    def _write(self, text: str) -> None:
        print(text, flush=True)
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def row(self, *cells: object, ok: bool | None = None) -> None:
        """One row; the last cell is PASS (ok True), FAIL (False: the step's exit status becomes 1) or - (None)."""
        mark = ["-" if ok is None else "PASS" if ok else "FAIL"]
        self.failed |= ok is False
        self._write("| " + " | ".join(str(c) for c in [*cells, *mark]) + " |")


def one_line(e: BaseException) -> str:
    """Exception type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def model_names(quick: bool) -> list[str]:
    return ["ge2e"] if quick else ["ge2e", "campplus", "wavlm"]


def model_path(models: Path, arch: str) -> Path:
    return models / f"{arch}.onnx"


# -- env ---------------------------------------------------------------------------------------------

def nvidia_smi() -> str:
    """'name, driver, memory' of each GPU from nvidia-smi, or why there is none."""
    smi = os.environ.get("VOXFLOAT_GPU_CHECK_NVIDIA_SMI", "nvidia-smi")
    try:
        got = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"none ({one_line(e)})"
    text = (got.stdout.strip() or got.stderr.strip()).replace("\n", "; ")
    return text if got.returncode == 0 else f"none ({text})"


def library_version(soname: str, symbol: str) -> str:
    """Version an already loadable CUDA library reports through `symbol` (int out-parameter or return)."""
    try:
        lib = ctypes.CDLL(soname)
    except OSError as e:
        return f"not loadable ({one_line(e)})"
    fn = getattr(lib, symbol)
    if symbol == "cudnnGetVersion":
        fn.restype = ctypes.c_size_t
        v = fn()
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}" if v >= 90000 else str(v)
    out = ctypes.c_int(0)
    rc = fn(ctypes.byref(out))
    return f"{out.value // 1000}.{out.value % 1000 // 10}" if rc == 0 else f"error {rc}"


def step_env(args: argparse.Namespace) -> Table:
    import onnxruntime as ort

    from voxfloat.runtime.session import CUDA, preload_cuda_libraries

    t = Table(args.out, "Machine and libraries", ["what", "value", "check"])
    t.row("GPU (name, driver, memory)", nvidia_smi())
    from onnxruntime.capi import build_and_package_info

    build_cuda = getattr(build_and_package_info, "cuda_version", "none")
    t.row("onnxruntime", f"{ort.__version__} ({ort.get_device()}, built for CUDA {build_cuda})")
    has_cuda = CUDA in ort.get_available_providers()
    t.row("available providers", ", ".join(ort.get_available_providers()),
          ok=has_cuda if args.device == "cuda" else None)
    wheels = sorted(f"{d.metadata['Name']} {d.version}" for d in importlib.metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("nvidia-"))
    t.row("nvidia pip wheels", ", ".join(wheels) or "none")
    if args.device == "cuda":
        t.row("preloaded from the wheels", preload_cuda_libraries())
        major = str(build_cuda).split(".")[0]
        for name, soname, symbol in (("CUDA driver API", "libcuda.so.1", "cuDriverGetVersion"),
                                     ("CUDA runtime", f"libcudart.so.{major}", "cudaRuntimeGetVersion"),
                                     ("cuDNN", "libcudnn.so.9", "cudnnGetVersion")):
            v = library_version(soname, symbol)
            t.row(f"{name} ({soname})", v, ok=not v.startswith(("not", "error")))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    t.row("CPU", f"{cpu}, {os.cpu_count()} logical cores")
    t.row("Python, numpy", f"{platform.python_version()}, {np.__version__}")
    return t


# -- export ------------------------------------------------------------------------------------------

def step_export(args: argparse.Namespace) -> Table:
    import torch
    from export_bench import ARCHS as REFERENCE_WEIGHTS, checkpoint

    from voxfloat.export.core import build, export_onnx
    from voxfloat.runtime import read_card

    torch.set_num_threads(os.cpu_count() or 1)
    args.models.mkdir(parents=True, exist_ok=True)
    t = Table(args.out, "Exported models (unscaled float32 embeddings)",
              ["model", "weights", "dim", "ONNX MB", "export s", "check"])
    for arch in model_names(args.quick):
        path, ref = model_path(args.models, arch), REFERENCE_WEIGHTS[arch]
        weights = f"reference {ref}" if ref else "embedded"
        start = time.perf_counter()
        try:
            if not path.is_file():
                with tempfile.TemporaryDirectory(dir=args.models) as tmp:
                    built = build(arch, checkpoint(ref, Path(tmp)) if ref else None)
                    export_onnx(built.encoder, built.card, Path(tmp) / path.name, None, dynamo=built.dynamo)
                    os.replace(Path(tmp) / path.name, path)
            else:
                weights += " (reused)"
            card = read_card(path)
        except Exception as e:  # the row says why; the other models are still exported
            t.row(arch, weights, "-", "-", f"{time.perf_counter() - start:.1f} ({one_line(e)})", ok=False)
            continue
        t.row(arch, weights, card.embedding_dim, f"{path.stat().st_size / 1e6:.1f}",
              f"{time.perf_counter() - start:.1f}", ok=True)
    return t


# -- providers ---------------------------------------------------------------------------------------

def node_placement(path: Path, device: str, wave: np.ndarray) -> dict[str, list[str]]:
    """Provider -> op types of the nodes onnxruntime's profiler saw run there, for one run on `device`."""
    import onnxruntime as ort

    from voxfloat.runtime.card import INPUT_NAME
    from voxfloat.runtime.session import CPU, CUDA, cuda_options, session_options

    with tempfile.TemporaryDirectory() as tmp:
        so = session_options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        providers = [(CUDA, cuda_options()), CPU] if device == "cuda" else [CPU]
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        sess.run(None, {INPUT_NAME: wave[None]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    placed: dict[str, list[str]] = {}
    for ev in events:
        a = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in a and ev.get("name", "").endswith("_kernel_time"):
            placed.setdefault(a["provider"], []).append(a.get("op_name", "?"))
    return placed


def step_providers(args: argparse.Namespace) -> Table:
    from voxfloat.runtime import SpeakerEncoder

    t = Table(args.out, f"Providers of the {args.device.upper()} sessions",
              ["model", "device", "session providers", "nodes by provider (profiled run)", "check"])
    want = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}[args.device]
    wave = reference_inputs()["utt_2p00s"]
    for arch in model_names(args.quick):
        try:
            enc = SpeakerEncoder(model_path(args.models, arch), device=args.device)
            placed = node_placement(enc.path, args.device, wave)
        except Exception as e:  # a ModelError says CUDA did not load and why
            t.row(arch, "-", "-", one_line(e), ok=False)
            continue
        counts = "; ".join(f"{p}: {len(ops)}" + ("" if p == want else f" ({', '.join(sorted(set(ops)))})")
                           for p, ops in sorted(placed.items()))
        t.row(arch, enc.device, ", ".join(enc.providers), counts,
              ok=enc.device == args.device and len(placed.get(want, [])) > 0)
    return t


# -- parity ------------------------------------------------------------------------------------------

def reference_inputs() -> dict[str, np.ndarray]:
    """The four 16 kHz reference waveforms of ../shared/reference/inputs.npz, by name."""
    z = np.load(SHARED / "reference" / "inputs.npz")
    return {str(n): z[str(n)].astype(np.float32) for n in z["names"]}


def corpus_inputs(count: int) -> dict[str, np.ndarray]:
    """The first clean utterance of the first `count` corpus speakers, decoded at 16 kHz."""
    from voxfloat.runtime import load_audio

    speakers = sorted(p for p in (SHARED / "corpus" / "clean").iterdir() if p.is_dir())[:count]
    files = [sorted(s.glob("*.flac"))[0] for s in speakers]
    return {f.name: load_audio(f, 16000) for f in files}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def step_parity(args: argparse.Namespace) -> Table:
    from voxfloat.runtime import SpeakerEncoder

    t = Table(args.out, f"Parity, {args.device.upper()} with I/O binding against CPU without "
              f"(cosine >= {MIN_COSINE})", ["model", "inputs", f"{args.device.upper()} run", "min cosine", "check"])
    inputs = {**reference_inputs(), **corpus_inputs(CORPUS_FILES)}
    crop = min(len(w) for w in inputs.values())
    for arch in [a for a in PARITY_MODELS if a in model_names(args.quick)]:
        path = model_path(args.models, arch)
        try:
            gpu = SpeakerEncoder(path, device=args.device, batch_size=len(inputs), io_binding=True)
            cpu = SpeakerEncoder(path, device="cpu", io_binding=False)
        except Exception as e:
            t.row(arch, "-", "-", one_line(e), ok=False)
            continue
        whole = list(inputs.values())
        for label, waves, batched in ((f"{len(whole)} whole (4 reference, {CORPUS_FILES} corpus)", whole, False),
                                      (f"{len(whole)} crops of {crop / 16000:.2f} s", [w[:crop] for w in whole], True)):
            want = np.stack([cpu.embed(w) for w in waves])
            runs = {"one by one": np.stack([gpu.embed(w) for w in waves])}
            if batched:  # equal lengths: the whole batch in one run
                runs[f"batch of {len(waves)}"] = gpu.embed_batch(waves)
            for how, got in runs.items():
                worst = float(cosines(got, want).min())
                t.row(arch, label, how, f"{worst:.6f}", ok=worst >= MIN_COSINE)
    return t


# -- throughput --------------------------------------------------------------------------------------

def timed(fn: Callable[[], object], repeats: int, deadline: float) -> tuple[float, int]:
    """Fastest of up to `repeats` calls after a warm-up, and how many ran (at least one; none once
    the step's deadline has passed)."""
    fn()
    best, runs = float("inf"), 0
    while runs < repeats and (runs == 0 or time.monotonic() < deadline):
        start = time.perf_counter()
        fn()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return best, runs


def step_throughput(args: argparse.Namespace) -> Table:
    from runtime_bench import speechlike

    from voxfloat.runtime import SpeakerEncoder

    seconds, batches = (2.0, [1, 4]) if args.quick else (10.0, [1, 16])
    deadline = time.monotonic() + 0.85 * args.budget
    devices = ["cuda", "cpu"] if args.device == "cuda" else ["cpu"]
    t = Table(args.out, f"Throughput, {seconds:g} s inputs (CPU: one intra-op thread per physical core; "
              "fastest of up to 3 runs after a warm-up)",
              ["model", "device", "I/O binding", "batch", "ms a run", "RTF", "x real time", "embeddings/s",
               "runs", "check"])
    waves = {b: speechlike(seconds, b, np.random.default_rng(b)) for b in batches}
    for device in devices:  # CUDA first: a run cut short still has the GPU figures
        for arch in model_names(args.quick):
            for binding in (False, True):
                try:
                    enc = SpeakerEncoder(model_path(args.models, arch), device=device, batch_size=max(batches),
                                         io_binding=binding)
                except Exception as e:
                    t.row(arch, device, "on" if binding else "off", "-", one_line(e), "", "", "", "", ok=False)
                    continue
                for b in batches:
                    sec, runs = timed(lambda: enc.embed_batch(waves[b]), 3, deadline)
                    t.row(arch, enc.device, "on" if binding else "off", b, f"{1e3 * sec:.1f}",
                          f"{sec / (b * seconds):.4f}", f"{b * seconds / sec:.0f}", f"{b / sec:.1f}", runs,
                          ok=enc.device == device)
    return t


# -- scan ----------------------------------------------------------------------------------------------

def step_scan(args: argparse.Namespace) -> Table:
    import store_bench  # sets one thread for BLAS and numba before they load

    n = 20_000 if args.quick else 1_000_000
    E = store_bench.embeddings(n)
    ids = [f"spk{i:07d}" for i in range(n)]
    Q64, Qa = store_bench.queries(E, 64), store_bench.queries(E, 64, seed=2)
    top_a = store_bench.exact_top1(E, Qa)
    bandwidth = store_bench.read_bandwidth()
    t = Table(args.out, f"Store 1:N scan, top-5, {n:,} x {store_bench.DIM} voiceprints, one CPU core "
              f"(single-core read bandwidth {bandwidth / 1e9:.1f} GB/s)",
              ["format/scale", "bytes/vector", "1 query Mvec/s", "1 query GB/s", "batch 64 Mvec/s",
               "top-1 agree %", "check"])
    with tempfile.TemporaryDirectory(dir=args.models) as tmp:
        for fmt, scale in (("f16", "vector"), ("e4m3", "vector"), ("e2m1", "vector"), ("e2m1", "block32")):
            r = store_bench.bench_store(Path(tmp), fmt, scale, E, ids, Q64, Qa, top_a)
            t.row(f"{fmt}/{scale}", r["row"], f"{n / r['one'] / 1e6:.1f}", f"{n * r['row'] / r['one'] / 1e9:.2f}",
                  f"{64 * n / r['batch'] / 1e6:.1f}", f"{100 * r['agree']:.1f}", ok=r["agree"] >= 0.95)
    return t


STEPS = {"env": step_env, "export": step_export, "providers": step_providers, "parity": step_parity,
         "throughput": step_throughput, "scan": step_scan}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--out", type=Path, required=True, help="markdown file the tables are appended to")
    ap.add_argument("--models", type=Path, required=True, help="folder of the exported models")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: no GPU, CPU checks only")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds this step may take (throughput)")
    ap.add_argument("--quick", action="store_true", help="small sizes (the CPU-only test)")
    args = ap.parse_args()
    try:
        table = STEPS[args.step](args)
    except Exception as e:  # one line in the table, not a traceback; the step fails
        Table(args.out, f"{args.step}: error", ["error"]).row(one_line(e), ok=False)
        return 1
    return 1 if table.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Per architecture: parameters, ONNX size, and CPU real-time factor of ONNX Runtime vs PyTorch eager.

Checkpoints are rebuilt from ../shared/reference/weights_rule.py (speed does not depend on the
weights). Both engines run in this process with the same thread count, on a 10 s input.
Run: .venv/bin/python bench/export_bench.py [--threads 2] [--seconds 10] [--arch ge2e,campplus,...]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from voxfloat.export.core import build, export_onnx
from voxfloat.runtime import make_session

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ARCHS = {  # voxfloat arch -> reference checkpoint (None: the embedded GE2E weights)
    "ge2e": None, "campplus": "campplus_3dspeaker", "campplus-wespeaker": "campplus_wespeaker",
    "ecapa-c512": "ecapa_tdnn_glob_c512", "ecapa-c1024": "ecapa_tdnn_glob_c1024",
    "resnet34": "resnet34_wespeaker", "redimnet": "redimnet_b2", "wavlm": "wavlm_base_plus_sv",
}


def checkpoint(name: str, folder: Path) -> Path:
    """Write the reference checkpoint `name` in its official layout."""
    spec = importlib.util.spec_from_file_location("weights_rule", REFERENCE / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    out = folder / f"{name}.pt"
    rule.save_official_checkpoint(json.loads((REFERENCE / f"{name}.json").read_text()), str(out),
                                  npz=str(REFERENCE / f"{name}.npz"))
    return out


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", default=",".join(ARCHS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wave = (np.random.default_rng(0).standard_normal(int(args.seconds * 16000)) * 0.05).astype(np.float32)
    print(f"{args.seconds:g} s input, {args.threads} threads, best of {args.repeats}; RTF = compute time / audio time")
    head = f"{'arch':<20} {'params':>11} {'ONNX MB':>8} {'torch RTF':>10} {'ORT RTF':>9} {'speed-up':>9}"
    print(head + "\n" + "-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.arch.split(","):
            ref = ARCHS[name]
            built = build(name.split("-c")[0] if name.startswith("ecapa") else name,
                          checkpoint(ref, Path(tmp)) if ref else None)
            model = Path(tmp) / f"{name}.onnx"
            export_onnx(built.encoder, built.card, model, "e4m3", dynamo=built.dynamo)
            session, _ = make_session(model, device="cpu", threads=args.threads)
            x = wave[None]
            with torch.no_grad():
                t_torch = best_of(lambda: built.encoder(torch.from_numpy(x)), args.repeats)
            t_ort = best_of(lambda: session.run(None, {"waveform": x}), args.repeats)
            params = sum(p.numel() for p in built.encoder.parameters())
            print(f"{name:<20} {params:>11,} {model.stat().st_size / 2**20:>8.1f} {t_torch / args.seconds:>10.4f} "
                  f"{t_ort / args.seconds:>9.4f} {t_torch / t_ort:>8.2f}x", flush=True)
            model.unlink()


if __name__ == "__main__":
    main()

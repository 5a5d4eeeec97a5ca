"""Load test of `voxfloat serve`: verify requests of 3 s audio from concurrent clients on loopback.

For each --workers value the real server starts on a free port (a store of 10 corpus speakers enrolled
with the CLI), then: one client sending --quiet requests one after another (the latency of one verify),
and --clients clients sharing --requests requests (keep-alive connections). Printed per run: throughput
(answers with status 200 per second), p50/p99 latency, errors (any other status, a failed connection, or no
answer by --deadline), the server's peak RSS (VmHWM of each of its processes) and the machine's conditions:
CPU seconds used by the server, by this client and by everything else meanwhile.
Run: .venv/bin/python bench/serve_load.py [--model M.onnx] [--workers 1 2] [--requests 1000] [--clients 8]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from voxfloat.runtime.default_model import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import CLI, start_server, stop  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measured pass."""

    label: str
    clients: int
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    errors: int
    server_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float

    def row(self) -> str:
        lat = self.latencies_ms
        p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if lat.size else (np.nan, np.nan)
        return (f"| {self.label} | {self.clients} | {self.requests} | {self.seconds:.1f} | "
                f"{(self.requests - self.errors) / self.seconds:.1f} | {p50:.1f} | {p99:.1f} | {self.errors} | "
                f"{self.server_cpu_s:.1f} | {self.client_cpu_s:.1f} | {self.other_cpu_s:.1f} |")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's workers are children of the CLI process)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the live processes in `pids`."""
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmHWM: peak resident set, VmRSS: resident now), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def clips(seconds: float, count: int) -> list[tuple[str, bytes]]:
    """(speaker, WAV bytes) of `seconds`-long cuts of held-out utterances (utterance 5 on) of enrolled speakers."""
    out = []
    for d in sorted(p for p in (CORPUS / "clean").iterdir() if p.is_dir())[:10]:
        for f in sorted(d.glob("*.flac"))[5:]:
            wave, rate = sf.read(f, dtype="float32")
            buf = io.BytesIO()
            sf.write(buf, wave[:int(seconds * rate)], rate, format="WAV", subtype="PCM_16")
            out.append((d.name, buf.getvalue()))
    return out[:count]


async def drive(url: str, bodies: list[tuple[str, bytes]], clients: int, requests: int,
                deadline_s: float) -> tuple[np.ndarray, int, float]:
    """`clients` concurrent keep-alive clients share `requests` verifies; (latencies ms, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_i, errors
        while next_i < requests:
            speaker, body = bodies[next_i % len(bodies)]
            next_i += 1
            start = time.perf_counter()
            try:
                r = await c.post("/verify", params={"speaker": speaker}, content=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(1000 * (time.perf_counter() - start))
            errors += not ok

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
        tasks = [asyncio.create_task(client(c)) for _ in range(clients)]
        _, late = await asyncio.wait(tasks, timeout=deadline_s)
        for task in late:  # past the deadline: what has not answered counts as an error
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return np.array(latencies), errors + requests - len(latencies), time.perf_counter() - start


def measure(label: str, url: str, server_pids: list[int], bodies: list[tuple[str, bytes]], clients: int,
            requests: int, deadline_s: float) -> Run:
    """One pass with the CPU accounting around it."""
    busy0, server0, client0 = machine_busy_seconds(), cpu_seconds(server_pids), sum(os.times()[:2])
    lat, errors, wall = asyncio.run(drive(url, bodies, clients, requests, deadline_s))
    server_cpu = cpu_seconds(server_pids) - server0
    client_cpu = sum(os.times()[:2]) - client0
    other = machine_busy_seconds() - busy0 - server_cpu - client_cpu
    return Run(label, clients, requests, wall, lat, errors, server_cpu, client_cpu, max(0.0, other))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped GE2E)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--quiet", type=int, default=100, help="requests of the one-client pass")
    ap.add_argument("--seconds", type=float, default=3.0, help="audio length of each request")
    ap.add_argument("--deadline", type=float, default=300, help="seconds after which a pass stops (unanswered = errors)")
    ap.add_argument("--vad", nargs="+", choices=["on", "off"], default=["on"],
                    help="speech trimming of the enrolled store and the server (on: the default of both)")
    args = ap.parse_args()
    model = args.model or default_model_path()

    bodies = clips(args.seconds, 40)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) before the runs; "
          f"{len(bodies)} distinct {args.seconds:g} s WAV bodies")
    print("| workers, VAD / pass | clients | requests | wall s | req/s | p50 ms | p99 ms | errors | server CPU s | "
          "client CPU s | others' CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rss = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "enroll"
        for d in sorted(p for p in (CORPUS / "clean").iterdir() if p.is_dir())[:10]:
            (root / d.name).mkdir(parents=True)
            for f in sorted(d.glob("*.flac"))[:3]:
                (root / d.name / f.name).symlink_to(f)
        for vad in args.vad:
            store, flag = Path(tmp) / f"vad-{vad}.vxf", "--vad" if vad == "on" else "--no-vad"
            subprocess.run([*CLI, "enroll", str(root), "--model", str(model), "--out", str(store), flag],
                           check=True, capture_output=True, timeout=600)
            for workers in args.workers:
                label = f"{workers}, {vad}"
                process, url = start_server("--store", store, "--model", model, "--workers", workers,
                                            "--threads", args.threads, flag, log=Path(tmp) / "server.log")
                try:
                    measure("warm-up", url, [process.pid], bodies, args.clients, 4 * args.clients, args.deadline)
                    pids = process_tree(process.pid)  # every worker has answered by now
                    quiet = measure(f"{label} / one client", url, pids, bodies, 1, args.quiet, args.deadline)
                    load = measure(f"{label} / load", url, pids, bodies, args.clients, args.requests, args.deadline)
                    rss[label] = " + ".join(f"{memory_mb(p, 'VmHWM'):.0f}" for p in pids) + \
                        f" MB (now {sum(memory_mb(p, 'VmRSS') for p in pids):.0f} MB)"
                finally:
                    stop(process)
                print(quiet.row())
                print(load.row())
    print()
    print("server peak RSS (VmHWM of each process: the CLI process, then uvicorn's workers if more than one): " +
          "; ".join(f"{label}: {text}" for label, text in rss.items()))
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

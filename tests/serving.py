"""Starting and stopping a real `voxfloat serve` process on a free loopback port (tests and bench/serve_load.py)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "voxfloat"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: object, log: Path, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start `voxfloat serve ARGS` on a free port, output to `log`; wait until it answers, return it and its URL."""
    port = free_port()
    with log.open("w") as fh:
        process = subprocess.Popen([*CLI, "serve", "--port", str(port), *map(str, args)], stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voxfloat serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/health", timeout=2)
            return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"voxfloat serve did not answer within {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

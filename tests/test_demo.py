"""The demo installs what it uses: every system file demo/population.py reads, and every program it runs,
belongs to a Debian package in debian-packages.txt (dpkg -S), the one list the install step installs."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_opened: list[tuple[str, str]] | None = None  # (event, path) while recording


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event in ("open", "subprocess.Popen") and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append((event, os.fsdecode(args[0])))


sys.addaudithook(_audit)  # hooks stay for the process; this one records only inside record_reads


def record_reads(out: Path) -> list[tuple[str, str]]:
    """(event, path) of every file opened and program started while demo/population.py builds its population."""
    global _opened
    spec = importlib.util.spec_from_file_location("demo_population", ROOT / "demo" / "population.py")
    population = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(population)
    _opened = []
    try:
        population.main(out)
        return list(_opened)
    finally:
        _opened = None


def own_files(path: Path, out: Path) -> bool:
    """Files of Python, of the project or written by the demo itself: not system data."""
    mine = [out, ROOT, Path(sys.prefix), Path(sys.base_prefix), *(Path(p) for p in sysconfig.get_paths().values())]
    return any(path.is_relative_to(p) for p in mine) or path.suffix in (".py", ".pyc", ".so")


def owners(paths: list[Path]) -> dict[Path, set[str]]:
    """Debian packages owning each path (dpkg -S); a path no package owns maps to an empty set."""
    run = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True)
    found: dict[Path, set[str]] = {p: set() for p in paths}
    for line in run.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        if Path(path) in found:
            found[Path(path)].update(p.strip().split(":")[0] for p in pkgs.split(","))
    return found


@pytest.mark.parity  # slow tier: several seconds
def test_every_system_file_the_demo_reads_is_from_a_listed_package(tmp_path: Path) -> None:
    listed = {line.strip() for line in (ROOT / "debian-packages.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    events = record_reads(tmp_path)
    files = sorted({Path(p).resolve() for e, p in events if e == "open" and Path(p).is_absolute()})
    system = [p for p in files if p.is_file() and not own_files(p, tmp_path)]
    programs = sorted({Path(shutil.which(p) or p).resolve() for e, p in events if e == "subprocess.Popen"})
    assert any("asterisk" in str(p) for p in system), "the demo read no Asterisk prompt: the recording missed it"
    assert any(p.name == "espeak-ng" for p in programs), programs
    unlisted = {p: pkgs for p, pkgs in owners(system + programs).items() if not pkgs & listed}
    assert not unlisted, f"read by the demo but from no package in debian-packages.txt: {sorted(unlisted.items())[:5]}"

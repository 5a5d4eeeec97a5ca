"""Safe file access shared by every layer: regular files only on input, one private atomic writer for output.

Inputs (stores, models, audio, lists) are opened non-blocking and checked to be regular files, so a FIFO or a
device is refused with one line instead of hanging. Every output (stores, embeddings, row lists, reports,
plots) goes through `write_private`: a mode-0600 temporary file beside the target, fsynced, renamed over it,
then the folder fsynced.
A symbolic link at an output path is replaced by the new file (its target is never written); stores follow
their link instead (`follow_symlinks=True`) so that the link, the lock and the data stay one store.
"""
from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from voxfloat.errors import OutputError, VoxfloatError

TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # `.<name>.<pid>.<random>.tmp`


def describe(mode: int) -> str:
    """What kind of non-regular file a stat mode is, for error lines."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def os_problem(e: OSError) -> str:
    """The short reason of an OSError (its strerror), never a traceback."""
    return e.strerror or type(e).__name__


def open_regular(path: str | os.PathLike, error: type[VoxfloatError], what: str = "file") -> BinaryIO:
    """Open `path` for reading if it is a regular file (symlinks followed); `error` with one line otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once instead of waiting
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot open {what}: {os_problem(e)}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: not a {what} ({describe(mode)}; only regular files are read)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, error: type[VoxfloatError], what: str = "file",
                 limit: int | None = None) -> bytes:
    """The bytes of a regular file (see open_regular); `limit` refuses larger files before reading them."""
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise error(f"{path}: {size} bytes, more than the {limit}-byte limit for a {what}")
        try:
            return f.read()
        except OSError as e:
            raise error(f"{path}: cannot read {what}: {os_problem(e)}") from None


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is named like the writer's temporary files (never a finished output)."""
    return TEMP_NAME.match(Path(path).name) is not None


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporary files left beside `target` by writers that were killed (their process is gone)."""
    prefix = f".{target.name}."
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        m = TEMP_NAME.match(name)
        if m is None or name[len(prefix):].count(".") != 2:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def output_target(path: str | os.PathLike, error: type[VoxfloatError], follow_symlinks: bool) -> Path:
    """The file a write to `path` really replaces; refuses directories, FIFOs and devices, and dangling links."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if follow_symlinks else path
    if follow_symlinks and path.is_symlink() and not target.exists():
        raise error(f"{path}: a symbolic link to {target}, which does not exist; refusing to create a file through it")
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise error(f"{path}: cannot write: {os_problem(e)}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise error(f"{path}: {describe(mode)}, not a regular file; refusing to replace it")
    return target


def write_private(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                  error: type[VoxfloatError] = OutputError, follow_symlinks: bool = False) -> None:
    """Write a file atomically and privately: `write(f)` fills a 0600 temporary file that replaces `path`.

    The temporary file is named `.<name>.<pid>.<random>.tmp`; one left by a killed writer is deleted by the
    next write to the same target, and stores refuse to open such names. Any OSError (full disk, read-only
    folder) becomes one `error` line naming `path`; `path` is then untouched.
    """
    target = output_target(path, error, follow_symlinks)
    remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        created = True
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        created = False
        _fsync_dir(target.parent)
    except OSError as e:
        raise error(f"{path}: cannot write: {os_problem(e)}") from None
    finally:
        if created:
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

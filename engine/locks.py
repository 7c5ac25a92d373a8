"""One writer per directory: an exclusive lock held for the life of the process that writes there.

Two processes started on the same run (two terminals, a scheduler's retry while the first still
runs) would otherwise train into the same checkpoint files and rename each other's exports away.
The lock is `flock` on a small file in the directory, so the operating system releases it when the
process ends, however it ends: a run killed with SIGKILL can be resumed at once. The file names its
holder (pid, host, command), so the process refused can say who holds it. It stays after release:
removing a lock file another process may be opening would let two holders in.

Locks are re-entrant within a process (`vqgen run` holds its run and each stage holds its own
directory), and under torchrun rank 0 holds them for the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from vqgen.engine.distributed import Dist, on_main
from vqgen.engine.errors import VQGenError

LOCK_FILE = ".vqgen.lock"
_held: dict[Path, list[int]] = {}  # lock path -> [file descriptor, depth]


def _holder(path: Path) -> str:
    """Who holds `path`, from what the holder wrote there."""
    try:
        info = json.loads(path.read_text())
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said who it is"


def _program() -> str:
    """`vqgen` for the console script and `python -m vqgen` alike (whose argv[0] is vqgen/__main__.py)."""
    program = Path(sys.argv[0])
    return program.parent.name if program.name == "__main__.py" else program.name


def _acquire(path: Path, what: str) -> None:
    if path in _held:
        _held[path][1] += 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise VQGenError(f"cannot lock {what} ({path}: {err.strerror}); check that the directory is writable") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VQGenError(f"{what} is in use by another vqgen process ({_holder(path)}); wait for it to finish, "
                         "or stop it and run the same command again to resume") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([_program(), *sys.argv[1:]])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[path] = [fd, 1]


def _release(path: Path) -> None:
    entry = _held[path]
    entry[1] -= 1
    if entry[1] == 0:
        del _held[path]
        os.close(entry[0])  # closing the descriptor releases the flock


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, ctx: Dist = Dist()) -> Iterator[None]:
    """Hold the lock file `path` for the body, or fail at once naming `what` and its holder.
    Under torchrun rank 0 takes it, and every rank fails together when it cannot."""
    path = Path(path).resolve()  # one lock however the directory is spelled
    on_main(ctx, lambda: _acquire(path, what))
    try:
        yield
    finally:
        if ctx.is_main:
            _release(path)


def directory_lock(directory: str | Path, ctx: Dist = Dist()) -> contextlib.AbstractContextManager[None]:
    """The lock of a run or output directory, DIR/.vqgen.lock."""
    return exclusive(Path(directory) / LOCK_FILE, str(directory), ctx)

"""One writer per output: ``<out>.lock`` beside what a stage writes (a manifest, a shard folder).

Two ``midol ingest`` (or ``shard``) runs into the same ``--out`` would both exit 0 and one result would
be lost. The first run creates ``<out>.lock`` with ``O_CREAT | O_EXCL`` and writes its pid and host into
it; a second run finds the file and stops with one line naming the holder. The holder also keeps an
advisory ``flock`` on the file for its lifetime, which the kernel drops when the process dies however it
dies (kill -9 included): a lock file nobody holds is stale, and the next run takes it over and says so.
Where ``flock`` is unavailable, a lock is stale when its pid is not running on this host.

The lock is removed on exit, on an error and on Ctrl-C (a ``with`` block); a process killed outright
leaves the file behind, which the next run takes over.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from midol_cli.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: the pid check alone
    fcntl = None  # type: ignore[assignment]


def lock_path(out: str | os.PathLike[str]) -> Path:
    """``<out>.lock``: beside the output, never inside it (a shard folder's contents are the set)."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _holder(path: Path) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None, ""
    pid = int(text[0]) if text and text[0].isdigit() else None
    return pid, text[1] if len(text) > 1 else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _try_flock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # a filesystem without flock: fall back to the pid check
    return True


def _stale(path: Path, fd: int) -> bool:
    """True when the lock at ``path`` (opened as ``fd``) belongs to no running process."""
    if not _try_flock(fd):
        return False  # its holder is alive and holds it
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            return False  # released and re-created under us: look again
    pid, host = _holder(path)
    if pid is None:
        # Just created, pid not yet written, or an empty file from a crash: the flock settles it where
        # there is one (we got it, so nobody holds it).
        return fcntl is not None
    if fcntl is None or host != socket.gethostname():
        return host == socket.gethostname() and not _alive(pid)
    return True


def _create(path: Path) -> int | None:
    """Create the lock file and hold it; None when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    if not _try_flock(fd):  # a stale-lock taker opened it between our create and our flock
        os.close(fd)
        return None
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _take_over(path: Path, log: Callable[[str], None]) -> int | None:
    """Hold a stale lock at ``path``; None when it is held (or vanished: the caller retries)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    if not _stale(path, fd):
        os.close(fd)
        return None
    pid, host = _holder(path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    who = f"pid {pid}" + (f" on {host}" if host else "") if pid is not None else "a process"
    log(f"took over the stale lock '{path}' of {who}, which is no longer running")
    return fd


def _acquire(path: Path, log: Callable[[str], None]) -> int | None:
    """Hold the lock at ``path`` (created, or a stale one taken over); None while another process has it."""
    for _ in range(5):  # a lock released between our create and our look: try again
        fd = _create(path)
        if fd is None and path.exists():
            fd = _take_over(path, log)
            if fd is None and path.exists():
                return None
        if fd is not None:
            return fd
    return None


@contextlib.contextmanager
def output_lock(out: str | os.PathLike[str], what: str = "output", log: Callable[[str], None] | None = None,
                wait: float = 0.0) -> Iterator[Path]:
    """Hold ``<out>.lock`` for the ``with`` block; ``UsageError`` naming the holder when another run has it
    (after waiting up to ``wait`` seconds for it to finish: for outputs several runs may share, such as a
    cached manifest).

    ``what`` names the output in the message ("manifest", "shard folder")."""
    log = log or (lambda _m: None)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    said = False
    while (fd := _acquire(path, log)) is None:
        pid, host = _holder(path)
        who = (f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
               if pid is not None else "another process")
        if time.monotonic() >= deadline:
            raise UsageError(
                f"{what} '{out}' is being written by another midol run ({who}, lock '{path}'); wait for "
                "it to finish, or choose another --out (remove the lock file only if that run is gone)")
        if not said:
            log(f"waiting for {who} to finish writing {what} '{out}'")
            said = True
        time.sleep(0.2)
    try:
        yield path
    finally:
        # Unlink while still holding the flock, then close: a waiter that gets the flock after us sees
        # the file is gone (or a new one) and does not take over a live lock.
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()
        os.close(fd)

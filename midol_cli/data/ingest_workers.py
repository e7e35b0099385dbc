"""Ingest's per-file work, run in a process pool: read each file once, hash and decode it from memory,
and send back a small dict of metadata (no pixels cross process boundaries). A worker that dies on
a hostile file costs only that file ("decoder crashed")."""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from midol_cli.data import readers

# ---------------------------------------------------------------- per-file work (runs in workers)


def inspect_stat(path: str) -> dict[str, Any]:
    """A rejected record carrying only what ``os.stat`` says (bytes, mtime_ns)."""
    rec: dict[str, Any] = {
        "width": 0,
        "height": 0,
        "channels": 0,
        "bit_depth": 0,
        "format": "",
        "intensity": "",
        "sha256": "",
        "phash": "",
        "bytes": 0,
        "mtime_ns": 0,
        "status": "rejected",
        "reason": "",
    }
    try:
        st = os.stat(path)
        rec["bytes"], rec["mtime_ns"] = int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        pass  # the reader turns the same failure into a reason
    return rec


def inspect_file(path: str, max_pixels: int) -> dict[str, Any]:
    """Read ``path`` once, hash it, decode it; return the manifest's decoded fields (no pixels)."""
    rec = inspect_stat(path)
    try:
        data, st = readers.read_file_bytes(path, readers.byte_cap(max_pixels))
        rec["bytes"], rec["mtime_ns"] = len(data), int(st.st_mtime_ns)
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        res = readers.decode_bytes(data, path, max_pixels)
    except readers.ImageRejected as e:
        rec["reason"] = e.reason
        return rec
    rec.update(
        width=res.width,
        height=res.height,
        channels=res.channels,
        bit_depth=res.bit_depth,
        format=res.format,
        intensity=res.intensity,
        phash=_phash_or_empty(res.image),
        status="ok",
    )
    return rec


def _phash_or_empty(img: Any) -> str:
    """The image's perceptual hash; "" if it cannot be computed (the hash is optional: a file is
    never rejected because of it)."""
    from midol_cli.data.phash import phash

    try:
        return phash(img)
    except Exception:  # any PIL/numpy failure on an odd decoded image
        return ""


def _inspect_chunk(paths: list[str], max_pixels: int) -> list[dict[str, Any]]:
    return [inspect_file(p, max_pixels) for p in paths]


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the process that started the pool dies, even by
    ``kill -9`` (issue 25.17), instead of decoding on as an orphan. On Linux the kernel sends SIGKILL
    when our parent (the fork server) goes, which it does when the main process goes
    (``PR_SET_PDEATHSIG``); everywhere a daemon thread also checks the main process every half second."""
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the poll below still ends the worker

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # exists (another user's, after pid reuse): keep watching
            time.sleep(0.5)

    threading.Thread(target=watch, name="midol-parent-watch", daemon=True).start()


def process_pool(workers: int):
    """A process pool for ingest's per-file work: clean worker processes (``_pool_context``) that end
    when the process that made the pool dies."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=exit_with_parent,
                               initargs=(os.getpid(),))


def _pool_context():
    import multiprocessing as mp

    # forkserver: workers start from a clean process (no inherited threads from a progress
    # bar or a loaded torch); spawn where fork servers are unavailable (macOS, Windows).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Imported once in the fork server, not once per worker.
        ctx.set_forkserver_preload(
            [
                "midol_cli.data.ingest",
                "numpy",
                "PIL.Image",
                "PIL.JpegImagePlugin",
                "PIL.PngImagePlugin",
                "PIL.TiffImagePlugin",
            ]
        )
        return ctx
    return mp.get_context("spawn")


def _crashed(path: str) -> dict[str, Any]:
    rec = inspect_stat(path)
    rec["reason"] = "decoder crashed"
    return rec


def _decode_all(
    paths: list[str],
    max_pixels: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
    log: Callable[[str], None],
    chunk_fn: Callable[[list[str], int], list[dict[str, Any]]] = _inspect_chunk,
    isolate: bool = True,
) -> dict[str, dict[str, Any]]:
    """Absolute path -> decoded fields, using ``workers`` worker processes (with one worker too: decoders
    are native code, and a hostile file that kills the process decoding it must cost only that file).
    ``isolate=False`` decodes in this process instead (tests that patch the reader; no crash isolation).

    A worker that dies (a decoder crashing on a hostile file) does not stop the run: the
    chunks that were in flight are retried one file at a time, each alone in the pool, and
    the file that kills a worker again is rejected as "decoder crashed".
    """
    out: dict[str, dict[str, Any]] = {}
    if not paths:
        return out
    workers = max(1, min(workers, len(paths)))
    # Small chunks keep the bar moving and balance work; large enough that IPC stays negligible.
    size = max(1, min(32, -(-len(paths) // (workers * 16))))
    queue: deque[list[str]] = deque(paths[i : i + size] for i in range(0, len(paths), size))
    log(f"ingest: reading {len(paths)} files with {workers} worker{'s' if workers > 1 else ''}")

    def done(chunk: list[str], recs: list[dict[str, Any]]) -> None:
        out.update(zip(chunk, recs, strict=True))
        if progress is not None:
            progress(len(out), len(paths))

    if not isolate:
        while queue:
            chunk = queue.popleft()
            done(chunk, chunk_fn(chunk, max_pixels))
    else:
        _run_pool(queue, max_pixels, workers, chunk_fn, done, log)
    return out


def _run_pool(
    queue: deque[list[str]],
    max_pixels: int,
    workers: int,
    chunk_fn: Callable[[list[str], int], list[dict[str, Any]]],
    done: Callable[[list[str], list[dict[str, Any]]], None],
    log: Callable[[str], None],
) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    suspects: deque[str] = deque()  # files from chunks lost to a dead worker
    while queue or suspects:
        ex = process_pool(workers)
        pending: dict[Any, list[str]] = {}
        lost: list[list[str]] = []
        isolated = False
        try:
            while queue or suspects or pending:
                if suspects:
                    # One suspect alone in flight, so a crash names exactly one file.
                    if not pending:
                        one = [suspects.popleft()]
                        pending[ex.submit(chunk_fn, one, max_pixels)] = one
                        isolated = True
                else:
                    isolated = False
                    # A bounded number of chunks in flight keeps memory flat on huge folders.
                    while queue and len(pending) < workers * 4:
                        chunk = queue.popleft()
                        pending[ex.submit(chunk_fn, chunk, max_pixels)] = chunk
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    chunk = pending.pop(fut)
                    try:
                        recs = fut.result()
                    except BrokenProcessPool:
                        lost.append(chunk)
                        continue
                    done(chunk, recs)
                if lost:
                    lost.extend(pending.values())
                    pending.clear()
                    break
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
        ex.shutdown(wait=not lost, cancel_futures=bool(lost))
        if lost:
            if isolated:
                log(f"ingest: a decoder crashed on {lost[0][0]}; rejecting that file")
                done(lost[0], [_crashed(lost[0][0])])
            else:
                log(f"ingest: a worker died; retrying {sum(map(len, lost))} files one at a time")
                for chunk in lost:
                    suspects.extend(chunk)

"""One writer per output (midol_cli/locks.py, issue 25.3): held, stale, released."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from midol_cli.errors import UsageError
from midol_cli.locks import lock_path, output_lock

HOLD = "import sys, time; from midol_cli.locks import output_lock\n" \
       "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n"


def hold_in_child(out) -> subprocess.Popen:
    """Another process holding the lock on ``out``, as a concurrent midol run would."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_held_lock_stops_a_second_writer_naming_the_holder(tmp_path):
    out = tmp_path / "m.parquet"
    child = hold_in_child(out)
    try:
        busy = rf"'{out}' is being written by another midol run \(pid {child.pid}, "
        with pytest.raises(UsageError, match=busy):
            with output_lock(out, "manifest"):
                pass
        assert lock_path(out).read_text().split() == [str(child.pid), socket.gethostname()]
    finally:
        child.kill()
        child.wait()
    # The holder died (kill -9): its flock went with it, so the next writer takes over and says so.
    lines: list[str] = []
    with output_lock(out, "manifest", lines.append) as path:
        assert path.read_text().split()[0] == str(os.getpid())
    assert lines == [f"took over the stale lock '{path}' of pid {child.pid} on {socket.gethostname()}, "
                     "which is no longer running"]
    assert not path.exists()


def test_a_stale_lock_file_is_taken_over_and_every_exit_releases(tmp_path):
    out = tmp_path / "shards"
    lock_path(out).write_text(f"{dead_pid()} {socket.gethostname()}\n")
    lines: list[str] = []
    with output_lock(out, "shard folder", lines.append):
        pass
    assert len(lines) == 1 and "no longer running" in lines[0] and not lock_path(out).exists()
    for exc in (RuntimeError, KeyboardInterrupt):  # an error, Ctrl-C
        with pytest.raises(exc), output_lock(out):
            assert lock_path(out).exists()
            raise exc()
        assert not lock_path(out).exists()


def test_two_writers_in_one_process_exclude_each_other(tmp_path):
    out = tmp_path / "m.parquet"
    with output_lock(out), pytest.raises(UsageError, match=rf"pid {os.getpid()}"), output_lock(out):
        pass
    with output_lock(out):  # released: free again
        time.sleep(0)


def test_a_writer_may_wait_for_the_holder_to_finish(tmp_path):
    """wait=: a second writer of a shared output (a cached manifest) waits for the first, says so once,
    and gives up with the usual line when the holder outlasts the wait."""
    out = tmp_path / "m.parquet"
    child = hold_in_child(out)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        with (
            pytest.raises(UsageError, match=rf"pid {child.pid}"),
            output_lock(out, wait=0.6, log=lines.append),
        ):
            pass
        assert time.monotonic() - t0 >= 0.6
        assert lines == [f"waiting for pid {child.pid} to finish writing output '{out}'"]
        import threading

        threading.Timer(0.5, child.kill).start()  # the holder ends while we wait
        with output_lock(out, wait=30) as path:
            assert path.read_text().split()[0] == str(os.getpid())
    finally:
        child.kill()
        child.wait()

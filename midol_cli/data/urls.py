"""Shard specs as WebDataset users write them, and streaming a shard from any of them.

A spec (``data.shards``, the loader's ``shards``) is a folder written by ``midol shard``, or a URL
list: ``::``-separated (or a Python list), each item brace-expanded (``shard-{000000..000127}.tar``);
each URL a local path, a ``file:`` URL or ``pipe:CMD`` (the tar is CMD's stdout, e.g.
``pipe:aws s3 cp s3://b/set/shard-000000.tar -``). Its index is known when every URL is a local
file of one folder whose ``index.json`` lists them, or when the list names an ``index.json`` (e.g.
a local copy: ``set/index.json::pipe:aws s3 cp s3://b/set/shard-{000000..000127}.tar -``); else
the sample count is unknown and the modality/split filters act per sample.

Every source gets the member checks of ``shard_format`` (unsafe names refused, nothing
extracted). Local files are read directly; ``pipe:`` runs the command with a shell (as WebDataset
does), reads its stdout to the end, then waits: a non-zero exit is a damaged shard (``PipeFailed``,
an ``OSError``); an abandoned stream kills the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from midol_cli.data.shard_format import (
    INDEX_NAME,
    SHARD_NAME_RE,
    _iter_tar_members,
    _member_problem,
    iter_tar_samples,
    load_index,
    split_member_name,
)
from midol_cli.errors import UsageError

MAX_URLS = 1_000_000  # a brace range beyond this is a typo, not a shard set
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_CHUNK = 1 << 20
# What to write instead of a URL scheme midol does not read itself.
_CURL = "pipe:curl -s -L --fail {url}"
_INSTEAD = {"s3": "pipe:aws s3 cp {url} -", "gs": "pipe:gsutil cat {url}", "http": _CURL, "https": _CURL}


class PipeFailed(OSError):
    """A ``pipe:`` command exited non-zero: the shard it was to stream is damaged/unreadable."""


@dataclass
class ShardSet:
    """What a spec names: ``urls`` (local paths or ``pipe:CMD``) and, when known, the index.

    ``records[i]`` is the index entry of ``urls[i]`` (None throughout without an index)."""

    urls: list[str]
    index: dict[str, Any] | None
    records: list[dict[str, Any] | None]
    folder: Path | None = None  # set for a shard folder spec
    index_path: Path | None = None  # the index.json read, if any


def expand_braces(text: str) -> list[str]:
    """``a{0..2}b`` -> ``[a0b, a1b, a2b]`` (zero padding and ``{x,y}`` as in bash/WebDataset).

    UsageError for unbalanced braces, an empty or open range (``{}``, ``{1..}``), or a list
    longer than ``MAX_URLS``."""
    from braceexpand import UnbalancedBracesError, braceexpand

    out: list[str] = []
    try:
        for url in braceexpand(text):
            out.append(url)
            if len(out) > MAX_URLS:
                raise UsageError(f"'{text}' expands to more than {MAX_URLS} URLs; check the brace range")
    except UnbalancedBracesError:
        raise UsageError(
            f"unbalanced braces in '{text}'; write a range as shard-{{000000..000127}}.tar"
        ) from None
    for url in out:
        # braceexpand leaves a range it cannot read as literal text; a shard name never has one.
        if re.search(r"\{\}|\{[^{}]*\.\.[^{}]*\}", url):
            raise UsageError(
                f"empty or malformed brace range in '{text}'; write a range as shard-{{000000..000127}}.tar"
            )
    return out


def split_spec(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The spec's items: ``::``-separated strings and list elements, each brace-expanded."""
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    out: list[str] = []
    for item in items:
        for part in os.fspath(item).split("::"):
            if part.strip():
                out.extend(expand_braces(part.strip()))
    if not out:
        raise UsageError("the shard spec is empty; give a folder written by `midol shard` or shard URLs")
    return out


def normalise(url: str) -> str:
    """A URL as the reader opens it: a local path (``file:`` removed) or ``pipe:CMD``; UsageError
    otherwise."""
    if url.startswith("pipe:"):
        if not url[5:].strip():
            raise UsageError(
                "'pipe:' has no command; write pipe:CMD, e.g. 'pipe:aws s3 cp s3://bucket/x.tar -'"
            )
        return url
    if url.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"'{url}' names another host; copy the shards here or use pipe:CMD")
        path = urllib.parse.unquote(parsed.path)
        if not path:
            raise UsageError(f"'{url}' has no path; write file:///abs/path/shard-000000.tar")
        return path
    m = _SCHEME_RE.match(url)
    if m:
        scheme = m.group(1).lower()
        instead = _INSTEAD.get(scheme, "pipe:CMD (a command that writes the tar to stdout)").format(url=url)
        raise UsageError(f"midol cannot read '{scheme}:' URLs directly ('{url}'); write '{instead}' instead")
    return url


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def shard_name_of(url: str) -> str | None:
    """The ``shard-NNNNNN.tar`` a URL streams: its file name, or the one token of a ``pipe:`` command naming
    one."""
    if not is_pipe(url):
        return Path(url).name
    try:
        tokens = shlex.split(url[5:])
    except ValueError:
        tokens = url[5:].split()
    names = {t.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] for t in tokens}
    found = [n for n in names if SHARD_NAME_RE.match(n)]
    return found[0] if len(found) == 1 else None


def display_name(url: str) -> str:
    """A short name for messages: the shard's file name, else the command cut to 60 characters."""
    return shard_name_of(url) or (url if len(url) <= 60 else url[:57] + "...")


def _with_index(urls: list[str], index_file: Path) -> ShardSet | None:
    """The URLs with their index entries, matched by shard name; None if the index misses one."""
    index = load_index(index_file.parent)
    by_name = {s["name"]: s for s in index["shards"]}
    recs = [by_name.get(shard_name_of(u) or "") for u in urls]
    return None if None in recs else ShardSet(urls, index, recs, index_path=index_file)


def resolve(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> ShardSet:
    """Parse a spec (module docstring). A folder must hold ``index.json`` (``load_index``), local
    shard files must exist; malformed specs are one-line UsageErrors."""
    items = [normalise(u) for u in split_spec(spec)]
    named = [Path(u) for u in items if not is_pipe(u) and Path(u).name == INDEX_NAME]
    urls = [u for u in items if is_pipe(u) or Path(u).name != INDEX_NAME]
    if not named and len(urls) == 1 and not is_pipe(urls[0]) and not Path(urls[0]).is_file():
        folder = Path(urls[0])  # a shard folder (or a missing one: load_index says so)
        index, d = load_index(folder), folder.resolve()
        return ShardSet([str(d / s["name"]) for s in index["shards"]], index, list(index["shards"]), folder,
                        folder / INDEX_NAME)
    if len(named) > 1 or not urls:
        raise UsageError("a shard spec names at most one index.json, and shards beside it, "
                         "e.g. 'set/index.json::pipe:aws s3 cp s3://b/set/shard-{000000..000015}.tar -'")
    missing = [u for u in urls if not is_pipe(u) and not Path(u).is_file()]
    if missing:
        raise UsageError(f"shard '{missing[0]}' does not exist; check the path or the brace range")
    if named:
        if not named[0].is_file():
            raise UsageError(
                f"index '{named[0]}' does not exist; copy the set's index.json there or leave it out"
            )
        found = _with_index(urls, named[0])
        if found is None:
            raise UsageError(
                f"'{named[0]}' does not list every shard of the URLs; give the index of this shard set"
            )
        return found
    parents = {Path(u).resolve().parent for u in urls if not is_pipe(u)}
    if (
        len(parents) == 1
        and not any(map(is_pipe, urls))
        and (index_file := parents.pop() / INDEX_NAME).is_file()
    ):
        with contextlib.suppress(UsageError):  # a foreign or broken index beside the files: read them without
            found = _with_index(urls, index_file)
            if found is not None:
                return found
    return ShardSet(urls, None, [None] * len(urls))


# ------------------------------------------------------------------ streaming


def iter_url_samples(
    url: str, on_refused: Callable[[str, str], None] | None = None
) -> Iterator[dict[str, Any]]:
    """``iter_tar_samples`` for any normalised URL: local files directly, ``pipe:`` through the command."""
    if not is_pipe(url):
        yield from iter_tar_samples(url, on_refused=on_refused)
        return
    cmd = url[5:]
    with tempfile.TemporaryFile() as err:  # stderr to a file: a chatty command cannot block on a full pipe
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        out: IO[bytes] = proc.stdout  # type: ignore[assignment]
        try:
            try:
                yield from _iter_stream(out, url, on_refused)
                while out.read(_CHUNK):  # the end-of-archive padding: let the command finish
                    pass
            except (OSError, tarfile.TarError, EOFError):  # e.g. a stream cut short by a failing command
                _finish(proc, err, cmd, wait_s=1.0)
                raise
            _finish(proc, err, cmd, wait_s=None)
        finally:
            if proc.poll() is None:  # closed early (or failed): never leave the command running
                proc.kill()
            out.close()
            proc.wait()


def _finish(proc: subprocess.Popen, err: IO[bytes], cmd: str, wait_s: float | None) -> None:
    """Wait for the command; PipeFailed if it exited non-zero (with the tail of its stderr)."""
    try:
        rc = proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return
    if rc != 0:
        err.seek(0)
        tail = err.read()[-300:].decode("utf-8", "replace").strip().replace("\n", " | ")
        raise PipeFailed(f"`{cmd}` exited with status {rc}" + (f": {tail}" if tail else ""))


def _skip(fh: IO[bytes], n: int) -> None:
    while n > 0:
        got = len(fh.read(min(n, _CHUNK)))
        if not got:
            raise tarfile.ReadError("unexpected end of data")
        n -= got


def _iter_stream(
    fh: IO[bytes], url: str, on_refused: Callable[[str, str], None] | None
) -> Iterator[dict[str, Any]]:
    """Group a non-seekable tar stream's members by key, as ``iter_tar_samples`` does for a file."""
    current: dict[str, Any] | None = None
    for name, regular, size, blocks in _iter_tar_members(fh):
        problem = _member_problem(name, regular, size)
        if problem is not None:
            if on_refused is not None:
                on_refused(name, problem)
            _skip(fh, blocks)  # read past, never kept
            continue
        key, ext = split_member_name(name)  # type: ignore[misc]
        data = fh.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        _skip(fh, blocks - size)
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key, "__url__": url}
        if ext in current:
            current["__dup__"] = True
        current[ext] = data
    if current is not None:
        yield current

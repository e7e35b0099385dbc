"""``midol ingest``: walk a raw folder read-only and write its Parquet manifest.

One row per file found (every supported image on disk, plus every file the
layout's CSV lists): status "ok" with size/format/bit depth/intensity policy
and sha256, or "rejected" with a reason. Labels, groups and official splits
come from the layout; the remaining splits are derived group-aware
(``splits.assign_splits``). Exact duplicates (same sha256) point at the first
copy; duplicates that land in different splits are counted as leakage.

Each file is read once: its bytes are hashed and decoded from memory in a
process pool (chunks of paths go out, small dicts of metadata come back; no
pixels cross process boundaries). A rerun with the same root/layout/pixel cap
reuses rows whose (path, bytes, mtime_ns) did not change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midol_cli.artifacts import MANIFEST_COLUMNS, is_within, provenance, stable_id
from midol_cli.data import readers

# reason_class and UNLABELLED are public here too (ingest_summary)
from midol_cli.data.ingest_summary import UNLABELLED, add_warnings, as_and, reason_class, summarize

# inspect_file and inspect_stat are public here too
from midol_cli.data.ingest_workers import (  # noqa: F401
    _decode_all,
    inspect_file,
    inspect_stat,
)
from midol_cli.data.layouts import (
    LAYOUTS,
    Entry,
    Layout,
    LayoutOptions,
    detect_layout,
    get_layout,
    strip_ext,
    walk_candidates,
)
from midol_cli.errors import UsageError
from midol_cli.modalities import check_modality

# Bumped when the reader's output for the same bytes changes, so old manifests are not reused.
# 2: rows carry a perceptual hash (phash). 3: a JPEG whose data is too short for its header is rejected.
READER_VERSION = 3

# Fields a decode produces; reused verbatim from an earlier manifest when the file is unchanged.
_DECODED = (
    "width",
    "height",
    "channels",
    "bit_depth",
    "format",
    "intensity",
    "sha256",
    "phash",
    "bytes",
    "mtime_ns",
    "status",
    "reason",
)
# Rejections that depend only on the file's bytes (safe to reuse); others (permissions,
# links, missing plugins) can change without the file changing, so they are re-checked.
_CONTENT_REJECTS = (
    "zero-byte file",
    "truncated image",
    "corrupt image data",
    "not an image",
    "unreadable DICOM",
    "over pixel cap",
    "DICOM without pixel data",
    "unsupported DICOM transfer syntax",
    "file too large",
)


def default_out(raw_dir: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> Path:
    """``./manifests/<raw folder name>.parquet`` relative to ``cwd`` (default: the current directory)."""
    name = Path(raw_dir).resolve().name or "root"
    return Path(cwd or os.getcwd()) / "manifests" / f"{name}.parquet"


# ---------------------------------------------------------------- the command's core


def _resolve_out(root: Path, out: str | os.PathLike[str] | None) -> Path:
    target = Path(out) if out is not None else default_out(root)
    if is_within(target, root):
        raise UsageError(
            f"output '{target}' is inside the raw folder '{root}'; midol never writes into raw data: "
            "pass --out with a path outside it"
        )
    if target.exists() and not target.is_file():
        raise UsageError(f"output '{target}' exists and is not a file; pass --out with a .parquet file path")
    return target


def _previous_rows(out: Path, key: dict[str, Any], log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Rows of an existing manifest made with the same decode key, by path; {} otherwise."""
    if not out.is_file():
        return {}
    from midol_cli.data.manifest import read_manifest

    try:
        df, meta = read_manifest(out)
    except UsageError:
        raise UsageError(
            f"output '{out}' exists and is not a midol manifest; choose another --out or remove that file"
        ) from None
    if {k: meta.get(k) for k in key} != key or any(c not in df.columns for c in _DECODED):
        log("ingest: existing manifest was made from another root/layout/pixel cap; reading every file again")
        return {}
    prev: dict[str, dict[str, Any]] = {}
    names = ["path", *_DECODED]
    for values in zip(*(df[c].tolist() for c in names), strict=True):  # column lists: 10x to_dict's speed
        rec = dict(zip(names, values, strict=True))
        if rec["status"] == "ok" or reason_class(rec["reason"]).startswith(_CONTENT_REJECTS):
            prev[rec["path"]] = rec
    return prev


def ingest_folder(
    raw_dir: str | os.PathLike[str],
    modality: str,
    *,
    out: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    lock_wait: float = 0.0,
    **options: Any,
) -> dict[str, Any]:
    """Ingest ``raw_dir`` into a manifest (``_ingest_folder``: the options and the summary) while holding
    ``<manifest>.lock``: a second run into the same ``--out`` stops with one line naming the first run's
    pid instead of both exiting 0 and one result being lost (``midol_cli.locks``); with ``lock_wait``
    seconds it waits that long for the first to finish (a manifest runs share, such as a task's cache)."""
    from midol_cli.locks import output_lock

    raw = Path(raw_dir)
    if not raw.is_dir():  # its one-line error comes from the work itself
        return _ingest_folder(raw_dir, modality, out=out, log=log, **options)
    with output_lock(_resolve_out(raw.resolve(), out), "manifest", log, wait=lock_wait):
        return _ingest_folder(raw_dir, modality, out=out, log=log, **options)


def _ingest_folder(
    raw_dir: str | os.PathLike[str],
    modality: str,
    *,
    layout: str = "auto",
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    seed: int = 0,
    max_pixels: int = readers.DEFAULT_MAX_PIXELS,
    new_modality: bool = False,
    layout_options: LayoutOptions | None = None,
    dataset: str | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    isolate: bool = True,
    rehash: bool = False,
) -> dict[str, Any]:
    """Ingest ``raw_dir`` into a manifest; return a summary dict. Files are decoded in worker processes
    (``workers``, at least one; ``isolate=False``: in this process, for tests that patch the reader).
    ``rehash``: read every file again, reusing no row (``cp -p`` or ``touch -r`` keeps size and mtime).

    Summary keys: manifest (path), layout, dataset, modality, rows, ok, rejected, decoded, reused, unlisted,
    duplicate_listings, rejects_by_reason {reason: n}, per_label_split {label: {split: n}} (multi-label rows
    count once per label; unlabelled rows under "(unlabelled)"), per_split {split: n images}, duplicates (rows
    marked duplicate_of), duplicates_across_splits (duplicate rows in another split than their first copy),
    groups_across_splits, walk_errors, warnings [str].
    Raises UsageError for a bad folder, layout, modality, option or output path.
    """
    t0 = time.perf_counter()
    log = log or (lambda _msg: None)
    raw, root, modality, workers, target = _checked_args(raw_dir, modality, new_modality, max_pixels, workers,
                                                         out)
    lay, unlabelled_note = _choose_layout(root, raw, layout)
    opts = dataclasses.replace(layout_options) if layout_options else LayoutOptions()
    opts.workers, opts.seed, opts.out, opts.report = workers, seed, target, {}  # slides/volumes layouts
    opts.rehash = rehash  # slides: no per-slide cached result is reused either
    ds_name = (dataset or "").strip() or lay.dataset_name(root)

    walk_errors: list[str] = []
    files = walk_candidates(root, walk_errors)
    opts.files = tuple(files)
    if files:  # before the scan, which can be long (slides); an empty folder is one error line below
        log(f"ingest: {len(files)} image files under {root} (layout {lay.name})")
    entries, duplicate_listings, label_conflicts, unlisted = _scan_entries(lay, root, opts, files)
    if not entries:
        exts = ", ".join(sorted(readers.SUPPORTED_EXTENSIONS))
        raise UsageError(f"no images in '{raw}' (midol reads {exts} or DICOM files, in the folder or its "
                         "sub-folders)")
    if unlabelled_note:
        log(f"ingest: {unlabelled_note}")

    key = {"root": str(root), "layout": lay.name, "max_pixels": int(max_pixels),
           "reader_version": READER_VERSION}
    if rehash:
        log("ingest: --rehash: reading every file again")
    prev = {} if rehash else _previous_rows(target, key, log)
    decoded, n_decoded, reused = _reuse_or_decode(entries, root, prev, max_pixels, workers, progress, log,
                                                  isolate)
    df = _build_frame(entries, decoded, modality, ds_name, lay.name, seed, fractions,
                      opts.report.pop("split_listing", None))  # slides/volumes: parts split alike
    summary = summarize(df)
    summary.update(manifest=str(target), layout=lay.name, dataset=ds_name, modality=modality,
                   decoded=n_decoded, reused=reused, unlisted=unlisted, duplicate_listings=duplicate_listings,
                   label_conflicts=label_conflicts, walk_errors=walk_errors)
    add_warnings(summary, df, lay, root, opts, unlabelled_note, log)

    counts = {k: summary[k] for k in ("rows", "ok", "rejected", "decoded", "reused", "unlisted", "duplicates",
                                      "duplicates_across_splits", "duplicate_label_conflicts")}
    meta = provenance(**key, dataset=ds_name, modality=modality, seed=seed, fractions=list(fractions),
                      options=opts.as_record(), counts=counts, rejects_by_reason=summary["rejects_by_reason"])
    from midol_cli.data.manifest import write_manifest

    # Counts of files read again and the command line vary between runs over the same data.
    wrote = write_manifest(df, meta, target, volatile=("command", "counts"))
    summary["unchanged"] = not wrote
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log(f"ingest: {'wrote' if wrote else 'kept (unchanged)'} {target} ({summary['ok']} ok, "
        f"{summary['rejected']} rejected)")
    return summary


def _checked_args(raw_dir: str | os.PathLike[str], modality: str, new_modality: bool, max_pixels: int,
                  workers: int | None, out: str | os.PathLike[str] | None
                  ) -> tuple[Path, Path, str, int, Path]:
    """(raw, its resolved root, the modality, workers, the manifest path), or the UsageError of a bad one."""
    raw = Path(raw_dir)
    if not raw.exists():
        raise UsageError(f"raw folder '{raw}' does not exist")
    if not raw.is_dir():
        raise UsageError(f"raw folder '{raw}' is not a folder")
    root = raw.resolve()
    modality = check_modality(modality, allow_new=new_modality)
    if max_pixels < 1:
        raise UsageError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    return raw, root, modality, workers, _resolve_out(root, out)


def _reuse_or_decode(entries: dict[str, Entry], root: Path, prev: dict[str, dict[str, Any]], max_pixels: int,
                     workers: int, progress: Callable[[int, int], None] | None, log: Callable[[str], None],
                     isolate: bool) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Decoded fields by path: measured by the layout, reused from the earlier manifest (``prev``) when the
    file is unchanged, else decoded now. Returns (fields, decoded or measured, reused)."""
    decoded: dict[str, dict[str, Any]] = {}
    todo: list[str] = []
    root_s = str(root)
    measured = 0
    for path, e in entries.items():
        if e.reason:
            continue
        if e.decoded is not None:  # a slide's tile or a volume's frame: measured by the layout
            decoded[path] = e.decoded
            measured += 1
            continue
        p = prev.get(path)
        if p is not None:
            # An HDF5 member ("x.h5#12") is unchanged when its container is; its recorded
            # bytes are the patch's, not the container's, so only the mtime can be compared.
            member = readers.split_member(path)
            try:
                st = os.stat(os.path.join(root_s, member[0] if member else path))
            except OSError:
                st = None
            same_size = member is not None or (st is not None and st.st_size == p["bytes"])
            if st is not None and same_size and st.st_mtime_ns == p["mtime_ns"]:
                decoded[path] = {k: p[k] for k in _DECODED}
                continue
        todo.append(path)
    prev.clear()  # the earlier manifest's rows: what is reused is in ``decoded`` now
    reused = len(decoded) - measured
    fresh = _decode_all([str(root / p) for p in todo], max_pixels, workers, progress, log, isolate=isolate)
    for path in todo:
        decoded[path] = fresh.pop(str(root / path))
    return decoded, len(todo) + measured, reused


def _choose_layout(root: Path, raw: Path, layout: str) -> tuple[Layout, str]:
    """The layout to read ``root`` with, and a note when ``auto`` recognised none: a folder of images
    without class sub-folders (the usual pre-training archive) is then read unlabelled."""
    if layout.strip().lower() != "auto":
        return get_layout(layout), ""
    lay = detect_layout(root)
    if lay is not None:
        return lay, ""
    return get_layout("imagefolder"), (
        f"no dataset layout and no class sub-folders in '{raw}': its images are ingested unlabelled "
        f"(pass --layout with one of {', '.join(LAYOUTS)} if it is a labelled dataset)")


def _scan_entries(lay: Layout, root: Path, opts: LayoutOptions, files: list[str]
                  ) -> tuple[dict[str, Entry], int, dict[str, list[str]], int]:
    """The layout's entries by path, plus every image on disk it did not list (unlabelled).

    Returns (entries, repeated listings with the same label, {path: [its differing labels]}, unlisted).
    A file listed twice with different labels cannot be trusted with either: it is rejected, and the
    reason names both labels."""
    entries: dict[str, Entry] = {}
    repeats = 0
    conflicts: dict[str, list[str]] = {}
    for e in lay.scan(root, opts):
        first = entries.get(e.path)
        if first is not None:
            if (first.label, sorted(first.labels)) == (e.label, sorted(e.labels)):
                repeats += 1
            else:
                seen = conflicts.setdefault(e.path, [first.label or UNLABELLED])
                seen += [e.label or UNLABELLED] if (e.label or UNLABELLED) not in seen else []
            continue
        if e.reason.endswith("but missing"):
            e.reason = _present_but_unsupported(root, e.path) or e.reason
        entries[e.path] = e
    for path, labels in conflicts.items():
        entries[path].reason = f"conflicting labels (listed as {as_and(labels)})"
    unlisted = 0
    for f in files:
        if f not in entries and not lay.auxiliary(f):
            entries[f] = Entry(f, "", [], strip_ext(f), None)
            unlisted += 1
    return entries, repeats, conflicts, unlisted


def _build_frame(
    entries: dict[str, Entry],
    decoded: dict[str, dict[str, Any]],
    modality: str,
    dataset: str,
    layout: str,
    seed: int,
    fractions: tuple[float, float, float],
    listing: list[tuple[str, str]] | None = None,
):
    """All manifest rows as a DataFrame (MANIFEST_COLUMNS, sorted by path) with splits and duplicates;
    with a layout's ``listing`` of the whole archive, ``splits.assign_listed_splits``."""
    import pandas as pd

    from midol_cli.data.manifest import empty_row
    from midol_cli.data.splits import assign_listed_splits, assign_splits

    # Column by column (list comprehensions: no per-row dict), consuming ``entries`` and ``decoded``:
    # 100,000 files never hold the decoded records and the frame's columns twice over.
    blank = empty_row()
    paths = sorted(entries)
    es = [entries.pop(p) for p in paths]
    decs = [None if e.reason else decoded.pop(p, None) for p, e in zip(paths, es, strict=True)]
    decoded.clear()
    cols: dict[str, list[Any]] = {
        "sample_id": [stable_id(dataset, p) for p in paths],
        "path": paths,
        "modality": [modality] * len(paths),
        "dataset": [dataset] * len(paths),
        "layout": [layout] * len(paths),
        "label": [e.label for e in es],
        "labels": [list(e.labels) for e in es],
        "group": [e.group or strip_ext(p) for p, e in zip(paths, es, strict=True)],
        "meta": [
            json.dumps({k: v for k, v in e.meta.items() if v != ""}, sort_keys=True) if e.meta else "{}"
            for e in es
        ],
        "split": [e.split or "" for e in es],
    }
    for c in _DECODED:
        cols[c] = [d[c] if d is not None else blank[c] for d in decs]
    cols["status"] = ["rejected" if e.reason else d["status"] if d is not None else blank["status"]
                      for e, d in zip(es, decs, strict=True)]
    cols["reason"] = [e.reason if e.reason else d["reason"] if d is not None else ""
                      for e, d in zip(es, decs, strict=True)]
    del es, decs
    for c in MANIFEST_COLUMNS:
        if c not in cols:
            cols[c] = [blank[c]] * len(paths)
    df = pd.DataFrame(cols, columns=list(MANIFEST_COLUMNS))
    del cols
    if df.empty:
        return df

    ok = df["status"] == "ok"
    official = df["split"].copy()
    if ok.any():
        sub = df.loc[ok, ["group", "label", "split"]]
        df.loc[ok, "split"] = (assign_splits(sub, seed, fractions) if listing is None
                               else assign_listed_splits(sub, listing, seed, fractions))
    df["split_source"] = [
        ("official" if off and off == s else "derived") if s else ""
        for off, s in zip(official, df["split"], strict=True)
    ]

    # Exact copies: the first (by path) is the original, later ones point to it.
    first: dict[str, str] = {}
    dup_of: list[str] = []
    for sha, sid, is_ok in zip(df["sha256"], df["sample_id"], ok, strict=True):
        if not is_ok or not sha:
            dup_of.append("")
        elif sha in first:
            dup_of.append(first[sha])
        else:
            first[sha] = sid
            dup_of.append("")
    df["duplicate_of"] = dup_of
    return df


def _present_but_unsupported(root: Path, rel: str) -> str:
    """The true reason for a listed file that the walk did not find, when it is there in a format midol
    does not read (a .gif, say): at the listed path, or beside it with the same stem."""
    import glob

    p = root / rel
    found = p if p.is_file() else None
    if found is None and p.parent.is_dir():
        found = next((q for q in sorted(p.parent.glob(glob.escape(p.stem) + ".*")) if q.is_file()), None)
    if found is None:
        return ""
    ext = found.suffix.lower() or "no extension"
    return (f"unsupported format ({ext}: {found.name}); midol reads "
            f"{', '.join(sorted(readers.SUPPORTED_EXTENSIONS))} or DICOM")



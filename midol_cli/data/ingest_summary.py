"""Ingest's summary of a manifest: counts by label and split, rejections by reason, duplicates and
leakage across splits, and the warnings said about them (``ingest.ingest_folder`` returns it)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midol_cli.artifacts import SPLITS
from midol_cli.data.layouts import Layout, LayoutOptions

UNLABELLED = "(unlabelled)"


def reason_class(reason: str) -> str:
    """A reason without its per-file detail: "over pixel cap (9000 x 9000)" -> "over pixel cap"."""
    return reason.split(" (", 1)[0]


def as_and(labels: list[str]) -> str:
    """ "'cat' and as 'dog'": the labels a file was listed with."""
    return " and as ".join(f"'{x}'" for x in labels)


def summarize(df) -> dict[str, Any]:
    """The summary's counts from the manifest frame ``df``: rows, ok, rejected, rejects_by_reason,
    per_label_split, per_split, duplicates, duplicates_across_splits, duplicate_label_conflicts,
    groups_across_splits."""
    ok = df[df["status"] == "ok"] if len(df) else df
    rej = df[df["status"] == "rejected"] if len(df) else df
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for labels, split in zip(ok["labels"], ok["split"], strict=True):
        for lab in labels or [UNLABELLED]:
            per[lab][split] += 1
    split_of = dict(zip(ok["sample_id"], ok["split"], strict=True))
    dups = ok[ok["duplicate_of"] != ""]
    across = int(sum(split_of.get(d) != s for d, s in zip(dups["duplicate_of"], dups["split"], strict=True)))
    # Identical files whose labels disagree: the copy is kept out of training as a duplicate, but the
    # disagreement itself is a labelling problem the user should see.
    label_of = {sid: sorted(v or []) for sid, v in zip(ok["sample_id"], ok["labels"], strict=True)}
    conflicts = int(
        sum(
            label_of.get(d) != sorted(v or [])
            for d, v in zip(dups["duplicate_of"], dups["labels"], strict=True)
        )
    )
    groups_across = int((ok.groupby("group")["split"].nunique() > 1).sum()) if len(ok) else 0
    return {
        "rows": int(len(df)),
        "ok": int(len(ok)),
        "rejected": int(len(rej)),
        "rejects_by_reason": dict(sorted(Counter(reason_class(r) for r in rej["reason"]).items())),
        "per_label_split": {lab: {s: int(c[s]) for s in SPLITS} for lab, c in sorted(per.items())},
        "per_split": {s: int((ok["split"] == s).sum()) for s in SPLITS},
        "duplicates": int(len(dups)),
        "duplicates_across_splits": across,
        "duplicate_label_conflicts": conflicts,
        "groups_across_splits": groups_across,
    }


def summary_warnings(summary: dict[str, Any], label_source: str, layout: str) -> list[str]:
    """The warnings a summary's counts call for: unlisted files, repeated or conflicting listings,
    duplicates across splits or labels, groups across splits, folders not listed."""
    w: list[str] = []
    if summary["unlisted"]:
        w.append(
            f"{summary['unlisted']} image files are not listed in {label_source} ({layout} layout); "
            "kept as unlabelled rows"
        )
    if summary["duplicate_listings"]:
        w.append(f"{summary['duplicate_listings']} repeated listings of the same file were ignored")
    conflicts = summary.get("label_conflicts") or {}
    if conflicts:
        path, labels = next(iter(conflicts.items()))
        are = "files are" if len(conflicts) > 1 else "file is"
        w.append(
            f"label conflict: {len(conflicts)} {are} listed more than once with different labels (e.g. "
            f"'{path}' as {as_and(labels)}); rejected as 'conflicting labels': fix the listing"
        )
    if summary["duplicates_across_splits"]:
        w.append(
            f"leakage: {summary['duplicates_across_splits']} exact duplicate images sit in a different "
            "split than their first copy"
        )
    if summary["duplicate_label_conflicts"]:
        w.append(
            f"label conflict: {summary['duplicate_label_conflicts']} exact duplicate images carry other "
            "labels than their first copy (the copies are marked duplicate_of and left out; check the labels)"
        )
    if summary["groups_across_splits"]:
        w.append(
            f"leakage: {summary['groups_across_splits']} groups have images in more than one split "
            "(from the official split files)"
        )
    if summary["walk_errors"]:
        w.append(
            f"{len(summary['walk_errors'])} folders were not listed (e.g. '{summary['walk_errors'][0]}')"
        )
    return w


def add_warnings(
    summary: dict[str, Any],
    df: Any,
    lay: Layout,
    root: Path,
    opts: LayoutOptions,
    note: str,
    log: Callable[[str], None],
) -> None:
    """The summary's warnings and the layout's per-slide / per-volume results and lines."""
    summary["warnings"] = (
        ([note] if note else [])
        + summary_warnings(summary, lay.label_source, lay.name)
        + lay.scan_warnings(root, opts)
    )
    summary.update({k: v for k, v in opts.report.items() if k != "lines"})  # per slide / volume results
    summary["lines"] = list(opts.report.get("lines", []))
    first_only = (
        0
        if lay.name == "volumes" or not len(df)
        else int(df["intensity"].astype(str).str.contains("frame1of", regex=False).sum())
    )
    if first_only:  # multi-frame DICOMs an image layout read as one image: said, never silent
        summary["warnings"].append(
            f"{first_only} multi-frame DICOMs were read as their first frame only (intensity 'frame1ofN'); "
            "--layout volumes takes every frame, or a subset with --frames central:N or every:K"
        )
    for line in summary["lines"]:
        log(f"ingest: {line}")

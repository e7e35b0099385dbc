"""``midol ingest``'s one home: a raw folder -> a Parquet manifest (``data.ingest`` does the work)."""

from __future__ import annotations

from typing import Any

from midol_cli.errors import UsageError
from midol_cli.paths import writable_out
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import IngestSettings, write_settings

_CSV_KEYS = ("labels", "path_col", "label_col", "group_col", "split_col", "label_sep", "meta_cols")
# The slides and volumes layouts' options (LayoutOptions.extra, the same names; docs/data.md).
_PART_KEYS = ("mpp", "tile", "min_tissue", "slide_mpp", "max_tiles_per_slide", "part", "frames")
# Layouts that read a labels CSV of their own (slide / volume, label, patient columns).
_OWN_LABELS = ("slides", "volumes")


def run(s: IngestSettings, reporter: Reporter) -> dict[str, Any]:
    """Ingest ``s.raw_dir``; the summary the CLI tabulates (its ``settings``: the file written beside
    the manifest). A bar reporter gets the reading progress; a plain one ingest's own lines."""
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.layouts import LayoutOptions
    from midol_cli.data.readers import DEFAULT_MAX_PIXELS

    layout = _layout(s)
    labels = s.labels
    if labels is not None and not labels.is_file() and (s.raw_dir / labels).is_file():
        labels = s.raw_dir / labels  # a CSV named relative to the raw folder
    if labels is not None and not labels.is_file():
        raise UsageError(f"labels file '{labels}' does not exist")
    opts = LayoutOptions(labels=labels, path_col=s.path_col, label_col=s.label_col, group_col=s.group_col,
                         split_col=s.split_col, label_sep=s.label_sep, meta_cols=tuple(s.meta_cols),
                         extra=_extra(s))
    writable_out(s.out, "--out", folder=False)
    summary = ingest_folder(
        s.raw_dir, s.modality, layout=layout, out=s.out, workers=s.workers, seed=s.seed,
        max_pixels=DEFAULT_MAX_PIXELS if s.max_pixels is None else s.max_pixels, new_modality=s.new_modality,
        layout_options=opts, dataset=s.dataset, rehash=s.rehash,
        progress=reporter.callback("reading") if reporter.bar else None,
        log=None if reporter.bar else reporter.line)
    summary["settings"] = str(write_settings(s, summary["manifest"], "ingest", folder=False))
    return summary


def _extra(s: IngestSettings) -> dict[str, str]:
    """The slides / volumes options given, as the layouts' ``extra`` (a float in its short form)."""
    vals = {k: getattr(s, k) for k in _PART_KEYS if getattr(s, k) is not None}
    return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in vals.items()}


def _layout(s: IngestSettings) -> str:
    """The layout to use: a labels CSV given means the csv layout, unless a slides / volumes option or
    layout is given (those layouts read a labels CSV of their own); other csv keys with another layout
    are refused."""
    given = [k for k in _CSV_KEYS if getattr(s, k) not in (None, [])]
    layout = s.layout
    name = layout.strip().lower()
    parts = any(getattr(s, k) is not None for k in _PART_KEYS)
    if given == ["labels"] and (name in _OWN_LABELS or (name == "auto" and parts)):
        return layout
    if given and name == "auto":
        layout = "csv"
    if given and layout.strip().lower() != "csv":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{flags} only apply to --layout csv (got --layout {layout})")
    return layout

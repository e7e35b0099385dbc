"""Dataset layouts: how a raw folder on disk maps to (path, label, group, official split).

A layout is one small module exposing ``LAYOUT = SomeLayout()``; adding a
public dataset is one new file plus one line in ``_MODULES`` below. Layouts
only read (never write) the raw folder, match CSV columns by name (never by
position, stripped of surrounding whitespace, with documented aliases) and
raise ``UsageError`` for a damaged layout (missing CSV, renamed column).

Files listed by a layout's CSV but missing on disk come back as entries with a
``reason`` (they become rejected rows); image files on disk that no layout
entry covers are kept by ``ingest`` as unlabelled rows and counted in a warning.
"""

from __future__ import annotations

import csv
import difflib
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.data.readers import SUPPORTED_EXTENSIONS, is_candidate_name, sniff_dicom
from midol_cli.errors import UsageError

# Folder / CSV spellings of the three splits.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Entry:
    """One file a layout knows about.

    ``path``: posix path relative to the raw root. ``label``: the class, or the
    sorted ``labels`` joined with "|" for multi-label data, "" when unlabelled.
    ``group``: patient / lesion / image id used to keep splits leak-free.
    ``split``: the dataset's official split (train/val/test) or None.
    ``reason``: non-empty when the layout already knows the file is unusable
    (e.g. "listed in train.csv but missing").
    ``meta``: per-image metadata the dataset ships (sex, age, view, site, ...; keys as in
    ``artifacts.MANIFEST_META_KEYS``), strings only; written to the manifest's ``meta`` column.
    """

    path: str
    label: str = ""
    labels: list[str] = field(default_factory=list)
    group: str = ""
    split: str | None = None
    reason: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    # The manifest's decoded fields when the layout measured the row itself (a slide's tile, a volume's
    # frame: parts of a file that ingest must not read as one image); None: ingest reads the file.
    decoded: dict[str, Any] | None = None


def listed_entries(
    hits: list[str], missing_path: str, label: str, labels: list[str], group: str, split: str | None,
    reason: str, listed_in: str,
) -> list[Entry]:
    """Entries for one labelled CSV row: one per file found on disk, or, when none is, one rejected
    entry (``listed in <csv> but missing``) at the path the dataset would have used."""
    if not hits:
        return [
            Entry(missing_path, label, labels, group, split, reason or f"listed in {listed_in} but missing")
        ]
    return [Entry(path, label, labels, group, split, reason) for path in hits]


@dataclass
class LayoutOptions:
    """What a layout may need beyond the root folder.

    The generic ``csv`` layout uses ``labels`` (CSV path) and the column names;
    ``files`` is an optional precomputed listing of candidate image files
    (relative posix paths, as ``walk_candidates`` returns) so the folder is walked once.
    """

    labels: Path | None = None
    path_col: str | None = None
    label_col: str | None = None
    # Multi-label tables with one 0/1 column per label (CheXpert style): the label names.
    label_cols: tuple[str, ...] = ()
    group_col: str | None = None
    split_col: str | None = None
    label_sep: str | None = None
    # csv layout: columns of per-image metadata (sex, age, site, ...) copied into the manifest's
    # ``meta`` column, for subgroup results (`probe --subgroups`); never used as model inputs.
    meta_cols: tuple[str, ...] = ()
    files: tuple[str, ...] | None = None
    # Dataset-specific switches a layout documents itself (e.g. CheXpert's uncertainty policy,
    # BreakHis's magnification); a layout rejects keys it does not know.
    extra: dict[str, str] = field(default_factory=dict)
    # Set by ingest for layouts that do heavy per-file work (slides, volumes): worker processes, the
    # seed, the manifest being written (QC files go beside it); ``report`` comes back into the summary.
    workers: int = 1
    seed: int = 0
    out: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)
    rehash: bool = False  # `ingest --rehash`: every slide read again, no cached result reused

    def as_record(self) -> dict[str, str | None]:
        """The user-set options as JSON-able data (for manifest provenance)."""
        return {
            **{f"extra.{k}": v for k, v in sorted(self.extra.items())},
            "labels": str(Path(self.labels).resolve()) if self.labels else None,
            "path_col": self.path_col,
            "label_col": self.label_col,
            "label_cols": ",".join(self.label_cols) or None,
            "group_col": self.group_col,
            "split_col": self.split_col,
            "label_sep": self.label_sep,
            "meta_cols": ",".join(self.meta_cols) or None,
        }


class Layout(ABC):
    """Base class. Subclasses set the class attributes and implement ``detect``/``scan``."""

    name: str = ""
    # Default dataset name for sample ids; "" means "the raw folder's name".
    dataset: str = ""
    # Expected layout as a short multi-line text (shown by `midol tasks show`).
    description: str = ""
    # Where labels come from, for messages ("train.csv", "class folders").
    label_source: str = ""
    multi_label: bool = False

    @abstractmethod
    def detect(self, root: Path) -> bool:
        """True when ``root`` looks like this layout (for ``--layout auto``). Must be cheap."""

    @abstractmethod
    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        """Every file this layout knows about under ``root``; raise UsageError for a damaged layout."""

    def dataset_name(self, root: Path) -> str:
        """The dataset name sample ids are derived from: the layout's own, else the folder's."""
        return self.dataset or root.resolve().name

    def candidates(self, root: Path, opts: LayoutOptions) -> tuple[str, ...]:
        """Image files under ``root`` (relative posix), from ``opts.files`` when ingest already walked."""
        return opts.files if opts.files is not None else tuple(walk_candidates(root))

    def auxiliary(self, path: str) -> bool:
        """True for a file that belongs to the dataset but is not an image row (a segmentation
        mask): ingest neither keeps it as an unlabelled row nor counts it as unlisted."""
        return False

    def scan_warnings(self, root: Path, opts: LayoutOptions) -> list[str]:
        """Dataset-specific warnings for ingest's summary (e.g. masks without an image); none by default."""
        return []


# ---------------------------------------------------------------- helpers for layouts


def walk_candidates(root: str | os.PathLike[str], errors: list[str] | None = None) -> list[str]:
    """Image files under ``root`` as sorted relative posix paths.

    A file counts when its extension is supported, or when it has no (or a
    numeric) extension and starts with the DICOM preamble. Hidden files and
    folders (".DS_Store", "._x.jpg", ".git") are skipped. Symlinked folders are
    followed (datasets are often linked in), each real folder once: a link back
    to a folder already walked (a loop, or a second link to the same data) is
    appended to ``errors`` with that reason, as are folders that cannot be listed.
    """
    root = os.fspath(root)
    found: list[str] = []

    def onerror(e: OSError) -> None:
        if errors is not None:
            errors.append(os.path.relpath(e.filename, root) if e.filename else str(e))

    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink
            dirnames[:] = []
            if errors is not None:
                errors.append(
                    f"{os.path.relpath(dirpath, root)} (symlink to a folder already listed; not followed)"
                )
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fn in filenames:
            if fn.startswith(".") or not is_candidate_name(fn):
                continue
            if os.path.splitext(fn)[1].lower() not in SUPPORTED_EXTENSIONS and not sniff_dicom(
                os.path.join(dirpath, fn)
            ):
                continue
            rel = fn if rel_dir == "." else f"{rel_dir}/{fn}"
            found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found


def strip_ext(path: str) -> str:
    """``a/b/c.png`` -> ``a/b/c`` (only a supported image extension is removed; a name that is only
    an extension, ``a/.png``, keeps it). String operations: it runs once per file of a folder."""
    dot = path.rfind(".")
    if dot <= path.rfind("/") + 1:
        return path
    return path[:dot] if path[dot:].lower() in SUPPORTED_EXTENSIONS else path


class FileIndex:
    """Look files up by exact relative path, by file name, or by stem (name without extension)."""

    def __init__(self, files: Iterable[str]) -> None:
        self.paths = set(files)
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for f in sorted(self.paths):
            name = f.rsplit("/", 1)[-1]
            self.by_name.setdefault(name, []).append(f)
            self.by_stem.setdefault(strip_ext(name), []).append(f)

    def stem_matches(self, stem: str, under: tuple[str, ...] = ()) -> list[str]:
        """All files whose name without extension is ``stem``; only below folders ``under`` if given."""
        hits = self.by_stem.get(stem, [])
        if under:
            hits = [h for h in hits if any(h.startswith(u.rstrip("/") + "/") for u in under)]
        return hits


def read_csv(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    """Read a whole CSV (UTF-8, optional BOM); return (stripped header, data rows) or raise UsageError.

    Blank lines are dropped. Cells are left as written; use ``cell`` to strip them.
    """
    if not path.is_file():
        raise UsageError(f"{what} '{path}' is missing; this layout reads its labels from that file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except PermissionError:
        raise UsageError(f"cannot read {what} '{path}' (permission denied); check its permissions") from None
    except (UnicodeDecodeError, csv.Error):
        raise UsageError(f"{what} '{path}' is not valid UTF-8 CSV text") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} '{path}' ({e.strerror})") from None
    if not rows:
        raise UsageError(f"{what} '{path}' is empty; expected a header row")
    return [h.strip() for h in rows[0]], rows[1:]


def find_column(header: list[str], names: tuple[str, ...], csv_path: Path, layout: str) -> int:
    """Index of the first of ``names`` (a column and its aliases) in ``header``, else UsageError."""
    for n in names:
        if n in header:
            return header.index(n)
    shown = ", ".join(repr(h) for h in header if h)
    alias = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise UsageError(
        f"{csv_path.name} has no column '{names[0]}'{alias}; the {layout} layout needs it "
        f"(columns found: {shown})"
    )


def optional_columns(header: list[str], wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """``{meta key: column index}`` for the metadata columns ``header`` has (first alias found);
    absent ones are left out, never an error (older releases and mirrors drop them)."""
    found: dict[str, int] = {}
    for key, names in wanted.items():
        for n in names:
            if n in header:
                found[key] = header.index(n)
                break
    return found


_SEX = {"m": "male", "male": "male", "f": "female", "female": "female"}


def read_meta(row: list[str], columns: dict[str, int]) -> dict[str, str]:
    """The metadata of one CSV row (``optional_columns``' indices): empty and unknown values left
    out; ``sex`` spelled ``male``/``female`` whatever the dataset writes (M/F, Male, ...)."""
    out: dict[str, str] = {}
    for key, idx in columns.items():
        v = cell(row, idx)
        if not v or v.lower() in ("unknown", "nan", "na", "n/a", "none", "?"):
            continue
        if key == "sex":
            v = _SEX.get(v.lower(), v.lower())
        elif key == "fitzpatrick" and v.replace(".", "", 1).isdigit():
            v = str(int(float(v)))  # PAD-UFES-20 writes skin type 3 as "3.0"
        out[key] = v
    return out


def cell(row: list[str], idx: int | None) -> str:
    """Stripped value at ``idx``; "" for short rows or an absent column."""
    if idx is None or idx >= len(row):
        return ""
    return row[idx].strip()


def split_labels(value: str, sep: str | None) -> list[str]:
    """Sorted unique non-empty labels from one cell (single-label when ``sep`` is None)."""
    value = value.strip()
    if not value:
        return []
    if sep is None:
        return [value]
    return sorted({v.strip() for v in value.split(sep) if v.strip()})


def normalize_split(value: str, where: str) -> str | None:
    """Map a split spelling (train/valid/testing/...) to train|val|test; "" -> None; else UsageError."""
    v = value.strip().lower()
    if not v:
        return None
    if v in SPLIT_ALIASES:
        return SPLIT_ALIASES[v]
    raise UsageError(f"unknown split value '{value}' in {where}; use train, val or test")


def has_image_files(folder: Path, limit: int = 2000) -> bool:
    """Cheap check: does ``folder`` contain a supported image file within its first ``limit`` entries?"""
    seen = 0
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in SUPPORTED_EXTENSIONS:
                return True
            seen += 1
        if seen > limit:
            return False
    return False


# ---------------------------------------------------------------- registry

# Auto-detection tries these in order: specific datasets first, the generic
# class-folder layout last; `csv` never auto-detects (it needs --labels).
_MODULES: tuple[str, ...] = (
    "slides",  # recognised by content (slide files), before any layout could read a slide as one image
    "volumes",  # .vol files or multi-frame DICOMs: one row per frame, before a layout takes the first frame
    "aptos",
    "ham10000",
    "oct2017",
    "chestxray14",
    "nct_crc",
    "chexpert",
    "rsna_pneumonia",
    "covidx",
    "idrid",
    "messidor2",
    "eyepacs",
    "retina_cataract",
    "isic2018_seg",
    "octid",
    "isic2018",
    "pad_ufes20",
    "breakhis",
    "pcam",
    "mhist",
    "imagefolder",
    "csvfile",
)

LAYOUTS: dict[str, Layout] = {}
for _mod in _MODULES:
    _layout: Layout = importlib.import_module(f"{__name__}.{_mod}").LAYOUT
    LAYOUTS[_layout.name] = _layout


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_layout(name: str) -> Layout:
    """The layout called ``name`` ('-'/'_' and case ignored), or a UsageError listing the known ones."""
    for lay in LAYOUTS.values():
        if _key(lay.name) == _key(name):
            return lay
    close = difflib.get_close_matches(name.strip().lower(), list(LAYOUTS), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UsageError(f"unknown layout '{name}': {hint}use auto or one of {', '.join(LAYOUTS)}")


def detect_layout(root: str | os.PathLike[str]) -> Layout | None:
    """The first layout whose ``detect`` accepts ``root``, or None."""
    root = Path(root)
    for lay in LAYOUTS.values():
        if lay.detect(root):
            return lay
    return None

"""Whole-slide images: every slide under the folder becomes rows of tile coordinates.

Options (``LayoutOptions.extra``; the command line's ``--mpp`` and friends):

- ``mpp`` (0.5): micrometres per pixel of the tiles; ``tile`` (224): tile side in pixels;
- ``min_tissue`` (0.5): least tissue fraction a tile keeps; ``slide_mpp``: the pixel size of slides that
  record none (without it such a slide is rejected: "no pixel size (give --slide-mpp)");
- ``max_tiles_per_slide`` (0: all): a seeded uniform sample per slide (``ingest --seed``);
- ``part`` (``I/N``): only the slides whose path hashes to part I of N (a cluster job array).

Labels and patients: a slide in a folder takes the folder's name as its label (``tumor/a.svs``; the
imagefolder rule); or ``LayoutOptions.labels`` names a CSV with a ``slide`` column (the path, file name
or name without extension) and optional ``label`` and ``patient`` columns. Every tile of a slide takes
its label, and its group is the patient (the slide without one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    read_csv,
    strip_ext,
)
from midol_cli.errors import UsageError

_SPEC = ("mpp", "tile", "min_tissue", "slide_mpp", "max_tiles_per_slide", "part")


def tile_settings(extra: dict[str, str], seed: int) -> Any:
    """TileSettings from the layout's options; one-line UsageError for an unknown key or a bad value."""
    from midol_cli.data.slide_tiles import TileSettings

    vals: dict[str, Any] = {}
    for k, v in (extra or {}).items():
        key = str(k).strip().lower().replace("-", "_")
        if key not in _SPEC:
            raise UsageError(f"the slides layout has no option '{k}' (options: {', '.join(_SPEC)})")
        vals[key] = str(v).strip()
    try:
        s = TileSettings(
            mpp=float(vals.get("mpp", 0.5)),
            tile=int(vals.get("tile", 224)),
            min_tissue=float(vals.get("min_tissue", 0.5)),
            slide_mpp=float(vals["slide_mpp"]) if vals.get("slide_mpp") else None,
            max_tiles=int(vals.get("max_tiles_per_slide", 0)),
            seed=int(seed),
        )
    except ValueError:
        raise UsageError(
            f"slides options must be numbers: {', '.join(f'{k}={v}' for k, v in vals.items())}"
        ) from None
    if not (
        s.mpp > 0
        and 16 <= s.tile <= 4096
        and 0 <= s.min_tissue <= 1
        and s.max_tiles >= 0
        and (s.slide_mpp is None or s.slide_mpp > 0)
    ):
        raise UsageError(
            "slides options out of range: --mpp > 0, 16 <= --tile <= 4096, 0 <= --min-tissue <= 1, "
            "--max-tiles-per-slide >= 0, --slide-mpp > 0"
        )
    return s


def walk_slides(root: Path) -> list[str]:
    """Files that may be slides (slide extensions, and .tif/.tiff/.dcm to check by content), sorted.
    Hidden entries and MIRAX's data folders (beside each .mrxs) are skipped."""
    from midol_cli.data.wsi import MAYBE_SLIDE_EXTENSIONS, SLIDE_EXTENSIONS

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        mrxs = {os.path.splitext(f)[0] for f in filenames if f.lower().endswith(".mrxs")}
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in mrxs)
        rel_dir = os.path.relpath(dirpath, root)
        for fn in sorted(filenames):
            ext = os.path.splitext(fn)[1].lower()
            if fn.startswith(".") or ext not in SLIDE_EXTENSIONS | MAYBE_SLIDE_EXTENSIONS:
                continue
            found.append((fn if rel_dir == "." else f"{rel_dir}/{fn}").replace(os.sep, "/"))
    return sorted(found)


def dicom_series(root: Path, files: list[str]) -> tuple[list[str], set[str]]:
    """(candidates, files of DICOM WSI series left out): a DICOM WSI is a folder of files (its levels)
    that OpenSlide opens from any one of them, so of a folder whose first .dcm is a DICOM slide only that
    file is a candidate; other .dcm files stay candidates of their own (a stray X-ray is then rejected as
    "not a slide", never dropped)."""
    from midol_cli.data import wsi

    first: dict[str, str] = {}
    for f in files:
        if f.lower().endswith(".dcm"):
            first.setdefault(f.rpartition("/")[0], f)
    series: set[str] = set()
    for folder, f in first.items():
        try:
            is_wsi = wsi.slide_format(root / f) == "dicom"
        except Exception:  # no OpenSlide: each file is rejected with the missing extra's line
            is_wsi = False
        if is_wsi:
            series |= {
                g for g in files if g.lower().endswith(".dcm") and g.rpartition("/")[0] == folder and g != f
            }
    return [f for f in files if f not in series], series


class SlidesLayout(Layout):
    name = "slides"
    dataset = ""
    label_source = "the slide labels CSV"
    description = (
        "Whole-slide images (needs the wsi extra), anywhere below the folder:\n"
        "  <any/sub/path>/<slide>.{svs,ndpi,mrxs,scn,bif,tif,tiff,dcm}   (recognised by content)\n"
        "Each slide becomes one row per tissue tile (level-0 x, y; level; mpp; tile size; tissue fraction).\n"
        "Options: mpp, tile, min_tissue, slide_mpp, max_tiles_per_slide, part. Group = the slide, or the\n"
        "patient from a labels CSV (columns slide, label, patient); label = the slide's top folder, or the\n"
        "CSV's. QC thumbnails go beside the manifest."
    )

    def detect(self, root: Path) -> bool:
        from midol_cli.data.wsi import SLIDE_EXTENSIONS
        from midol_cli.extras import has

        seen = 0
        for _dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                ext = os.path.splitext(fn)[1].lower()
                if ext in SLIDE_EXTENSIONS:
                    return True
                if ext in (".tif", ".tiff") and has("openslide") and _pyramidal(os.path.join(_dirpath, fn)):
                    return True
                seen += 1
                if seen > 200:
                    return False
        return False

    def __init__(self) -> None:
        self._series: set[str] = set()  # the last scan's DICOM WSI files beside the one it opened
        self._part: tuple[int, int] | None = None  # the last scan's --part: other parts' files are not rows

    def auxiliary(self, path: str) -> bool:
        from midol_cli.data.parts import part_of
        from midol_cli.data.wsi import MAYBE_SLIDE_EXTENSIONS, SLIDE_EXTENSIONS

        return (
            os.path.splitext(path)[1].lower() in SLIDE_EXTENSIONS | MAYBE_SLIDE_EXTENSIONS
            or path in self._series
            or not part_of(path, self._part)  # an ordinary image of another part (no duplicate rows)
        )

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        from midol_cli.data.parts import parse_part, part_of
        from midol_cli.data.slide_runner import tile_all

        extra = dict(opts.extra)
        part = self._part = parse_part(extra.pop("part", None))
        settings = tile_settings(extra, opts.seed)
        table = _slide_table(opts) if opts.labels else None
        found, self._series = dicom_series(root, walk_slides(root))
        slides = [s for s in found if part_of(s, part)]
        cases = {rel: _case(rel, table) for rel in found}
        # Every part lists the whole archive, so every part (and one run) derives the same splits.
        opts.report["split_listing"] = [(cases[rel][1], cases[rel][0]) for rel in found]
        results = tile_all(root, slides, settings, opts)
        entries: list[Entry] = []
        lines: list[str] = []
        for rel in slides:
            entries += _entries(rel, results[rel], settings, *cases[rel])
            lines.append(_line(rel, results[rel]))
        opts.report["slides"] = {rel: _brief(results[rel]) for rel in slides}
        opts.report["lines"] = opts.report.get("lines", []) + lines
        if part is not None:
            opts.report["part"] = f"{part[0]}/{part[1]}"
        return entries


def _pyramidal(path: str) -> bool:
    """A TIFF OpenSlide opens with more than one level (a plain tiled TIFF image is not a slide)."""
    from midol_cli.data import wsi

    try:
        if wsi.slide_format(path) is None:
            return False
        slide = wsi.open_slide(path)
    except Exception:
        return False
    try:
        return slide.level_count > 1
    finally:
        slide.close()


def _case(rel: str, table: _SlideTable | None) -> tuple[str, str]:
    """(label, group) of a file: the labels CSV's, else its class folder's; group the patient, else the
    file without its extension."""
    label, group = table.lookup(rel) if table is not None else (folder_label(rel), "")
    return label, group or os.path.splitext(rel)[0]


def folder_label(rel: str) -> str:
    """The class of a file kept in class folders (``tumor/a.svs`` -> ``tumor``), as the imagefolder layout
    reads them; "" for a file directly in the root. A labels CSV, when given, is used instead."""
    return rel.split("/", 1)[0] if "/" in rel else ""


class _SlideTable:
    def __init__(self, index: FileIndex, rows: dict[str, tuple[str, str]]) -> None:
        self.index, self.rows = index, rows

    def lookup(self, rel: str) -> tuple[str, str]:
        name = rel.rsplit("/", 1)[-1]
        for k in (rel, name, strip_ext(name), os.path.splitext(name)[0]):
            if k in self.rows:
                return self.rows[k]
        return "", ""


def _slide_table(opts: LayoutOptions, what: str = "slide", layout: str = "slides") -> _SlideTable:
    """file -> (label, patient) from the labels CSV (the file column: ``slide`` or ``volume``, or
    ``--path-col``; a path, file name or name without extension); every row of a file inherits them."""
    path = Path(opts.labels)  # type: ignore[arg-type]
    header, rows = read_csv(path, f"{what} labels CSV")
    i_slide = find_column(header, (opts.path_col or what, f"{what}_id", "path", "file"), path, layout)
    i_label = next(
        (header.index(c) for c in (opts.label_col or "label", "class", "diagnosis") if c in header), None
    )
    i_group = next(
        (
            header.index(c)
            for c in (opts.group_col or "patient", "patient_id", "case_id", "group")
            if c in header
        ),
        None,
    )
    out: dict[str, tuple[str, str]] = {}
    for r in rows:
        out[cell(r, i_slide)] = (cell(r, i_label), cell(r, i_group))
    return _SlideTable(FileIndex(()), out)


def _entries(rel: str, res: dict[str, Any], s: Any, label: str, group: str) -> list[Entry]:
    import hashlib

    from midol_cli.data.parts import tile_path

    labels = [label] if label else []
    if res["status"] != "ok":
        return [Entry(rel, label, labels, group, None, res["reason"] or "unreadable slide")]
    if not res["tiles"]:
        return [Entry(rel, label, labels, group, None, f"no tissue tiles (--min-tissue {s.min_tissue:g})")]
    common = {
        "slide": rel,
        "slide_sha256": res["sha256"],
        "slide_bytes": str(res["bytes"]),
        "slide_mtime_ns": str(res["mtime_ns"]),
        "level": str(res["level"]),
        "read": str(res["read"]),
        "tile": str(s.tile),
        "mpp": f"{s.mpp:g}",
        "slide_mpp": f"{res['slide_mpp']:.6g}",
        "vendor": res["vendor"],
        "magnification": res["magnification"],
    }
    out: list[Entry] = []
    for x, y, frac, *ph in res["tiles"]:
        ident = f"{res['sha256']}:{x}:{y}:{res['level']}:{res['read']}:{s.tile}"
        dec = {
            "width": s.tile,
            "height": s.tile,
            "channels": 3,
            "bit_depth": 8,
            "format": "WSI",
            "intensity": "",
            "sha256": hashlib.sha256(ident.encode()).hexdigest(),
            "phash": ph[0] if ph else "",
            "bytes": res["bytes"],
            "mtime_ns": res["mtime_ns"],
            "status": "ok",
            "reason": "",
        }
        meta = {**common, "x": str(x), "y": str(y), "tissue": f"{frac:.4f}"}
        out.append(
            Entry(
                tile_path(rel, x, y, res["level"], res["read"], s.tile),
                label,
                list(labels),
                group,
                None,
                "",
                meta,
                dec,
            )
        )
    return out


def _brief(res: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "reason", "vendor", "slide_mpp", "magnification", "level", "tissue", "thumbnail")
    return {**{k: res.get(k) for k in keys if k in res}, "tiles": len(res.get("tiles", []))}


def _line(rel: str, res: dict[str, Any]) -> str:
    if res["status"] != "ok":
        return f"slide {rel}: rejected ({res['reason']})"
    return (
        f"slide {rel}: {len(res['tiles'])} tiles, tissue {res['tissue']:.0%}, {res['slide_mpp']:.3g} um/px "
        f"({res['magnification']}), read level {res['level']}"
    )


LAYOUT = SlidesLayout()

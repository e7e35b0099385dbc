"""Volumes: multi-frame DICOMs (OCT as Ophthalmic Tomography, or any multi-frame image) and Heidelberg .vol
files become one row per frame (B-scan), or per frame of ``--frames central:N`` / ``every:K``.

Options (``LayoutOptions.extra``): ``frames`` (``all`` | ``central:N`` | ``every:K``; default all) and
``part`` (``I/N``). Single-frame images under the folder stay ordinary image rows. Each frame row's meta
holds the volume, the frame index, the frame count, the choice, and the laterality where the header
has it (``eye`` right/left); its group is the patient when the header or a labels CSV names one, else
the volume. A volume in a folder takes the folder's name as its label (``cnv/v.dcm``), or a labels CSV
(columns volume, label, patient) labels it; every frame of a volume inherits the label.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from midol_cli.data.layouts import Entry, Layout, LayoutOptions
from midol_cli.errors import UsageError

_SPEC = ("frames", "part")


def _walk(root: Path, opts: LayoutOptions) -> list[str]:
    """Volume candidates: .vol files and DICOMs whose header says NumberOfFrames is not 1."""
    from midol_cli.data.layouts import walk_candidates
    from midol_cli.data.readers import sniff_dicom
    from midol_cli.data.volumes import VOL_EXTENSIONS

    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fn in filenames:
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in VOL_EXTENSIONS:
                found.append((fn if rel_dir == "." else f"{rel_dir}/{fn}").replace(os.sep, "/"))
    files = opts.files if opts.files is not None else tuple(walk_candidates(root))
    for f in files:
        if (f.lower().endswith((".dcm", ".dicom")) or sniff_dicom(root / f)) and _frames(root / f) != 1:
            found.append(f)
    return sorted(found)


def _frames(path: Path) -> int:
    """NumberOfFrames from the header alone (1 when absent or unreadable: an image, not a volume)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
    except Exception:
        return 1
    nf = ds.get("NumberOfFrames")
    try:
        return 1 if nf is None or str(nf).strip() == "" else int(nf)
    except ValueError:
        return 1


def _case(root: Path, rel: str, table: Any) -> tuple[str, str]:
    """(label, group) of a volume as its rows will have them: the labels CSV's or its class folder's
    label; the group the CSV's patient, else the DICOM header's PatientID, else the volume. (A .vol's
    patient, known only once the file is read, is missing here: its group takes splits.group_split.)"""
    from midol_cli.data.layouts.slides import folder_label
    from midol_cli.data.volumes import VOL_EXTENSIONS

    label, group = table.lookup(rel) if table is not None else (folder_label(rel), "")
    if not group and os.path.splitext(rel)[1].lower() not in VOL_EXTENSIONS:
        import pydicom

        try:
            ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=["PatientID"])
            group = str(ds.get("PatientID", "") or "").strip()
        except Exception:
            group = ""
    return label, group or os.path.splitext(rel)[0]


def _one(task: tuple[str, str, tuple[str, int], str, int]) -> dict[str, Any]:
    """Open one volume and decode its chosen frames:
    ``{"status", "reason", "n", "info", "frames": [(i, rec)], "mtime_ns"}``."""
    from midol_cli.data.decoded import ImageRejected
    from midol_cli.data.volumes import frame_record, open_volume, select_frames

    abs_path, rel, choice, spec, max_pixels = task
    try:
        st = os.stat(abs_path)
        vol, n, info, reader = open_volume(abs_path, max_pixels)
        frames = [(i, frame_record(reader(vol, i), st)) for i in select_frames(n, choice)]
    except ImageRejected as e:
        return {"status": "rejected", "reason": e.reason}
    except MemoryError:
        return {"status": "rejected", "reason": "out of memory while decoding"}
    except Exception as e:  # a damaged volume costs only itself
        return {"status": "rejected", "reason": f"unreadable volume ({type(e).__name__})"}
    return {"status": "ok", "n": n, "info": info, "frames": frames, "mtime_ns": int(st.st_mtime_ns)}


class VolumesLayout(Layout):
    name = "volumes"
    dataset = ""
    label_source = "the volume labels CSV"
    description = (
        "Volumes, anywhere below the folder: multi-frame DICOM (e.g. OCT, Ophthalmic Tomography) and\n"
        "Heidelberg .vol (needs the oct extra). One row per frame, or per frame of --frames central:N or\n"
        "every:K; meta: volume, frame, n_frames, frames, laterality/eye. Group = the patient, else the\n"
        "volume. Labels CSV: columns volume, label, patient. Single-frame images stay image rows."
    )

    def detect(self, root: Path) -> bool:
        from midol_cli.data.readers import DICOM_EXTENSIONS
        from midol_cli.data.volumes import VOL_EXTENSIONS

        seen = dicoms = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for fn in filenames:
                ext = os.path.splitext(fn)[1].lower()
                if ext in VOL_EXTENSIONS:
                    return True
                if ext in DICOM_EXTENSIONS and dicoms < 10:
                    dicoms += 1
                    if _frames(Path(dirpath) / fn) > 1:
                        return True
                seen += 1
                if seen > 200:
                    return False
        return False

    def __init__(self) -> None:
        self._volumes: set[str] = set()  # the files the last scan made frame rows of (not image rows)
        self._part: tuple[int, int] | None = None  # the last scan's --part: other parts' files are not rows

    def auxiliary(self, path: str) -> bool:
        from midol_cli.data.parts import part_of

        # an ordinary image of another part is not a row of this one (3 parts hold it once)
        return path.lower().endswith(".vol") or path in self._volumes or not part_of(path, self._part)

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        from midol_cli.data.layouts.slides import _slide_table, folder_label
        from midol_cli.data.parts import parse_part, part_of
        from midol_cli.data.readers import DEFAULT_MAX_PIXELS
        from midol_cli.data.volumes import parse_frames

        extra = {str(k).strip().lower(): str(v) for k, v in (opts.extra or {}).items()}
        unknown = sorted(set(extra) - set(_SPEC))
        if unknown:
            raise UsageError(f"the volumes layout has no option '{unknown[0]}' (options: {', '.join(_SPEC)})")
        spec = (extra.get("frames") or "all").strip().lower()
        choice = parse_frames(spec)
        part = self._part = parse_part(extra.get("part"))
        table = _slide_table(opts, "volume", "volumes") if opts.labels else None
        found = _walk(root, opts)
        self._volumes = set(found)  # every volume, also those of other parts: none becomes an image row
        vols = [v for v in found if part_of(v, part)]
        # Every part lists the whole archive, so every part (and one run) derives the same splits.
        opts.report["split_listing"] = [_case(root, v, table)[::-1] for v in found]
        tasks = [(str(root / v), v, choice, spec, DEFAULT_MAX_PIXELS) for v in vols]
        results = _run(tasks, opts.workers)
        entries: list[Entry] = []
        lines: list[str] = []
        for rel, res in zip(vols, results, strict=True):
            label, group = table.lookup(rel) if table is not None else (folder_label(rel), "")
            entries += _entries(rel, res, spec, label, group)
            lines.append(_line(rel, res, spec))
        opts.report["volumes"] = {v: _brief(r, spec) for v, r in zip(vols, results, strict=True)}
        opts.report["frames"] = spec
        opts.report["lines"] = opts.report.get("lines", []) + lines
        return entries


def _run(tasks: list[tuple], workers: int) -> list[dict[str, Any]]:
    """Every volume's result in task order (worker processes; a crashing reader costs only its volume)."""
    from midol_cli.data.slide_runner import run_isolated

    def crashed(_t: tuple) -> dict[str, Any]:
        return {"status": "rejected", "reason": "reader crashed (the decoder died on this file)"}

    done = {t[1]: res for t, res in run_isolated(_one, tasks, workers, crashed)}
    return [done[t[1]] for t in tasks]


def _entries(rel: str, res: dict[str, Any], spec: str, label: str, group: str) -> list[Entry]:
    from midol_cli.data.parts import frame_path
    from midol_cli.data.volumes import eye

    labels = [label] if label else []
    info = res.get("info", {})
    group = group or info.get("patient", "") or os.path.splitext(rel)[0]
    if res["status"] != "ok":
        return [Entry(rel, label, labels, group, None, res["reason"])]
    common = {
        "volume": rel,
        "n_frames": str(res["n"]),
        "frames": spec,
        "volume_mtime_ns": str(res["mtime_ns"]),
        "laterality": info.get("laterality", ""),
        "eye": eye(info.get("laterality", "")),
    }
    return [
        Entry(frame_path(rel, i), label, list(labels), group, None, "", {**common, "frame": str(i)}, rec)
        for i, rec in res["frames"]
    ]


def _brief(res: dict[str, Any], spec: str) -> dict[str, Any]:
    if res["status"] != "ok":
        return {"status": "rejected", "reason": res["reason"]}
    return {
        "status": "ok",
        "frames": len(res["frames"]),
        "of": res["n"],
        "choice": spec,
        "laterality": res["info"].get("laterality", ""),
    }


def _line(rel: str, res: dict[str, Any], spec: str) -> str:
    if res["status"] != "ok":
        return f"volume {rel}: rejected ({res['reason']})"
    lat = res["info"].get("laterality", "")
    return f"volume {rel}: {len(res['frames'])} of {res['n']} frames (--frames {spec})" + (
        f", laterality {lat}" if lat else ""
    )


LAYOUT = VolumesLayout()

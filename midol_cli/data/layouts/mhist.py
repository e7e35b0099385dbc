"""MHIST (colorectal polyp histology: hyperplastic polyp vs sessile serrated adenoma)."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    normalize_split,
    read_csv,
    strip_ext,
)
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

_CSV = "annotations.csv"
_IMAGES = "images"
CLASSES: tuple[str, ...] = ("HP", "SSA")


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return [h.strip() for h in fh.readline().split(",")]
    except (OSError, UnicodeDecodeError):
        return []


class MhistLayout(Layout):
    name = "mhist"
    dataset = "mhist"
    label_source = _CSV
    description = (
        "MHIST (Wei et al., bmirds.github.io/MHIST):\n"
        "  annotations.csv   header: Image Name,Majority Vote Label,\n"
        "                            Number of Annotators who Selected SSA (Out of 7),Partition\n"
        "  images/MHIST_<xxx>.png\n"
        "Label = Majority Vote Label (HP or SSA); group = the image itself (no patient ids);\n"
        "official split = Partition (train/test), val carved from train."
    )

    def detect(self, root: Path) -> bool:
        header = _header(root / _CSV)
        return "Image Name" in header and "Majority Vote Label" in header

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        csv_path = root / _CSV
        if not csv_path.is_file():
            raise UsageError(f"'{root}' has no {_CSV}; the mhist layout reads labels and the split from it")
        header, rows = read_csv(csv_path, "MHIST annotations file")
        i_img = find_column(header, ("Image Name",), csv_path, self.name)
        i_lab = find_column(header, ("Majority Vote Label",), csv_path, self.name)
        i_part = find_column(header, ("Partition",), csv_path, self.name)
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for row in rows:
            image = cell(row, i_img)
            if not image:
                continue
            raw = cell(row, i_lab)
            label = raw.upper() if raw.upper() in CLASSES else ""
            reason = "" if label else f"invalid Majority Vote Label '{raw}' in {_CSV}"
            split = normalize_split(cell(row, i_part), f"{_CSV} column Partition")
            labels = [label] if label else []
            group = strip_ext(image)
            hits = index.by_name.get(image, []) or index.stem_matches(group)
            hits = [h for h in hits if h.startswith(f"{_IMAGES}/")] or hits
            if not hits:
                entries.append(
                    Entry(f"{_IMAGES}/{image}", label, labels, group, split, f"listed in {_CSV} but missing")
                )
                continue
            for path in hits:
                entries.append(Entry(path, label, labels, group, split, reason))
        return entries


LAYOUT = MhistLayout()

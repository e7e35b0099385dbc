"""ISIC 2018 Task 3 (dermoscopy, 7 diagnoses, one-hot ground-truth CSV)."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, FileIndex, Layout, LayoutOptions, cell, find_column, read_csv
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

# Ground-truth columns in the order of the CSV header; the class is the column holding 1.0.
CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# (part of the file names, official split). The training set alone has no split; once the
# released validation/test ground truth sits beside it, training rows are the official train.
_SETS = (("Training", None), ("Validation", "val"), ("Test", "test"))
_GROUPINGS = "ISIC2018_Task3_Training_LesionGroupings.csv"


def _input_dir(part: str) -> str:
    return f"ISIC2018_Task3_{part}_Input"


def _gt_csv(root: Path, part: str) -> Path | None:
    """The ground-truth CSV of ``part``: beside the Input folder, or inside its unzipped GroundTruth
    folder."""
    name = f"ISIC2018_Task3_{part}_GroundTruth"
    for p in (root / f"{name}.csv", root / name / f"{name}.csv"):
        if p.is_file():
            return p
    return None


def _one_hot(row: list[str], cols: list[int], csv_name: str) -> tuple[str, str]:
    """(class, "") for a one-hot row, else ("", reason)."""
    hot: list[str] = []
    for cls, i in zip(CLASSES, cols, strict=True):
        raw = cell(row, i)
        try:
            v = float(raw)
        except ValueError:
            # One reason class for every malformed row (the detail stays in parentheses).
            return "", f"not one-hot in {csv_name} ({cls}='{raw}' is not a number)"
        if v == 1.0:
            hot.append(cls)
        elif v != 0.0:  # NaN lands here too
            return "", f"not one-hot in {csv_name} ({cls}={raw})"
    if len(hot) != 1:
        return "", f"not one-hot in {csv_name} ({len(hot)} classes set)"
    return hot[0], ""


class Isic2018Layout(Layout):
    name = "isic2018"
    dataset = "isic2018"
    label_source = "ISIC2018_Task3_Training_GroundTruth.csv"
    description = (
        "ISIC 2018 Task 3 (lesion diagnosis, challenge2018.isic-archive.com):\n"
        "  ISIC2018_Task3_Training_Input/ISIC_XXXXXXX.jpg\n"
        "  ISIC2018_Task3_Training_GroundTruth.csv   (or inside ISIC2018_Task3_Training_GroundTruth/)\n"
        "    header: image,MEL,NV,BCC,AKIEC,BKL,DF,VASC   one-hot floats (1.0/0.0)\n"
        "  optional: ISIC2018_Task3_{Validation,Test}_Input/ + ..._{Validation,Test}_GroundTruth.csv\n"
        "            (used as the official val/test), ISIC2018_Task3_Training_LesionGroupings.csv\n"
        "            (image,lesion_id,...: groups images of one lesion)\n"
        "Label = the column holding 1.0 (a row that is not one-hot is rejected); group = lesion_id from\n"
        "the groupings file, else the image itself. Split derived unless val/test ground truth exists."
    )

    def detect(self, root: Path) -> bool:
        return _gt_csv(root, "Training") is not None or (root / _input_dir("Training")).is_dir()

    def _lesions(self, root: Path) -> dict[str, str]:
        """image id -> lesion_id from the optional groupings file (root or the GroundTruth folder)."""
        for p in (root / _GROUPINGS, root / "ISIC2018_Task3_Training_GroundTruth" / _GROUPINGS):
            if p.is_file():
                header, rows = read_csv(p, "ISIC 2018 lesion groupings file")
                i_img = find_column(header, ("image",), p, self.name)
                i_les = find_column(header, ("lesion_id",), p, self.name)
                return {cell(r, i_img): cell(r, i_les) for r in rows if cell(r, i_img) and cell(r, i_les)}
        return {}

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        if _gt_csv(root, "Training") is None:
            raise UsageError(
                f"'{root}' has no ISIC2018_Task3_Training_GroundTruth.csv (nor "
                "ISIC2018_Task3_Training_GroundTruth/ holding it); the isic2018 layout reads labels from it"
            )
        held_out = any(_gt_csv(root, part) is not None for part, split in _SETS if split)
        lesions = self._lesions(root)
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for part, split in _SETS:
            csv_path = _gt_csv(root, part)
            if csv_path is None:
                continue
            split = split or ("train" if held_out else None)
            header, rows = read_csv(csv_path, f"ISIC 2018 {part.lower()} ground truth")
            i_img = find_column(header, ("image",), csv_path, self.name)
            cols = [find_column(header, (c,), csv_path, self.name) for c in CLASSES]
            folder = _input_dir(part)
            for row in rows:
                image = cell(row, i_img)
                if not image:
                    continue
                label, reason = _one_hot(row, cols, csv_path.name)
                labels = [label] if label else []
                group = lesions.get(image, image)
                hits = index.stem_matches(image, under=(folder,)) or index.stem_matches(image)
                if not hits:
                    reason = f"listed in {csv_path.name} but missing"
                    entries.append(Entry(f"{folder}/{image}.jpg", label, labels, group, split, reason))
                    continue
                for path in hits:
                    entries.append(Entry(path, label, labels, group, split, reason))
        return entries


LAYOUT = Isic2018Layout()

"""NIH ChestX-ray14 (frontal chest radiographs, 14 findings + "No Finding", multi-label)."""

from __future__ import annotations

import re
from pathlib import Path

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    optional_columns,
    read_csv,
    read_meta,
    split_labels,
    strip_ext,
)
from midol_cli.errors import UsageError

_CSVS = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
_SPLIT_FILES = (("train_val_list.txt", "train"), ("test_list.txt", "test"))
# images/ (Kaggle "sample" and some mirrors) or images_001/images/ ... images_012/images/ (NIH box).
_IMAGE_DIR = re.compile(r"^(images|images_\d+/images|images_\d+)/")


class ChestXray14Layout(Layout):
    name = "chestxray14"
    dataset = "chestxray14"
    label_source = _CSVS[0]
    multi_label = True
    description = (
        "NIH ChestX-ray14:\n"
        "  Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)\n"
        "    header: Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,\n"
        "            View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        "    (trailing comma; v2020 says 'Patient Sex'; columns are read by name)\n"
        "  images/<Image Index> or images_NNN/images/<Image Index>  (PNG, or DICOM with the same stem)\n"
        "  train_val_list.txt, test_list.txt   official split (val carved from train_val by patient)\n"
        "Labels = Finding Labels split on '|'; group = Patient ID. Metadata: sex (Patient Gender/Sex),\n"
        "age (Patient Age), view (View Position: PA/AP)."
    )

    def _csv(self, root: Path) -> Path | None:
        for name in _CSVS:
            if (root / name).is_file():
                return root / name
        return None

    def detect(self, root: Path) -> bool:
        return self._csv(root) is not None

    def _official(self, root: Path) -> dict[str, str]:
        """Image stem -> official split, from the list files that exist."""
        split_of: dict[str, str] = {}
        for fname, split in _SPLIT_FILES:
            p = root / fname
            if not p.is_file():
                continue
            try:
                lines = p.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError):
                raise UsageError(f"split list '{p}' is not readable UTF-8 text") from None
            for line in lines:
                if line.strip():
                    split_of[strip_ext(line.strip())] = split
        return split_of

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        csv_path = self._csv(root)
        if csv_path is None:
            raise UsageError(f"'{root}' has no {_CSVS[0]}; the chestxray14 layout reads labels from it")
        header, rows = read_csv(csv_path, "ChestX-ray14 labels file")
        i_img = find_column(header, ("Image Index",), csv_path, self.name)
        i_lab = find_column(header, ("Finding Labels",), csv_path, self.name)
        i_pid = find_column(header, ("Patient ID",), csv_path, self.name)
        i_meta = optional_columns(header, {"sex": ("Patient Gender", "Patient Sex"), "age": ("Patient Age",),
                                           "view": ("View Position",)})
        official = self._official(root)
        files = self.candidates(root, opts)
        index = FileIndex(files)
        entries: list[Entry] = []
        for row in rows:
            image = cell(row, i_img)
            if not image:
                continue
            labels = split_labels(cell(row, i_lab), "|")
            stem = strip_ext(image)
            # Patient ID is the part before "_" in the image name when the cell is empty.
            group = cell(row, i_pid) or stem.split("_", 1)[0]
            split = official.get(stem)
            label = "|".join(labels)
            meta = read_meta(row, i_meta)
            # Exact name first, else the same stem with another extension (.png listed, .dcm on
            # disk); copies under images*/ win over stray ones elsewhere.
            hits = index.by_name.get(image, []) or index.stem_matches(stem)
            hits = [h for h in hits if _IMAGE_DIR.match(h)] or hits
            if not hits:
                reason = f"listed in {csv_path.name} but missing"
                entries.append(Entry(f"images/{image}", label, labels, group, split, reason, meta))
                continue
            for path in hits:
                entries.append(Entry(path, label, labels, group, split, meta=meta))
        return entries


LAYOUT = ChestXray14Layout()

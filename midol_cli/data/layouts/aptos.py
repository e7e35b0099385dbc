"""APTOS 2019 Blindness Detection (fundus, diabetic-retinopathy grade 0-4)."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, FileIndex, Layout, LayoutOptions, cell, find_column, read_csv

_CSV = "train.csv"
_IMAGES = "train_images"
_GRADES = frozenset({"0", "1", "2", "3", "4"})


class AptosLayout(Layout):
    name = "aptos2019"
    dataset = "aptos2019"
    label_source = _CSV
    description = (
        "APTOS 2019 (Kaggle):\n"
        "  train.csv                 header: id_code,diagnosis  (diagnosis = DR grade 0-4)\n"
        "  train_images/<id_code>.png\n"
        "  test.csv + test_images/<id_code>.png   optional, unlabelled (kept for pre-training)\n"
        "Group = id_code (no patient id is published); no official split (derived)."
    )

    def detect(self, root: Path) -> bool:
        csv_path = root / _CSV
        if not csv_path.is_file() or not (root / _IMAGES).is_dir():
            return False
        try:
            with open(csv_path, encoding="utf-8-sig") as fh:
                header = [h.strip() for h in fh.readline().split(",")]
        except (OSError, UnicodeDecodeError):
            return False
        return "id_code" in header and "diagnosis" in header

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        csv_path = root / _CSV
        header, rows = read_csv(csv_path, "APTOS labels file")
        i_id = find_column(header, ("id_code",), csv_path, self.name)
        i_dx = find_column(header, ("diagnosis",), csv_path, self.name)
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for row in rows:
            id_code, grade = cell(row, i_id), cell(row, i_dx)
            if not id_code:
                continue
            reason = "" if grade in _GRADES else f"invalid diagnosis '{grade}' in {_CSV}"
            # Kaggle mirrors re-encode the images (.jpg, resized copies): match by id, not by name.
            hits = index.stem_matches(id_code, under=(_IMAGES,))
            if not hits:
                entries.append(
                    Entry(
                        f"{_IMAGES}/{id_code}.png",
                        grade,
                        [grade] if grade else [],
                        id_code,
                        None,
                        f"listed in {_CSV} but missing",
                    )
                )
                continue
            for path in hits:
                entries.append(Entry(path, grade, [grade] if grade else [], id_code, None, reason))
        entries += self._unlabelled_test(root, index)
        return entries

    @staticmethod
    def _unlabelled_test(root: Path, index: FileIndex) -> list[Entry]:
        """The competition's test.csv/test_images: known images without a grade (useful for pre-training)."""
        csv_path = root / "test.csv"
        if not csv_path.is_file():
            return []
        header, rows = read_csv(csv_path, "APTOS test list")
        i_id = find_column(header, ("id_code",), csv_path, "aptos2019")
        out = []
        for row in rows:
            id_code = cell(row, i_id)
            for path in index.stem_matches(id_code, under=("test_images",)) if id_code else []:
                out.append(Entry(path, "", [], id_code, None))
        return out


LAYOUT = AptosLayout()

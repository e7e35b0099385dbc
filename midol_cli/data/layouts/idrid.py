"""IDRiD part B (disease grading): fundus photographs, DR grade 0-4, official 413/103 split."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    listed_entries,
    read_csv,
    strip_ext,
)
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

_PART = "B. Disease Grading"
_IMAGES = "1. Original Images"
_TRUTH = "2. Groundtruths"
# (image folder, labels CSV, official split).
_SETS = (
    ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", "train"),
    ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", "test"),
)
_GRADES = frozenset({"0", "1", "2", "3", "4"})


class IdridLayout(Layout):
    name = "idrid"
    dataset = "idrid"
    label_source = _SETS[0][1]
    description = (
        "IDRiD, part B (IEEE DataPort):\n"
        "  B. Disease Grading/1. Original Images/a. Training Set/IDRiD_NNN.jpg   (413 images)\n"
        "  B. Disease Grading/1. Original Images/b. Testing Set/IDRiD_NNN.jpg    (103 images)\n"
        "  B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv\n"
        "  B. Disease Grading/2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv\n"
        "    header: 'Image name,Retinopathy grade,Risk of macular edema ' (trailing space and empty\n"
        "    trailing columns tolerated; names without extension)\n"
        "  (--data may be the folder holding 'B. Disease Grading', that folder itself, or the zip's\n"
        "   doubled 'B. Disease Grading/B. Disease Grading')\n"
        "Label = Retinopathy grade 0-4. Training and testing names repeat (IDRiD_001 in both), so the\n"
        "group is '<split>/<name>'. Official split: training -> train (val carved), testing -> test."
    )

    def _base(self, root: Path) -> Path | None:
        for base in (root / _PART / _PART, root / _PART, root):
            if (base / _TRUTH).is_dir() or (base / _IMAGES).is_dir():
                return base
        return None

    def detect(self, root: Path) -> bool:
        return self._base(root) is not None

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        base = self._base(root)
        if base is None:
            raise UsageError(
                f"'{root}' has no '{_PART}/{_TRUTH}' folder; the idrid layout reads grades from "
                "the CSVs in it"
            )
        prefix = "" if base == root else base.relative_to(root).as_posix() + "/"
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for folder, csv_name, split in _SETS:
            csv_path = base / _TRUTH / csv_name
            if not csv_path.is_file():
                raise UsageError(
                    f"'{prefix}{_TRUTH}/{csv_name}' is missing under '{root}'; the idrid layout needs the "
                    "training and testing label CSVs"
                )
            header, rows = read_csv(csv_path, "IDRiD grading labels file")
            i_name = find_column(header, ("Image name", "Image"), csv_path, self.name)
            i_grade = find_column(header, ("Retinopathy grade",), csv_path, self.name)
            image_dir = f"{prefix}{_IMAGES}/{folder}"
            for row in rows:
                name = cell(row, i_name)
                if not name:
                    continue
                grade = cell(row, i_grade)
                # Some copies write grades as floats ("2.0").
                if grade.endswith(".0"):
                    grade = grade[:-2]
                labels = [grade] if grade else []
                stem = strip_ext(name)
                group = f"{split}/{stem}"
                reason = "" if grade in _GRADES else f"invalid Retinopathy grade '{grade}' in {csv_name}"
                hits = index.stem_matches(stem, under=(image_dir,))
                entries += listed_entries(
                    hits, f"{image_dir}/{stem}.jpg", grade, labels, group, split, reason, csv_name
                )
        return entries


LAYOUT = IdridLayout()

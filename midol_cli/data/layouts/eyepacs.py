"""EyePACS (Kaggle Diabetic Retinopathy Detection 2015): fundus photographs, DR level 0-4."""

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
    listed_entries,
    read_csv,
    strip_ext,
)
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

# trainLabels.csv; the resized Kaggle mirror ships trainLabels_cropped.csv (plus index columns).
_TRAIN_CSVS = ("trainLabels.csv", "trainLabels_cropped.csv")
# Released after the competition: test labels with a Public/Private Usage column.
_TEST_CSV = "retinopathy_solution.csv"
_GRADES = frozenset({"0", "1", "2", "3", "4"})
_EYE = re.compile(r"^(\d+)_(left|right)$", re.IGNORECASE)


class EyepacsLayout(Layout):
    name = "eyepacs"
    dataset = "eyepacs"
    label_source = _TRAIN_CSVS[0]
    description = (
        "EyePACS / Kaggle Diabetic Retinopathy Detection (2015):\n"
        "  trainLabels.csv   header: image,level   (level = DR grade 0-4; trainLabels_cropped.csv too)\n"
        "  train/<id>_{left,right}.jpeg            (re-encoded mirrors matched by name without extension)\n"
        "  test/<id>_{left,right}.jpeg + retinopathy_solution.csv (image,level,Usage)   optional\n"
        "Group = the numeric id (both eyes of a patient stay together). Without the solution file the\n"
        "split is derived and test/ images are kept unlabelled; with it, train -> train (val carved by\n"
        "patient) and test -> test (official). Metadata: eye (left/right, from the name)."
    )

    def _train_csv(self, root: Path) -> Path | None:
        return next((root / c for c in _TRAIN_CSVS if (root / c).is_file()), None)

    def detect(self, root: Path) -> bool:
        return self._train_csv(root) is not None

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        csv_path = self._train_csv(root)
        if csv_path is None:
            raise UsageError(
                f"'{root}' has no {_TRAIN_CSVS[0]}; the eyepacs layout reads the DR level from it"
            )
        index = FileIndex(self.candidates(root, opts))
        solution = root / _TEST_CSV
        official = solution.is_file()
        entries = self._scan_csv(csv_path, "train", index, "train" if official else None)
        if official:
            entries += self._scan_csv(solution, "test", index, "test")
        else:
            # The competition's test images without their labels: known files, kept unlabelled.
            for path in sorted(p for p in index.paths if p.startswith("test/")):
                m = _EYE.match(strip_ext(path.rsplit("/", 1)[-1]))
                entries.append(Entry(path, "", [], m.group(1) if m else strip_ext(path), None,
                                     meta={"eye": m.group(2).lower()} if m else {}))
        return entries

    def _scan_csv(self, csv_path: Path, folder: str, index: FileIndex, split: str | None) -> list[Entry]:
        header, rows = read_csv(csv_path, "EyePACS labels file")
        i_image = find_column(header, ("image",), csv_path, self.name)
        i_level = find_column(header, ("level",), csv_path, self.name)
        out: list[Entry] = []
        for row in rows:
            image = cell(row, i_image)
            if not image:
                continue
            level = cell(row, i_level)
            labels = [level] if level else []
            m = _EYE.match(image)
            group = m.group(1) if m else image
            reason = "" if level in _GRADES else f"invalid level '{level}' in {csv_path.name}"
            hits = index.stem_matches(image, under=(folder,)) or index.stem_matches(image)
            found = listed_entries(
                hits, f"{folder}/{image}.jpeg", level, labels, group, split, reason, csv_path.name
            )
            if m:  # <id>_left / <id>_right: the eye is a subgroup
                for e in found:
                    e.meta["eye"] = m.group(2).lower()
            out += found
        return out


LAYOUT = EyepacsLayout()

"""Messidor-2 (ADCIS images + adjudicated grades): fundus photographs, DR grade 0-4, exam pairs."""

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

_IMAGE_DIRS = ("IMAGES", "images")
# The adjudicated grades (Krause et al. 2018, Kaggle "messidor2-dr-grades").
_GRADES_CSV = "messidor_data.csv"
# ADCIS's exam list: one "left;right" pair of image names per line.
_PAIRS_CSV = "messidor-2.csv"
_GRADES = frozenset({"0", "1", "2", "3", "4"})
# Messidor-Original names: <date>_<exam>_<nnnn>_PP; public loaders group on <date>_<exam>.
_EXAM = re.compile(r"^(\d{8}_\d+)_")


def _norm_grade(v: str) -> str:
    return v[:-2] if v.endswith(".0") else v


class Messidor2Layout(Layout):
    name = "messidor2"
    dataset = "messidor2"
    label_source = _GRADES_CSV
    description = (
        "Messidor-2 (images from ADCIS, grades from Kaggle google-brain/messidor2-dr-grades):\n"
        "  IMAGES/<name>.{png,JPG,tif,...}   (mixed extensions; matched by name without extension)\n"
        "  messidor_data.csv   header: image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "    (another single CSV at the root with these columns is accepted)\n"
        "  messidor-2.csv      optional ADCIS exam list, 'left;right' image names per line\n"
        "Label = adjudicated_dr_grade 0-4; ungradable images (adjudicated_gradable = 0) are rejected.\n"
        "Group = the exam (both eyes): from messidor-2.csv when present, else the shared\n"
        "<date>_<exam> prefix of Messidor-Original names (20051020_43808_0100_PP), else the image id.\n"
        "No official split (derived). Metadata: eye (left/right, from messidor-2.csv)."
    )

    def _images(self, root: Path) -> str | None:
        return next((d for d in _IMAGE_DIRS if (root / d).is_dir()), None)

    def _grades_csv(self, root: Path) -> Path | None:
        if (root / _GRADES_CSV).is_file():
            return root / _GRADES_CSV
        others = sorted(p for p in root.glob("*.csv") if p.is_file() and p.name != _PAIRS_CSV)
        for p in others:
            try:
                with open(p, encoding="utf-8-sig") as fh:
                    if "adjudicated_dr_grade" in fh.readline():
                        return p
            except (OSError, UnicodeDecodeError):
                continue
        # A single unknown CSV is the grades file with a renamed column: let find_column say which.
        return others[0] if len(others) == 1 else None

    def detect(self, root: Path) -> bool:
        if self._images(root) is None:
            return False
        return (root / _PAIRS_CSV).is_file() or (root / _GRADES_CSV).is_file()

    def _pairs(self, root: Path) -> tuple[dict[str, str], dict[str, str]]:
        """(image stem -> exam id (the first stem of its line), image stem -> eye), from messidor-2.csv
        when present; its lines list the left eye's image, then the right eye's."""
        path = root / _PAIRS_CSV
        if not path.is_file():
            return {}, {}
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError):
            raise UsageError(f"exam list '{path}' is not readable UTF-8 text") from None
        exam: dict[str, str] = {}
        eye: dict[str, str] = {}
        for line in lines:
            names = [strip_ext(t.strip()) for t in re.split(r"[;,\t]", line) if t.strip()]
            if len(names) < 2 or [n.lower() for n in names[:2]] == ["left", "right"]:
                continue
            for n in names:
                exam[n.lower()] = names[0]
            if len(names) == 2:
                eye[names[0].lower()], eye[names[1].lower()] = "left", "right"
        return exam, eye

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        images = self._images(root)
        if images is None:
            raise UsageError(
                f"'{root}' has no IMAGES folder; the messidor2 layout expects IMAGES/ and {_GRADES_CSV}"
            )
        csv_path = self._grades_csv(root)
        if csv_path is None:
            raise UsageError(
                f"'{root}' has no {_GRADES_CSV} (image_id,adjudicated_dr_grade,adjudicated_dme,"
                "adjudicated_gradable); download the adjudicated grades and put the CSV next to IMAGES/"
            )
        header, rows = read_csv(csv_path, "Messidor-2 grades file")
        i_id = find_column(header, ("image_id", "id_code", "image"), csv_path, self.name)
        i_grade = find_column(header, ("adjudicated_dr_grade", "diagnosis"), csv_path, self.name)
        i_gradable = header.index("adjudicated_gradable") if "adjudicated_gradable" in header else None
        exam, eye = self._pairs(root)
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for row in rows:
            image_id = cell(row, i_id)
            if not image_id:
                continue
            stem = strip_ext(image_id)
            grade = _norm_grade(cell(row, i_grade))
            labels = [grade] if grade else []
            m = _EXAM.match(stem)
            group = exam.get(stem.lower()) or (m.group(1) if m else stem)
            if _norm_grade(cell(row, i_gradable)) == "0":
                reason = f"ungradable (adjudicated_gradable = 0 in {csv_path.name})"
            elif grade not in _GRADES:
                reason = f"invalid adjudicated_dr_grade '{grade}' in {csv_path.name}"
            else:
                reason = ""
            # The CSV says ".jpg" where the release has ".JPG" (and ".png" for ".tif" re-encodings).
            hits = index.stem_matches(stem, under=(images,))
            found = listed_entries(
                hits, f"{images}/{image_id}", grade, labels, group, None, reason, csv_path.name
            )
            if stem.lower() in eye:
                for e in found:
                    e.meta["eye"] = eye[stem.lower()]
            entries += found
        return entries


LAYOUT = Messidor2Layout()

"""BreakHis (breast histopathology, 82 patients, 4 magnifications; everything comes from the path)."""

from __future__ import annotations

import re
from pathlib import Path

from midol_cli.data.layouts import Entry, Layout, LayoutOptions
from midol_cli.data.layouts._switches import switches

BINARY: tuple[str, ...] = ("benign", "malignant")
# Subtype folders as the archive spells them, benign first.
SUBTYPES: tuple[str, ...] = (
    "adenosis",
    "fibroadenoma",
    "phyllodes_tumor",
    "tubular_adenoma",
    "ductal_carcinoma",
    "lobular_carcinoma",
    "mucinous_carcinoma",
    "papillary_carcinoma",
)
MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
_SPEC = {
    "magnification": ("all", (*MAGNIFICATIONS, "all")),
    "label": ("subtype", ("subtype", "binary")),
}
# Where {benign,malignant}/SOB may sit below the root (the Kaggle copy nests BreaKHis_v1 twice).
_BASES = (
    "BreaKHis_v1/histology_slides/breast",
    "BreaKHis_v1/BreaKHis_v1/histology_slides/breast",
    "histology_slides/breast",
    "breast",
    "",
)
# Patient folder "SOB_B_A_14-22549AB": class letter, tumour type, then the patient token.
_PATIENT_DIR = re.compile(r"^SOB_[BM]_[A-Z]+_(\d+-[0-9A-Za-z]+)$")
_MAG = re.compile(r"^(\d+)[xX]$")


def parse_path(path: str) -> tuple[str, str, str, str] | None:
    """``.../{benign,malignant}/SOB/<subtype>/SOB_<B|M>_<T>_14-<id>/<mag>X/<file>`` ->
    (class, subtype, patient token, magnification such as "40X"); None for any other path."""
    parts = path.split("/")
    if len(parts) < 6 or parts[-5] != "SOB" or parts[-6].lower() not in BINARY:
        return None
    mag = _MAG.match(parts[-2])
    if mag is None:
        return None
    m = _PATIENT_DIR.match(parts[-3])
    # A renamed patient folder is still one patient: its whole name is the group.
    patient = m.group(1) if m else parts[-3]
    return parts[-6].lower(), parts[-4], patient, f"{mag.group(1)}X"


class BreakhisLayout(Layout):
    name = "breakhis"
    dataset = "breakhis"
    label_source = "the folder path"
    description = (
        "BreakHis v1 (Spanhol et al., UFPR), no CSV: class, subtype, patient and magnification\n"
        "come from the path:\n"
        "  BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/\n"
        "      SOB_<B|M>_<TYPE>_14-<id>/{40X,100X,200X,400X}/SOB_M_DC-14-11951-100-002.png\n"
        "  subtypes: adenosis fibroadenoma phyllodes_tumor tubular_adenoma (benign),\n"
        "            ductal_carcinoma lobular_carcinoma mucinous_carcinoma papillary_carcinoma (malignant)\n"
        "  (--data may be any folder above {benign,malignant}/)\n"
        "Options: label=subtype (default, 8 classes) or binary (benign/malignant);\n"
        "magnification=all (default) or 40X, 100X, 200X, 400X (other magnifications are rejected rows).\n"
        "Group = patient (the 14-<id> token, 82 patients); no official split (derived by patient)."
    )

    def detect(self, root: Path) -> bool:
        return any((root / base / cls / "SOB").is_dir() for base in _BASES for cls in BINARY)

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        sw = switches(opts.extra, _SPEC, self.name)
        wanted, by = sw["magnification"], sw["label"]
        entries: list[Entry] = []
        for path in self.candidates(root, opts):
            parsed = parse_path(path)
            if parsed is None:
                continue
            cls, subtype, patient, mag = parsed
            label = cls if by == "binary" else subtype
            reason = ""
            if wanted != "all" and mag != wanted:
                reason = f"magnification {mag} not selected (magnification={wanted})"
            entries.append(Entry(path, label, [label], patient, None, reason))
        return entries


LAYOUT = BreakhisLayout()

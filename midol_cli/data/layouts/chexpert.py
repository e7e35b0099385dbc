"""CheXpert (Stanford): chest radiographs, five competition findings, uncertain labels."""

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
)
from midol_cli.data.layouts._switches import BOOL, switches
from midol_cli.errors import UsageError

# The five findings of the CheXpert competition, as the CSV header spells them.
COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
# Label of an image with none of the five findings positive, so it stays a labelled
# (all-negative) row; it is not a task class (as ChestX-ray14's "No Finding").
NONE_POSITIVE = "No Finding"
POLICIES: tuple[str, ...] = ("u-ones", "u-zeros", "ignore")
_SPEC = {"uncertainty": ("u-ones", POLICIES), "frontal_only": ("true", BOOL)}
# Small (downsampled) and full-resolution releases; the CSV's Path column starts with the folder name.
_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_FOLDER_RE = re.compile(r"^CheXpert-v1\.0(-small)?$", re.IGNORECASE)
# (CSV, official split): the published validation set is the benchmark's test set.
_CSVS = (("train.csv", "train"), ("valid.csv", "test"))
_PATIENT = re.compile(r"(patient\d+)")
_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": 0}


def _header(csv_path: Path) -> list[str]:
    try:
        with open(csv_path, encoding="utf-8-sig") as fh:
            return [h.strip() for h in fh.readline().split(",")]
    except (OSError, UnicodeDecodeError):
        return []


class ChexpertLayout(Layout):
    name = "chexpert"
    dataset = "chexpert"
    label_source = "train.csv/valid.csv"
    multi_label = True
    description = (
        "CheXpert v1.0 (Stanford AIMI), the small or the full-size release:\n"
        "  CheXpert-v1.0-small/train.csv, valid.csv\n"
        "    header: Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,\n"
        "            Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,\n"
        "            Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices\n"
        "  CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg\n"
        "  (--data may be the folder holding CheXpert-v1.0-small/ or that folder itself; Path values\n"
        "   start with 'CheXpert-v1.0-small/' and are resolved against it)\n"
        "Labels = the five competition findings (Atelectasis, Cardiomegaly, Consolidation, Edema,\n"
        "Pleural Effusion) read 1.0 positive, 0.0 or blank negative, -1.0 uncertain; an image with none\n"
        "positive is labelled 'No Finding'. Options: uncertainty=u-ones (default; -1 -> positive),\n"
        "u-zeros (-1 -> negative) or ignore (images with any -1 among the five are rejected);\n"
        "frontal_only=true (default; lateral views rejected, from the Frontal/Lateral column, else the\n"
        "file name). Group = patient (from Path). Official split: train.csv -> train (val carved by\n"
        "patient), valid.csv -> test."
    )

    def _base(self, root: Path) -> Path | None:
        """The folder holding train.csv/valid.csv: a release folder under ``root``, else ``root``."""
        for base in [root / f for f in _FOLDERS] + [root]:
            if any((base / c).is_file() for c, _ in _CSVS):
                return base
        return None

    def detect(self, root: Path) -> bool:
        base = self._base(root)
        if base is None:
            return False
        header = _header(base / _CSVS[0][0]) or _header(base / _CSVS[1][0])
        return "Path" in header and any(c in header for c in COMPETITION)

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        sw = switches(opts.extra, _SPEC, self.name)
        policy, frontal_only = sw["uncertainty"], sw["frontal_only"] == "true"
        base = self._base(root)
        if base is None:
            raise UsageError(
                f"'{root}' has no CheXpert-v1.0-small/train.csv (nor train.csv); the chexpert layout reads "
                "labels from train.csv and valid.csv"
            )
        prefix = "" if base == root else f"{base.name}/"
        for csv_name, _split in _CSVS:
            if not (base / csv_name).is_file():
                raise UsageError(
                    f"'{prefix}{csv_name}' is missing under '{root}'; the chexpert layout needs both "
                    "train.csv and valid.csv (the official split)"
                )
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for csv_name, split in _CSVS:
            entries += self._scan_csv(base / csv_name, split, prefix, index, policy, frontal_only)
        return entries

    def _scan_csv(
        self, csv_path: Path, split: str, prefix: str, index: FileIndex, policy: str, frontal_only: bool
    ) -> list[Entry]:
        header, rows = read_csv(csv_path, "CheXpert labels file")
        i_path = find_column(header, ("Path",), csv_path, self.name)
        i_find = {f: find_column(header, (f,), csv_path, self.name) for f in COMPETITION}
        # Optional: older copies lack it, and the file name says the view as well.
        i_view = header.index("Frontal/Lateral") if "Frontal/Lateral" in header else None
        i_meta = optional_columns(header, {"sex": ("Sex",), "age": ("Age",), "view": ("AP/PA",)})
        out: list[Entry] = []
        for row in rows:
            raw_path = cell(row, i_path).replace("\\", "/")
            if not raw_path:
                continue
            parts = [p for p in raw_path.split("/") if p not in ("", ".")]
            inner = "/".join(parts[1:]) if parts and _FOLDER_RE.match(parts[0]) else "/".join(parts)
            # Relative to the release folder first; the CSV's own path when it is relative to root.
            path = next((c for c in (prefix + inner, "/".join(parts)) if c in index.paths), prefix + inner)
            m = _PATIENT.search(raw_path)
            group = m.group(1) if m else "/".join(parts[:-2]) or raw_path
            positives: list[str] = []
            reason = ""
            for finding, idx in i_find.items():
                value = _VALUES.get(cell(row, idx))
                if value is None:
                    reason = f"invalid value '{cell(row, idx)}' in column '{finding}' of {csv_path.name}"
                    break
                if value == -1 and policy == "ignore":
                    reason = "uncertain competition label (uncertainty=ignore)"
                if value == 1 or (value == -1 and policy == "u-ones"):
                    positives.append(finding)
            labels = sorted(positives) or [NONE_POSITIVE]
            if not reason and frontal_only:
                view = cell(row, i_view).lower()
                if view not in ("frontal", "lateral"):
                    view = "lateral" if "lateral" in parts[-1].lower() else "frontal"
                if view == "lateral":
                    reason = "lateral view (frontal_only=true)"
            if not reason and path not in index.paths:
                reason = f"listed in {csv_path.name} but missing"
            meta = read_meta(row, i_meta)
            if cell(row, i_view).lower() == "lateral":
                meta["view"] = "lateral"  # AP/PA is empty for lateral films
            out.append(Entry(path, "|".join(labels), labels, group, split, reason, meta))
        return out


LAYOUT = ChexpertLayout()

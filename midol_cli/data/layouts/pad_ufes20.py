"""PAD-UFES-20 (smartphone clinical images of skin lesions, 6 diagnoses, several per patient)."""

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
    strip_ext,
)
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

_CSV = "metadata.csv"
_IMAGES = "images"
CLASSES: tuple[str, ...] = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
# The paper groups Bowen's disease with SCC; a metadata file that still says BOD means SCC.
_ALIASES = {"BOD": "SCC"}
_PATIENT = re.compile(r"^(PAT_\d+)_")


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return [h.strip() for h in fh.readline().split(",")]
    except (OSError, UnicodeDecodeError):
        return []


class PadUfes20Layout(Layout):
    name = "pad-ufes-20"
    dataset = "pad-ufes-20"
    label_source = _CSV
    description = (
        "PAD-UFES-20 (Pacheco et al., Mendeley Data zr7vgbcyr2):\n"
        "  metadata.csv   columns read by name: patient_id, lesion_id, diagnostic, img_id\n"
        "                 (also smoke, ..., fitspatrick [sic], region, ..., biopsed: never used)\n"
        "  images/PAT_<pid>_<lesion>_<n>.png   (or images/imgs_part_{1,2,3}/...)\n"
        "Label = diagnostic: ACK, BCC, MEL, NEV, SCC, SEK (BOD is counted as SCC, as in the paper);\n"
        "group = patient_id; no official split (derived, grouped by patient)."
    )

    def detect(self, root: Path) -> bool:
        header = _header(root / _CSV)
        return "img_id" in header and "diagnostic" in header

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        csv_path = root / _CSV
        if not csv_path.is_file():
            raise UsageError(f"'{root}' has no {_CSV}; the pad-ufes-20 layout reads diagnoses from it")
        header, rows = read_csv(csv_path, "PAD-UFES-20 metadata file")
        i_img = find_column(header, ("img_id",), csv_path, self.name)
        i_dx = find_column(header, ("diagnostic",), csv_path, self.name)
        i_pid = find_column(header, ("patient_id",), csv_path, self.name)
        # Reported on as subgroups, never used as features. The release spells it "fitspatrick".
        i_meta = optional_columns(
            header,
            {
                "fitzpatrick": ("fitspatrick", "fitzpatrick"),
                "region": ("region",),
                "age": ("age",),
                "sex": ("gender",),
            },
        )
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for row in rows:
            image = cell(row, i_img)
            if not image:
                continue
            raw = cell(row, i_dx)
            dx = _ALIASES.get(raw.upper(), raw.upper())
            if dx in CLASSES:
                reason = ""
            else:
                dx, reason = (
                    "",
                    (f"unknown diagnostic '{raw}' in {_CSV}" if raw else f"empty diagnostic in {_CSV}"),
                )
            m = _PATIENT.match(image)
            group = cell(row, i_pid) or (m.group(1) if m else image)
            labels = [dx] if dx else []
            meta = read_meta(row, i_meta)
            # Exact name first (under images/ before stray copies), else a re-encoded copy with the same stem.
            hits = index.by_name.get(image, []) or index.stem_matches(strip_ext(image))
            hits = [h for h in hits if h.startswith(f"{_IMAGES}/")] or hits
            if not hits:
                entries.append(
                    Entry(
                        f"{_IMAGES}/{image}", dx, labels, group, None, f"listed in {_CSV} but missing", meta
                    )
                )
                continue
            for path in hits:
                entries.append(Entry(path, dx, labels, group, None, reason, meta))
        return entries


LAYOUT = PadUfes20Layout()

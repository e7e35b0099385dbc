"""OCT2017 (Kermany et al.): retinal OCT B-scans in CNV / DME / DRUSEN / NORMAL folders."""

from __future__ import annotations

import re
from pathlib import Path

from midol_cli.data.layouts import SPLIT_ALIASES, Entry, Layout, LayoutOptions

# The Kaggle archive names the top folder "OCT2017 " (trailing space); Mendeley uses "OCT2017".
_BASES = ("OCT2017", "OCT2017 ")
_CLASSES = frozenset({"CNV", "DME", "DRUSEN", "NORMAL"})
_NAME = re.compile(r"^[A-Za-z]+-([^-]+)-[^-]+$")


def _is_split_root(folder: Path) -> bool:
    """A folder holding train/ or test/ with at least one of the four class folders."""
    for split in ("train", "test"):
        d = folder / split
        if d.is_dir() and any((d / c).is_dir() for c in _CLASSES):
            return True
    return False


class Oct2017Layout(Layout):
    name = "oct2017"
    dataset = "oct2017"
    label_source = "class folders"
    description = (
        "OCT2017 (Kermany, Mendeley/Kaggle):\n"
        "  OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg\n"
        "  (the root may also be the OCT2017 folder itself; a val/ folder is used if present)\n"
        "Label = class folder; group = patient (second '-' token); official split = train/test,\n"
        "val carved out of train by patient."
    )

    def _bases(self, root: Path) -> list[str]:
        found = [b for b in _BASES if (root / b).is_dir() and _is_split_root(root / b)]
        if found:
            return found
        return [""] if _is_split_root(root) else []

    def detect(self, root: Path) -> bool:
        return bool(self._bases(root))

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        bases = self._bases(root)
        entries: list[Entry] = []
        for path in self.candidates(root, opts):
            parts = path.split("/")
            for base in bases:
                rest = parts[1:] if base else parts
                if base and parts[0] != base:
                    continue
                # <split>/<CLASS>/<file>; deeper nesting is not part of this dataset.
                if len(rest) != 3 or rest[0].lower() not in SPLIT_ALIASES:
                    continue
                label = rest[1]
                stem = rest[2].rsplit(".", 1)[0]
                m = _NAME.match(stem)
                group = m.group(1) if m else stem
                entries.append(Entry(path, label, [label], group, SPLIT_ALIASES[rest[0].lower()]))
                break
        return entries


LAYOUT = Oct2017Layout()

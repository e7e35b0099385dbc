"""NCT-CRC-HE-100K (colorectal histology tiles, 9 tissue classes) and its CRC-VAL-HE-7K test set."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, Layout, LayoutOptions

_CLASSES = frozenset({"ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"})
# Training folders (no official split inside) and the external test folder.
_TRAIN_BASES = ("NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM")
_TEST_BASES = ("CRC-VAL-HE-7K",)


def _has_classes(folder: Path, at_least: int = 1) -> bool:
    return folder.is_dir() and sum((folder / c).is_dir() for c in _CLASSES) >= at_least


class NctCrcLayout(Layout):
    name = "nct-crc"
    dataset = "nct-crc"
    label_source = "class folders"
    description = (
        "NCT-CRC-HE-100K (Kather et al., Zenodo):\n"
        "  NCT-CRC-HE-100K/<CLASS>/<CLASS>-<8 letters>.tif   CLASS in ADI BACK DEB LYM MUC MUS NORM STR TUM\n"
        "  CRC-VAL-HE-7K/<CLASS>/...   optional: used as the official test split\n"
        "  (the root may also be the NCT-CRC-HE-100K folder itself)\n"
        "Label = class folder; group = the tile's own id (no patient in the names); train/val derived."
    )

    def _bases(self, root: Path) -> list[tuple[str, str | None]]:
        bases: list[tuple[str, str | None]] = [(b, None) for b in _TRAIN_BASES if _has_classes(root / b)]
        bases += [(b, "test") for b in _TEST_BASES if _has_classes(root / b)]
        if not bases and _has_classes(root, at_least=2):
            bases = [("", None)]
        return bases

    def detect(self, root: Path) -> bool:
        return bool(self._bases(root))

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        bases = self._bases(root)
        entries: list[Entry] = []
        for path in self.candidates(root, opts):
            parts = path.split("/")
            for base, split in bases:
                rest = parts[1:] if base else parts
                if (base and parts[0] != base) or len(rest) != 2:
                    continue
                label = rest[0]
                entries.append(Entry(path, label, [label], rest[1].rsplit(".", 1)[0], split))
                break
        return entries


LAYOUT = NctCrcLayout()

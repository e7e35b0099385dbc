"""OCTID (Waterloo OCT image database): retinal OCT B-scans in one folder per diagnosis."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, Layout, LayoutOptions, strip_ext
from midol_cli.data.layouts._switches import switches

# Canonical class -> folder spellings seen in the per-class archives and their mirrors
# (the archive of the AMD scans is spelled "AMRD"), compared lower-case without spaces/_/-.
_ALIASES: dict[str, tuple[str, ...]] = {
    "normal": ("normal",),
    "AMD": ("amd", "armd", "amrd", "agerelatedmaculardegeneration"),
    "CSR": ("csr", "cscr", "centralserousretinopathy", "centralserouschorioretinopathy"),
    "DR": ("dr", "diabeticretinopathy"),
    "MH": ("mh", "macularhole"),
}
CLASSES: tuple[str, ...] = tuple(_ALIASES)
_BY_KEY = {alias: cls for cls, aliases in _ALIASES.items() for alias in aliases}
_BASES = ("OCTID", "")


def class_of(folder: str) -> str | None:
    """The OCTID class a folder name stands for ("AMRD" -> "AMD", "Macular Hole" -> "MH"), else None."""
    key = "".join(ch for ch in folder.lower() if ch not in " _-")
    return _BY_KEY.get(key)


def _class_dirs(folder: Path) -> int:
    try:
        return len({class_of(d.name) for d in folder.iterdir() if d.is_dir()} - {None})
    except OSError:
        return 0


class OctidLayout(Layout):
    name = "octid"
    dataset = "octid"
    label_source = "class folders"
    description = (
        "OCTID (Gholami et al., University of Waterloo), one folder per class:\n"
        "  [OCTID/]{NORMAL,AMRD,CSR,DR,MH}/<image>.jpeg   (any depth below the class folder)\n"
        "  folder spellings accepted: normal; AMD/ARMD/AMRD; CSR/CSCR; DR/Diabetic Retinopathy;\n"
        "  MH/Macular Hole (case-insensitive)\n"
        "Label = normal, AMD, CSR, DR or MH; group = the image itself (no patient ids are published);\n"
        "no official split (derived, label-stratified)."
    )

    def _bases(self, root: Path) -> list[str]:
        return [b for b in _BASES if _class_dirs(root / b if b else root) >= 3]

    def detect(self, root: Path) -> bool:
        return bool(self._bases(root))

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        bases = self._bases(root)
        entries: list[Entry] = []
        for path in self.candidates(root, opts):
            parts = path.split("/")
            for base in bases:
                rest = parts[1:] if base else parts
                if (base and parts[0] != base) or len(rest) < 2:
                    continue
                label = class_of(rest[0])
                if label is None:
                    continue
                entries.append(Entry(path, label, [label], strip_ext(path), None))
                break
        return entries


LAYOUT = OctidLayout()

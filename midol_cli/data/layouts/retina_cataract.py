"""Cataract / "Retina" dataset (Kaggle jr2ngb/cataractdataset): fundus photographs in 4 class folders."""

from __future__ import annotations

import re
from pathlib import Path

from midol_cli.data.layouts import Entry, Layout, LayoutOptions, has_image_files, strip_ext
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

# Folder names of the release: a numeric prefix, then the class name.
_CLASS_DIR = re.compile(r"^\d+_(.+)$")
KNOWN_CLASSES: tuple[str, ...] = ("normal", "cataract", "glaucoma", "retina_disease")
_BASES = ("dataset", "")


def class_name(folder: str) -> str | None:
    """``1_normal`` -> ``normal``; None for a folder without the ``N_`` prefix."""
    m = _CLASS_DIR.match(folder)
    return m.group(1) if m else None


class RetinaCataractLayout(Layout):
    name = "retina-cataract"
    dataset = "retina"
    label_source = "class folders"
    description = (
        "Cataract dataset ('Retina', Kaggle jr2ngb/cataractdataset), one folder per class:\n"
        "  dataset/1_normal/*.png  dataset/2_cataract/*.png  dataset/2_glaucoma/*.png\n"
        "  dataset/3_retina_disease/*.png\n"
        "  (--data may be the folder holding dataset/ or dataset/ itself; other N_<class> folders\n"
        "   are accepted as classes too)\n"
        "Label = folder name without its 'N_' prefix (normal, cataract, glaucoma, retina_disease).\n"
        "No patient id is published: group = the image's own path. No official split (derived)."
    )

    def _base(self, root: Path) -> str | None:
        """'dataset/' or '' (the root itself): the folder holding at least two known class folders."""
        for base in _BASES:
            folder = root / base if base else root
            try:
                subdirs = [d for d in folder.iterdir() if d.is_dir()]
            except OSError:
                continue
            known = [d for d in subdirs if class_name(d.name) in KNOWN_CLASSES]
            if len(known) >= 2 and any(has_image_files(d) for d in known):
                return f"{base}/" if base else ""
        return None

    def detect(self, root: Path) -> bool:
        return self._base(root) is not None

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        base = self._base(root)
        if base is None:
            raise UsageError(
                f"'{root}' has no class folders 1_normal, 2_cataract, 2_glaucoma, 3_retina_disease "
                "(directly or under dataset/); the retina-cataract layout reads labels from their names"
            )
        entries: list[Entry] = []
        for path in self.candidates(root, opts):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            label = class_name(parts[0]) if len(parts) > 1 else None
            if label:
                entries.append(Entry(path, label, [label], strip_ext(path), None))
        return entries


LAYOUT = RetinaCataractLayout()

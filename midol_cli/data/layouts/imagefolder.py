"""Generic class-folder layout: ``<class>/<image>``, optionally under train/val/test."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import SPLIT_ALIASES, Entry, Layout, LayoutOptions, has_image_files, strip_ext


class ImageFolderLayout(Layout):
    name = "imagefolder"
    dataset = ""  # the raw folder's name
    label_source = "class folders"
    description = (
        "One folder per class (torchvision ImageFolder):\n"
        "  <class>/<any/sub/path>/<image>\n"
        "or with an official split on top:\n"
        "  {train,val,test}/<class>/<image>     (valid/validation/testing accepted)\n"
        "Images directly in the root are kept unlabelled. Group = the file's own path."
    )

    def detect(self, root: Path) -> bool:
        try:
            subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:
            return False
        return any(has_image_files(d) for d in subdirs)

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        files = self.candidates(root, opts)
        top = {f.split("/", 1)[0] for f in files if "/" in f}
        # Top-level folders are splits only if ALL of them are split names, so a class
        # that happens to be called "test" among real classes stays a class.
        by_split = bool(top) and all(t.lower() in SPLIT_ALIASES for t in top)
        entries: list[Entry] = []
        for path in files:
            parts = path.split("/")
            split = None
            if by_split and len(parts) > 1:
                split = SPLIT_ALIASES[parts[0].lower()]
                parts = parts[1:]
            label = parts[0] if len(parts) > 1 else ""
            entries.append(Entry(path, label, [label] if label else [], strip_ext(path), split))
        return entries


LAYOUT = ImageFolderLayout()

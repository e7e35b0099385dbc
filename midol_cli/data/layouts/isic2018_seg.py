"""ISIC 2018 task 1 (lesion segmentation): dermoscopy JPEGs with one binary mask PNG each.

Images live in ``ISIC2018_Task1-2_<Split>_Input/`` and their masks in
``ISIC2018_Task1_<Split>_GroundTruth/`` as ``<image id>_segmentation.png`` (0 = background,
255 = lesion). The mask of an image follows from its path alone (``mask_path``), so
manifests keep only image rows; ground-truth files are declared auxiliary and never become
rows of their own.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from midol_cli.data.layouts import Entry, Layout, LayoutOptions
from midol_cli.errors import UsageError

LABEL = "lesion"
MASK_SUFFIX = "_segmentation.png"
# Official split -> (input folder, task-1 ground-truth folder), as the ISIC archive names them.
FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
_INPUT_TO_GT = {inp: gt for inp, gt in FOLDERS.values()}
# Any ISIC 2018 ground-truth folder (task 1 masks, task 2 attribute masks, ...): never image rows.
_GT_DIR = re.compile(r"^ISIC2018_Task\d[\d-]*_\w+_GroundTruth\w*$")


def mask_path(root: str | Path, image_rel_path: str) -> Path:
    """The ground-truth mask of ``image_rel_path`` (posix, relative to ``root``).

    ``ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` ->
    ``root/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png``. Sub-folders
    below the input folder are mirrored. Raises ``UsageError`` for a path outside the inputs.
    """
    parts = PurePosixPath(image_rel_path).parts
    if len(parts) < 2 or parts[0] not in _INPUT_TO_GT:
        raise UsageError(
            f"'{image_rel_path}' is not inside an ISIC 2018 task 1 input folder "
            f"({', '.join(_INPUT_TO_GT)}); re-ingest the raw folder with the isic2018-seg layout"
        )
    stem = PurePosixPath(parts[-1]).stem
    return Path(root, _INPUT_TO_GT[parts[0]], *parts[1:-1], stem + MASK_SUFFIX)


class Isic2018SegLayout(Layout):
    name = "isic2018-seg"
    dataset = "isic2018"
    label_source = "ISIC2018_Task1_*_GroundTruth masks"
    description = (
        "ISIC 2018 task 1 (challenge.isic-archive.com):\n"
        "  ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg\n"
        "  ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png   (0/255 masks)\n"
        "  optional: ISIC2018_Task1-2_Validation_Input + ISIC2018_Task1_Validation_GroundTruth,\n"
        "            ISIC2018_Task1-2_Test_Input + ISIC2018_Task1_Test_GroundTruth\n"
        "Label = 'lesion' for every image with a mask (an image without one is rejected);\n"
        "group = image id; official splits train/val/test where present, else derived."
    )

    def detect(self, root: Path) -> bool:
        return any((root / inp).is_dir() and (root / gt).is_dir() for inp, gt in FOLDERS.values())

    def auxiliary(self, path: str) -> bool:
        """Files under any ISIC 2018 ground-truth folder are masks, not images."""
        first = path.split("/", 1)[0]
        return bool(_GT_DIR.match(first))

    def _present(self, root: Path) -> dict[str, tuple[str, str]]:
        """Official splits whose input folder exists; a missing ground-truth folder is an error."""
        present: dict[str, tuple[str, str]] = {}
        for split, (inp, gt) in FOLDERS.items():
            if not (root / inp).is_dir():
                continue
            if not (root / gt).is_dir():
                raise UsageError(
                    f"'{root / inp}' has no ground-truth folder '{gt}' beside it; unpack "
                    f"{gt}.zip into '{root}' (task 1 needs a mask for every image)"
                )
            present[split] = (inp, gt)
        if "train" not in present:
            inp, gt = FOLDERS["train"]
            raise UsageError(
                f"'{root}' has no '{inp}' folder; the isic2018-seg layout needs {inp}/ and {gt}/ "
                "(see `midol tasks show isic2018-seg`)"
            )
        return present

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        if opts.extra:
            raise UsageError(f"the {self.name} layout has no options (got {', '.join(sorted(opts.extra))})")
        present = self._present(root)
        files = self.candidates(root, opts)
        on_disk = set(files)
        # With the training set alone, every split is derived (by image id) instead of train-only.
        official = len(present) > 1
        entries: list[Entry] = []
        for path in files:
            top = path.split("/", 1)[0]
            split = next((s for s, (inp, _gt) in present.items() if inp == top), None)
            if split is None:
                continue
            image_id = PurePosixPath(path).stem
            m = mask_path(root, path).relative_to(root).as_posix()
            if m in on_disk:
                entries.append(Entry(path, LABEL, [LABEL], image_id, split if official else None))
            else:
                entries.append(
                    Entry(path, "", [], image_id, split if official else None, "no ground-truth mask")
                )
        return entries

    def scan_warnings(self, root: Path, opts: LayoutOptions) -> list[str]:
        """One warning counting task-1 masks whose image is missing."""
        files = self.candidates(root, opts)
        images = {PurePosixPath(f).with_suffix("").as_posix() for f in files if not self.auxiliary(f)}
        gt_to_input = {gt: inp for inp, gt in FOLDERS.values()}
        orphans = 0
        for f in files:
            parts = PurePosixPath(f).parts
            if parts[0] not in gt_to_input or not parts[-1].endswith(MASK_SUFFIX):
                continue
            stem = parts[-1][: -len(MASK_SUFFIX)]
            if PurePosixPath(gt_to_input[parts[0]], *parts[1:-1], stem).as_posix() not in images:
                orphans += 1
        if not orphans:
            return []
        return [f"{orphans} ground-truth masks have no image in the matching ISIC2018_Task1-2_*_Input folder"]


LAYOUT = Isic2018SegLayout()

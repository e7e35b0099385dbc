"""RSNA Pneumonia Detection Challenge (Kaggle 2018): DICOM chest radiographs, binary Target."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    read_csv,
    strip_ext,
)
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

# (labels CSV, train images, unlabelled test images) of the stage-2 release, then stage 1.
_RELEASES = (
    ("stage_2_train_labels.csv", "stage_2_train_images", "stage_2_test_images"),
    ("stage_1_train_labels.csv", "stage_1_train_images", "stage_1_test_images"),
)
_TARGETS = {"0": "0", "1": "1", "0.0": "0", "1.0": "1"}


class RsnaPneumoniaLayout(Layout):
    name = "rsna-pneumonia"
    dataset = "rsna-pneumonia"
    label_source = _RELEASES[0][0]
    description = (
        "RSNA Pneumonia Detection Challenge (Kaggle):\n"
        "  stage_2_train_labels.csv   header: patientId,x,y,width,height,Target  (one row per box)\n"
        "  stage_2_train_images/<patientId>.dcm\n"
        "  stage_2_test_images/<patientId>.dcm          optional, unlabelled (kept for pre-training)\n"
        "  stage_2_detailed_class_info.csv              optional, not used\n"
        "  (the stage_1_* release is accepted too; PNG/JPEG re-encodings are matched by patientId)\n"
        "Label = Target ('1' pneumonia / lung opacity, '0' not), deduplicated per patientId (a patient\n"
        "with any positive box is positive); group = patientId. No official split (derived)."
    )

    def _release(self, root: Path) -> tuple[str, str, str] | None:
        for rel in _RELEASES:
            if (root / rel[0]).is_file():
                return rel
        return None

    def detect(self, root: Path) -> bool:
        return self._release(root) is not None

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        rel = self._release(root)
        if rel is None:
            raise UsageError(
                f"'{root}' has no {_RELEASES[0][0]} (or {_RELEASES[1][0]}); the rsna-pneumonia layout "
                "reads Target from it"
            )
        csv_name, train_dir, test_dir = rel
        csv_path = root / csv_name
        header, rows = read_csv(csv_path, "RSNA pneumonia labels file")
        i_pid = find_column(header, ("patientId", "patientID", "patient_id"), csv_path, self.name)
        i_target = find_column(header, ("Target",), csv_path, self.name)
        # One row per bounding box: a patient is positive if any of its rows is.
        target: dict[str, str] = {}
        bad: dict[str, str] = {}
        for row in rows:
            pid = cell(row, i_pid)
            if not pid:
                continue
            raw = cell(row, i_target)
            t = _TARGETS.get(raw)
            if t is None:
                bad[pid] = raw
                continue
            target[pid] = max(target.get(pid, "0"), t)
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for pid in sorted(set(target) | set(bad)):
            label = target.get(pid, "")
            reason = "" if pid in target else f"invalid Target '{bad[pid]}' in {csv_name}"
            hits = index.stem_matches(pid, under=(train_dir,)) or index.stem_matches(pid)
            if not hits:
                entries.append(
                    Entry(
                        f"{train_dir}/{pid}.dcm",
                        label,
                        [label] if label else [],
                        pid,
                        None,
                        reason or f"listed in {csv_name} but missing",
                    )
                )
                continue
            for path in hits:
                entries.append(Entry(path, label, [label] if label else [], pid, None, reason))
        labelled = set(target) | set(bad)
        # The challenge's test images have no labels: known files, kept unlabelled (not "unlisted").
        for path in sorted(index.paths):
            stem = strip_ext(path.rsplit("/", 1)[-1])
            if path.startswith(f"{test_dir}/") and stem not in labelled:
                entries.append(Entry(path, "", [], stem, None))
        return entries


LAYOUT = RsnaPneumoniaLayout()

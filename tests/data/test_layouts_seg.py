"""ISIC 2018 task 1 layout: images + masks in the archive's exact folder names, through ingest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.layouts.isic2018_seg import mask_path
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError

FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}


def make_isic(root: Path, counts: dict[str, int], start: int = 0) -> list[str]:
    """Tiny 32x32 JPEGs and their 0/255 masks; returns the image ids in order."""
    rng = np.random.default_rng(start)
    ids = []
    k = start
    for split, n in counts.items():
        inp, gt = FOLDERS[split]
        (root / inp).mkdir(parents=True, exist_ok=True)
        (root / gt).mkdir(parents=True, exist_ok=True)
        (root / inp / "LICENSE.txt").write_text("CC BY-NC\n")
        for _ in range(n):
            name = f"ISIC_{k:07d}"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / inp / f"{name}.jpg"
            )
            m = np.zeros((32, 32), np.uint8)
            m[8:20, 6:24] = 255
            Image.fromarray(m).save(root / gt / f"{name}_segmentation.png")
            ids.append(name)
            k += 1
    return ids


def scan(root: Path) -> dict[str, object]:
    return {e.path: e for e in get_layout("isic2018-seg").scan(root, LayoutOptions())}


def test_official_splits_labels_and_masks_kept_out(tmp_path):
    ids = make_isic(tmp_path, {"train": 4, "val": 2, "test": 3})
    # One image without its mask, one mask without its image, one task-2 attribute mask.
    Image.new("RGB", (32, 32)).save(tmp_path / FOLDERS["train"][0] / "ISIC_0009999.jpg")
    Image.new("L", (32, 32)).save(tmp_path / FOLDERS["test"][1] / "ISIC_0008888_segmentation.png")
    t2 = tmp_path / "ISIC2018_Task2_Training_GroundTruth_v3"
    t2.mkdir()
    Image.new("L", (32, 32)).save(t2 / "ISIC_0000000_attribute_globules.png")

    assert detect_layout(tmp_path).name == "isic2018-seg"
    entries = scan(tmp_path)
    assert len(entries) == 10 and all("GroundTruth" not in p for p in entries)
    e = entries[f"{FOLDERS['val'][0]}/{ids[4]}.jpg"]
    assert (e.label, e.labels, e.group, e.split, e.reason) == ("lesion", ["lesion"], ids[4], "val", "")
    assert entries[f"{FOLDERS['test'][0]}/{ids[-1]}.jpg"].split == "test"
    orphan = entries[f"{FOLDERS['train'][0]}/ISIC_0009999.jpg"]
    assert orphan.reason == "no ground-truth mask" and orphan.label == ""

    summary = ingest_folder(tmp_path, "dermoscopy", layout="isic2018-seg", out=tmp_path.parent / "m.parquet",
                            workers=1)
    df, _ = read_manifest(tmp_path.parent / "m.parquet")
    assert len(df) == 10 and not df["path"].str.contains("GroundTruth").any()
    assert summary["unlisted"] == 0 and summary["rejects_by_reason"] == {"no ground-truth mask": 1}
    ok = df[df["status"] == "ok"]
    assert dict(ok["split"].value_counts()) == {"train": 4, "val": 2, "test": 3}
    assert set(ok["split_source"]) == {"official"} and set(ok["label"]) == {"lesion"}
    assert any("1 ground-truth masks have no image" in w for w in summary["warnings"])
    assert not any("not listed" in w for w in summary["warnings"])


def test_training_only_derives_splits_by_image(tmp_path):
    make_isic(tmp_path, {"train": 20})
    assert all(e.split is None for e in scan(tmp_path).values())
    summary = ingest_folder(tmp_path, "dermoscopy", layout="isic2018-seg", out=tmp_path.parent / "m.parquet",
                            workers=1)
    assert (
        summary["per_split"]["train"] > 0
        and summary["per_split"]["val"] > 0
        and summary["per_split"]["test"] > 0
    )
    assert summary["groups_across_splits"] == 0 and summary["warnings"] == []


def test_mask_path_follows_the_layout(tmp_path):
    assert mask_path(tmp_path, "ISIC2018_Task1-2_Validation_Input/ISIC_0012345.jpg") == (
        tmp_path / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0012345_segmentation.png"
    )
    assert mask_path(tmp_path, "ISIC2018_Task1-2_Training_Input/sub/ISIC_1.jpg") == (
        tmp_path / "ISIC2018_Task1_Training_GroundTruth" / "sub" / "ISIC_1_segmentation.png"
    )
    with pytest.raises(UsageError, match="not inside an ISIC 2018 task 1 input folder"):
        mask_path(tmp_path, "HAM10000_images_part_1/ISIC_1.jpg")


def test_damaged_copies_are_precise_usage_errors(tmp_path):
    make_isic(tmp_path, {"train": 2, "test": 2})
    shutil.rmtree(tmp_path / FOLDERS["test"][1])
    with pytest.raises(UsageError, match="has no ground-truth folder 'ISIC2018_Task1_Test_GroundTruth'"):
        scan(tmp_path)
    other = tmp_path.parent / "only_val"
    make_isic(other, {"val": 2})
    with pytest.raises(UsageError, match="no 'ISIC2018_Task1-2_Training_Input' folder"):
        scan(other)
    with pytest.raises(UsageError, match="has no options"):
        get_layout("isic2018-seg").scan(other, LayoutOptions(extra={"x": "1"}))


def test_task_is_registered():
    from midol_cli.tasks import get_task

    spec = get_task("isic2018-seg")
    assert (spec.modality, spec.layout, spec.label_type, spec.metric) == (
        "dermoscopy", "isic2018-seg", "segmentation", "dice")
    assert spec.classes == ("background", "lesion")
    task = spec.eval_task(spec.split)
    assert task.to_dict()["label_type"] == "segmentation"

"""Dermoscopy benchmark layouts and tasks: ISIC 2018 task 3, PAD-UFES-20 (and the HAM10000 task)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ingest_fixtures import make_ham, write_image

from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.tasks import get_task, resolve_data

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC_GT = "ISIC2018_Task3_Training_GroundTruth.csv"
# The real metadata.csv header, including the misspelt "fitspatrick".
PAD_HEADER = (
    "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
    "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,diameter_1,"
    "diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed"
)


def scan(name: str, root: Path, **extra) -> dict:
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(extra=extra))}


def ingest(root: Path, tmp_path: Path, layout: str):
    out = tmp_path / "out" / f"{layout}.parquet"
    summary = ingest_folder(root, "dermoscopy", layout=layout, out=out, workers=1)
    df, _ = read_manifest(out)
    return summary, df


def make_isic2018(
    root: Path, per_class: int = 3, part: str = "Training", start: int = 24306
) -> dict[str, str]:
    """``ISIC2018_Task3_<part>_Input/ISIC_XXXXXXX.jpg`` + the one-hot ground-truth CSV; {image id: class}."""
    out = {}
    lines = ["image," + ",".join(ISIC_CLASSES)]
    folder = root / f"ISIC2018_Task3_{part}_Input"
    n = start
    for cls in ISIC_CLASSES:
        for _ in range(per_class):
            image = f"ISIC_{n:07d}"
            write_image(folder / f"{image}.jpg", (16, 12))
            lines.append(image + "," + ",".join("1.0" if c == cls else "0.0" for c in ISIC_CLASSES))
            out[image] = cls
            n += 1
    (folder / "ATTRIBUTION.txt").write_text("see the ISIC archive\n")
    (folder / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
    (root / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return out


def make_pad(root: Path, patients: int = 12) -> list[dict[str, str]]:
    """``metadata.csv`` (real header) + ``images/imgs_part_<k>/PAT_<pid>_<lesion>_<n>.png``.

    Patient k has 1 + k % 2 lesions of one diagnosis, two images each; every fourth patient's
    diagnostic is written "BOD" (Bowen's disease, counted as SCC).
    """
    dxs = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
    rows, lines = [], [PAD_HEADER]
    lesion, img = 100, 500
    for k in range(patients):
        pid = f"PAT_{1000 + k}"
        dx = dxs[k % len(dxs)]
        written = "BOD" if dx == "SCC" and k % 4 == 0 else dx
        for _ in range(1 + k % 2):
            lesion += 1
            for _ in range(2):
                img += 1
                name = f"{pid}_{lesion}_{img}.png"
                write_image(root / "images" / f"imgs_part_{1 + k % 3}" / name, (16, 16))
                cells = {h: "" for h in PAD_HEADER.split(",")}
                cells.update(patient_id=pid, lesion_id=str(lesion), age="55", fitspatrick="3.0",
                             region="FACE", diagnostic=written, img_id=name, biopsed="True")
                lines.append(",".join(cells[h] for h in PAD_HEADER.split(",")))
                rows.append({"name": name, "patient": pid, "dx": dx, "part": str(1 + k % 3)})
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return rows


# ---------------------------------------------------------------- ISIC 2018 task 3


def test_isic2018_one_hot_labels_and_rejected_rows(tmp_path):
    made = make_isic2018(tmp_path, per_class=2)
    assert detect_layout(tmp_path).name == "isic2018"
    gt = tmp_path / ISIC_GT
    # Not one-hot (two classes), all zeros, a listed image that is missing, an image not listed.
    bad = ["ISIC_0099990,1.0,1.0,0.0,0.0,0.0,0.0,0.0", "ISIC_0099991,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
           "ISIC_0099993,0.0,0.0,0.0,0.0,0.0,0.0,1", "ISIC_0099992,0.0,,1.0,0.0,0.0,0.0,0.0"]
    with open(gt, "a") as fh:
        fh.write("\n".join(bad) + "\n")
    for i in (0, 1, 2, 4):
        write_image(tmp_path / "ISIC2018_Task3_Training_Input" / f"ISIC_009999{i}.jpg")
    es = scan("isic2018", tmp_path)
    for image, cls in made.items():
        e = es[f"ISIC2018_Task3_Training_Input/{image}.jpg"]
        assert (e.label, e.labels, e.group, e.split, e.reason) == (cls, [cls], image, None, "")
    assert es["ISIC2018_Task3_Training_Input/ISIC_0099990.jpg"].reason.startswith(f"not one-hot in {ISIC_GT}")
    assert es["ISIC2018_Task3_Training_Input/ISIC_0099991.jpg"].reason.startswith(f"not one-hot in {ISIC_GT}")
    blank = es["ISIC2018_Task3_Training_Input/ISIC_0099992.jpg"]
    assert (blank.label, blank.reason) == ("", f"not one-hot in {ISIC_GT} (NV='' is not a number)")
    # "1" (no decimals) is still one-hot; the missing file is a rejected entry.
    missing = es["ISIC2018_Task3_Training_Input/ISIC_0099993.jpg"]
    assert (missing.label, missing.reason) == ("VASC", f"listed in {ISIC_GT} but missing")
    assert "ISIC2018_Task3_Training_Input/ISIC_0099994.jpg" not in es


def test_isic2018_ingest_rejects_and_derives_split(tmp_path):
    made = make_isic2018(tmp_path / "raw", per_class=4)
    with open(tmp_path / "raw" / ISIC_GT, "a") as fh:
        fh.write("ISIC_0099990,0.0,1.0,1.0,0.0,0.0,0.0,0.0\n")
    write_image(tmp_path / "raw" / "ISIC2018_Task3_Training_Input" / "ISIC_0099990.jpg")
    write_image(tmp_path / "raw" / "ISIC2018_Task3_Training_Input" / "ISIC_0099999.jpg")  # not listed
    summary, df = ingest(tmp_path / "raw", tmp_path, "isic2018")
    assert summary["ok"] == len(made) + 1 and summary["rejected"] == 1
    assert list(summary["rejects_by_reason"]) == [f"not one-hot in {ISIC_GT}"]
    assert summary["unlisted"] == 1 and any("not listed" in w for w in summary["warnings"])
    ok = df[(df["status"] == "ok") & (df["label"] != "")]
    assert sorted(ok["label"].unique()) == sorted(ISIC_CLASSES)
    assert set(ok["split"]) == {"train", "val", "test"} and set(ok["split_source"]) == {"derived"}
    assert (ok.groupby("label")["split"].apply(lambda s: (s == "train").sum()) >= 2).all()


def test_isic2018_groupings_ground_truth_folder_and_official_validation(tmp_path):
    root = tmp_path / "raw"
    made = make_isic2018(root, per_class=2)
    # The GroundTruth zip unpacks into a folder of the same name.
    gt_dir = root / "ISIC2018_Task3_Training_GroundTruth"
    gt_dir.mkdir()
    shutil.move(root / ISIC_GT, gt_dir / ISIC_GT)
    images = sorted(made)
    lines = ["image,lesion_id,diagnosis_confirm_type"]
    lines += [f"{im},HAM_{i // 2:07d},histopathology" for i, im in enumerate(images)]
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text("\n".join(lines) + "\n")
    val = make_isic2018(root, per_class=1, part="Validation", start=34321)
    es = scan("isic2018", root)
    assert es[f"ISIC2018_Task3_Training_Input/{images[3]}.jpg"].group == "HAM_0000001"
    assert {e.split for p, e in es.items() if "Training" in p} == {"train"}
    for image, cls in val.items():
        e = es[f"ISIC2018_Task3_Validation_Input/{image}.jpg"]
        assert (e.label, e.split, e.group) == (cls, "val", image)
    summary, df = ingest(root, tmp_path, "isic2018")
    assert summary["groups_across_splits"] == 0 and summary["per_split"]["val"] >= len(val)
    assert set(df.loc[df["path"].str.startswith("ISIC2018_Task3_Validation"), "split_source"]) == {"official"}
    # Images of one lesion share a split.
    train = df[df["path"].str.startswith("ISIC2018_Task3_Training")]
    assert (train.groupby("group")["split"].nunique() == 1).all() and train["group"].nunique() == len(
        images
    ) // 2


def test_isic2018_damaged_download(tmp_path):
    make_isic2018(tmp_path, per_class=1)
    gt = tmp_path / ISIC_GT
    gt.write_text(gt.read_text().replace(",AKIEC,", ",AK,", 1))
    with pytest.raises(UsageError, match=f"{ISIC_GT} has no column 'AKIEC'"):
        scan("isic2018", tmp_path)
    gt.unlink()
    with pytest.raises(UsageError, match=f"has no {ISIC_GT}"):
        scan("isic2018", tmp_path)
    make_isic2018(tmp_path / "g", per_class=1)
    (tmp_path / "g" / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion\nISIC_0024306,L1\n"
    )
    with pytest.raises(UsageError, match="LesionGroupings.csv has no column 'lesion_id'"):
        scan("isic2018", tmp_path / "g")


# ---------------------------------------------------------------- PAD-UFES-20


def test_pad_ufes20_labels_patients_and_unused_columns(tmp_path):
    rows = make_pad(tmp_path)
    assert detect_layout(tmp_path).name == "pad-ufes-20"
    es = scan("pad-ufes-20", tmp_path)
    assert len(es) == len(rows)
    for r in rows:
        e = es[f"images/imgs_part_{r['part']}/{r['name']}"]
        assert (e.label, e.labels, e.group, e.split, e.reason) == (r["dx"], [r["dx"]], r["patient"], None, "")
    values = {v for e in es.values() for v in (e.label, e.group)}
    assert not values & {"3.0", "True", "FACE", "BOD"}


def test_pad_ufes20_ingest_keeps_patients_together(tmp_path):
    rows = make_pad(tmp_path / "raw", patients=18)
    meta = tmp_path / "raw" / "metadata.csv"
    text = meta.read_text().splitlines()
    # An unknown diagnostic and a listed image that is not on disk.
    text[1] = text[1].replace(",ACK,", ",XYZ,")
    (tmp_path / "raw" / "images" / f"imgs_part_{rows[-1]['part']}" / rows[-1]["name"]).unlink()
    meta.write_text("\n".join(text) + "\n")
    summary, df = ingest(tmp_path / "raw", tmp_path, "pad-ufes-20")
    assert summary["rejected"] == 2 and summary["ok"] == len(rows) - 2
    assert set(summary["rejects_by_reason"]) == {"unknown diagnostic 'XYZ' in metadata.csv",
                                                 "listed in metadata.csv but missing"}
    ok = df[df["status"] == "ok"]
    assert (ok.groupby("group")["split"].nunique() == 1).all() and summary["groups_across_splits"] == 0
    # Whole patients move: each split holds exactly the images of its patients.
    per_patient = ok.groupby("group").size()
    for _split, part in ok.groupby("split"):
        assert len(part) == per_patient[part["group"].unique()].sum()
    assert set(ok["split"]) == {"train", "val", "test"}


def test_pad_ufes20_damaged_download(tmp_path):
    make_pad(tmp_path, patients=2)
    meta = tmp_path / "metadata.csv"
    meta.write_text(meta.read_text().replace(",diagnostic,", ",diagnosis,", 1))
    with pytest.raises(UsageError, match="metadata.csv has no column 'diagnostic'"):
        scan("pad-ufes-20", tmp_path)
    meta.unlink()
    with pytest.raises(UsageError, match="has no metadata.csv"):
        scan("pad-ufes-20", tmp_path)


# ---------------------------------------------------------------- tasks


@pytest.mark.parametrize(
    ("task", "make", "metric"),
    [("isic2018", make_isic2018, "balanced_accuracy"), ("pad-ufes-20", make_pad, "balanced_accuracy"),
     ("ham10000", make_ham, "accuracy")],
)
def test_tasks_agree_with_their_layouts(tmp_path, monkeypatch, task, make, metric):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # resolve_data ingests in-process
    spec = get_task(task)
    assert (spec.modality, spec.metric, spec.label_type, spec.layout) == (
        "dermoscopy",
        metric,
        "multiclass",
        task,
    )
    # PAD's fixture is split by patient: 12 patients can leave one class in test, which probing refuses.
    make(tmp_path / "raw", **({"patients": 36} if task == "pad-ufes-20" else {}))
    emitted = {e.label for e in scan(spec.layout, tmp_path / "raw").values()}
    assert emitted and emitted <= set(spec.classes)
    df, meta = read_manifest(resolve_data(spec, tmp_path / "raw", tmp_path / "cache"), only_ok=True)
    assert meta["layout"] == spec.layout and set(df["label"]) == emitted


def test_isic2018_task_classes_follow_the_csv_columns():
    from midol_cli.data.layouts.isic2018 import CLASSES as ISIC
    from midol_cli.data.layouts.pad_ufes20 import CLASSES as PAD

    assert get_task("isic2018").classes == ISIC == ISIC_CLASSES
    assert get_task("pad-ufes-20").classes == PAD


def test_pad_ufes20_records_fitzpatrick_and_region(tmp_path):
    make_pad(tmp_path, patients=3)
    es = scan("pad-ufes-20", tmp_path)
    assert {tuple(sorted(e.meta.items())) for e in es.values()} == {
        (("age", "55"), ("fitzpatrick", "3"), ("region", "FACE"))}

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import (
    make_aptos,
    make_cxr14,
    make_ham,
    make_imagefolder,
    make_nct,
    make_oct,
    write_dicom,
    write_image,
)

from midol_cli.data.layouts import LAYOUTS, LayoutOptions, detect_layout, get_layout, walk_candidates
from midol_cli.errors import UsageError


def scan(name: str, root: Path, **opts):
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(**opts))}


def test_registry_and_lookup():
    names = list(LAYOUTS)
    for n in ("aptos2019", "ham10000", "oct2017", "chestxray14", "nct-crc", "imagefolder", "csv"):
        assert n in names
    # auto-detection tries layouts in order: the generic ones must come last or they shadow the rest
    assert names[-2:] == ["imagefolder", "csv"]
    for lay in LAYOUTS.values():
        assert lay.description.count("\n") >= 1 and lay.name
    assert get_layout("NCT_CRC").name == "nct-crc"
    with pytest.raises(UsageError, match="did you mean 'ham10000'"):
        get_layout("ham1000")


@pytest.mark.parametrize(
    ("maker", "expected"),
    [
        (make_aptos, "aptos2019"),
        (make_ham, "ham10000"),
        (make_oct, "oct2017"),
        (make_cxr14, "chestxray14"),
        (make_nct, "nct-crc"),
        (make_imagefolder, "imagefolder"),
    ],
)
def test_detect(tmp_path, maker, expected):
    maker(tmp_path)
    assert detect_layout(tmp_path).name == expected


def test_detect_nothing_in_a_flat_folder(tmp_path):
    write_image(tmp_path / "a.png")
    assert detect_layout(tmp_path) is None


def test_aptos(tmp_path):
    ids = make_aptos(tmp_path, per_class=2)
    es = scan("aptos2019", tmp_path)
    assert len(es) == 8
    e = es[f"train_images/{ids[0]}.png"]
    assert (e.label, e.labels, e.group, e.split, e.reason) == ("0", ["0"], ids[0], None, "")
    # A listed image that is gone, an invalid grade, and an unlisted image on disk.
    (tmp_path / "train_images" / f"{ids[1]}.png").unlink()
    with open(tmp_path / "train.csv", "a") as fh:
        fh.write("0123456789ab,7\n")
    write_image(tmp_path / "train_images" / "0123456789ab.png")
    # The competition's unlabelled test images are known, not "unlisted".
    write_image(tmp_path / "test_images" / "aaaaaaaaaaaa.png")
    (tmp_path / "test.csv").write_text("id_code\naaaaaaaaaaaa\n")
    es = scan("aptos2019", tmp_path)
    assert es[f"train_images/{ids[1]}.png"].reason == "listed in train.csv but missing"
    assert es["train_images/0123456789ab.png"].reason == "invalid diagnosis '7' in train.csv"
    t = es["test_images/aaaaaaaaaaaa.png"]
    assert (t.label, t.labels, t.group, t.reason) == ("", [], "aaaaaaaaaaaa", "")


def test_aptos_renamed_column_is_a_usage_error(tmp_path):
    make_aptos(tmp_path, per_class=1)
    text = (tmp_path / "train.csv").read_text().replace("diagnosis", "grade")
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(UsageError, match="train.csv has no column 'diagnosis'"):
        scan("aptos2019", tmp_path)


def test_ham10000_groups_by_lesion_and_ignores_dx_type(tmp_path):
    rows = make_ham(tmp_path, lesions_per_class=2, images_per_lesion=3)
    es = scan("ham10000", tmp_path)
    assert len(es) == len(rows) == 24
    folders = {p.split("/")[0] for p in es}
    assert folders == {"HAM10000_images_part_1", "HAM10000_images_part_2"}
    for lesion, image, dx in rows:
        (e,) = [e for p, e in es.items() if p.endswith(f"/{image}.jpg")]
        assert (e.label, e.group, e.split) == (dx, lesion, None)
    every_value = {v for e in es.values() for v in (e.label, e.group, *e.labels)}
    assert not every_value & {"histo", "follow_up", "consensus", "confocal"}


def test_ham10000_missing_dx_column(tmp_path):
    make_ham(tmp_path, lesions_per_class=1, images_per_lesion=1)
    csv = tmp_path / "HAM10000_metadata.csv"
    csv.write_text(csv.read_text().replace(",dx,", ",diagnosis,", 1))
    with pytest.raises(UsageError, match="no column 'dx'"):
        scan("ham10000", tmp_path)


def test_oct2017_patient_group_and_official_split(tmp_path):
    made = make_oct(tmp_path)
    es = scan("oct2017", tmp_path)
    assert len(es) == len(made)
    for rel, patient, split in made:
        e = es[rel]
        assert (e.group, e.split, e.label) == (patient, split, rel.split("/")[2])


def test_oct2017_kaggle_trailing_space_and_bare_root(tmp_path):
    make_oct(tmp_path / "k")
    (tmp_path / "k" / "OCT2017").rename(tmp_path / "k" / "OCT2017 ")
    lay = detect_layout(tmp_path / "k")
    assert lay is not None and lay.name == "oct2017"
    assert all(p.startswith("OCT2017 /") for p in scan("oct2017", tmp_path / "k"))
    make_oct(tmp_path / "m")
    bare = tmp_path / "m" / "OCT2017"
    es = scan("oct2017", bare)
    assert {e.split for e in es.values()} == {"train", "test"} and len(es) == 24


def test_chestxray14_trailing_comma_multilabel_dicom(tmp_path):
    rows = make_cxr14(tmp_path)
    es = scan("chestxray14", tmp_path)
    assert len(es) == len(rows)
    for r in rows:
        e = es[f"images/{r['name']}"]
        assert e.labels == sorted(r["labels"].split("|"))
        assert e.label == "|".join(sorted(r["labels"].split("|")))
        assert (e.group, e.split) == (r["patient"], r["split"])


def test_chestxray14_v2020_png_index_resolved_to_dicom(tmp_path):
    rows = make_cxr14(tmp_path, sex_column="Patient Sex")
    csv = tmp_path / "Data_Entry_2017.csv"
    # The real release names .png files; here the pixels are DICOM with the same stem, and
    # live in the images_001/images/ folder of the NIH box download.
    csv.write_text(csv.read_text().replace(".dcm,", ".png,"))
    csv.rename(tmp_path / "Data_Entry_2017_v2020.csv")
    shutil.move(tmp_path / "images", tmp_path / "images_001" / "images")
    es = scan("chestxray14", tmp_path)
    assert len(es) == len(rows) and all(p.startswith("images_001/images/") for p in es)
    assert all(not e.reason for e in es.values())


def test_chestxray14_missing_patient_column(tmp_path):
    make_cxr14(tmp_path, patients=2)
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Patient ID", "PatientID"))
    with pytest.raises(UsageError, match="no column 'Patient ID'"):
        scan("chestxray14", tmp_path)


def test_nct_crc_and_external_test(tmp_path):
    made = make_nct(tmp_path, per_class=2)
    write_image(tmp_path / "CRC-VAL-HE-7K" / "TUM" / "TUM-TCGA-ABCDEFGH.tif", fmt="TIFF")
    es = scan("nct-crc", tmp_path)
    assert len(es) == len(made) + 1
    e = es[made[0]]
    assert (e.label, e.split, e.group) == ("ADI", None, Path(made[0]).stem)
    assert es["CRC-VAL-HE-7K/TUM/TUM-TCGA-ABCDEFGH.tif"].split == "test"


def test_imagefolder_with_and_without_split_folders(tmp_path):
    make_imagefolder(tmp_path / "a", classes=("cat", "dog", "test"))
    es = scan("imagefolder", tmp_path / "a")
    # "test" among real classes is a class, not a split.
    assert {e.label for e in es.values()} == {"cat", "dog", "test"} and {e.split for e in es.values()} == {
        None
    }
    make_imagefolder(tmp_path / "b", splits=("train", "valid", "test"))
    es = scan("imagefolder", tmp_path / "b")
    assert es["valid/dog/img_1.png"].split == "val" and es["valid/dog/img_1.png"].label == "dog"
    assert es["train/cat/img_0.png"].group == "train/cat/img_0"


def test_csv_layout_idrid_style(tmp_path):
    # IDRiD: names without extension, header cells with trailing spaces, trailing empty columns,
    # and the same names in both the training and the testing folder.
    train = tmp_path / "1. Original Images" / "a. Training Set"
    test = tmp_path / "1. Original Images" / "b. Testing Set"
    lines = ["Image name,Retinopathy grade,Risk of macular edema ,,"]
    for i in range(1, 6):
        write_image(train / f"IDRiD_{i:03d}.jpg")
        lines.append(f"IDRiD_{i:03d},{i % 3},0,,")
    for i in range(1, 3):
        write_image(test / f"IDRiD_{i:03d}.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    es = scan("csv", tmp_path, labels=labels, path_col="Image name", label_col="Retinopathy grade ")
    listed = {p: e for p, e in es.items() if not e.reason}
    assert len(listed) == 5 and all(p.startswith("1. Original Images/a. Training Set/") for p in listed)
    assert listed["1. Original Images/a. Training Set/IDRiD_004.jpg"].label == "1"
    # A column named with its trailing space stripped also resolves.
    es2 = scan("csv", tmp_path, labels=labels, path_col="Image name", label_col="Risk of macular edema")
    assert len(es2) == 5


def test_csv_layout_groups_splits_multilabel_and_missing(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"x{i}.png")
    labels = tmp_path / "meta.csv"
    labels.write_text(
        "file,findings,patient,fold\n"
        "img/x0.png,b|a,P1,Train\nimg/x1.png,a,P1,training\nimg/x2.png,,P2,validation\nimg/x9.png,c,P3,test\n"
    )
    es = scan(
        "csv",
        tmp_path,
        labels=labels,
        path_col="file",
        label_col="findings",
        group_col="patient",
        split_col="fold",
        label_sep="|",
    )
    assert es["img/x0.png"].labels == ["a", "b"] and es["img/x0.png"].label == "a|b"
    assert (es["img/x0.png"].group, es["img/x0.png"].split) == ("P1", "train")
    assert (es["img/x2.png"].label, es["img/x2.png"].split) == ("", "val")
    assert es["img/x9.png"].reason == "listed in meta.csv but missing"
    labels.write_text("file,findings\nimg/x0.png,a\n")
    with pytest.raises(UsageError, match="no column 'patient'"):
        scan("csv", tmp_path, labels=labels, path_col="file", label_col="findings", group_col="patient")
    labels.write_text("file,findings,fold\nimg/x0.png,a,holdout\n")
    with pytest.raises(UsageError, match="unknown split value 'holdout'"):
        scan("csv", tmp_path, labels=labels, path_col="file", label_col="findings", split_col="fold")
    with pytest.raises(UsageError, match="needs --labels"):
        scan("csv", tmp_path)


def test_walk_candidates_skips_hidden_and_finds_extensionless_dicom(tmp_path):
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "._x.png")  # macOS resource fork
    write_image(tmp_path / ".git" / "y.png")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "a" / "README").write_text("not dicom")
    write_dicom(tmp_path / "b" / "IM000001", np.zeros((4, 4), np.uint16))
    assert walk_candidates(tmp_path) == ["a/x.png", "b/IM000001"]


def test_chestxray14_and_ham10000_record_subgroup_metadata(tmp_path):
    make_cxr14(tmp_path / "cxr", patients=4)
    es = scan("chestxray14", tmp_path / "cxr")
    first = es["images/00000013_000.dcm"]  # patient 0: age "040Y", sex M, view PA
    assert first.meta == {"sex": "male", "age": "040Y", "view": "PA"}
    assert es["images/00000014_000.dcm"].meta["sex"] == "female"
    make_ham(tmp_path / "ham", lesions_per_class=2)
    ham = scan("ham10000", tmp_path / "ham")
    metas = [e.meta for e in ham.values()]
    assert all(m["localization"] == "back" for m in metas)
    # "unknown" sex and empty ages are left out, never recorded as a value
    assert {m.get("sex") for m in metas} == {"male", "female", None}
    assert any("age" not in m for m in metas) and all(m.get("age", "40").endswith(".0") or "age" not in m
                                                    for m in metas)


def test_csv_layout_meta_cols(tmp_path):
    for i in range(3):
        write_image(tmp_path / "img" / f"x{i}.png")
    labels = tmp_path / "meta.csv"
    labels.write_text("file,y,site,Sex\nimg/x0.png,a,A,F\nimg/x1.png,b,B,m\nimg/x2.png,a,,unknown\n")
    es = scan("csv", tmp_path, labels=labels, path_col="file", label_col="y", meta_cols=("site", "Sex"))
    assert es["img/x0.png"].meta == {"site": "A", "Sex": "F"}
    assert es["img/x2.png"].meta == {}
    with pytest.raises(UsageError, match="no column 'scanner'"):
        scan("csv", tmp_path, labels=labels, path_col="file", label_col="y", meta_cols=("scanner",))

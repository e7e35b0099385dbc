"""Fundus benchmark layouts (IDRiD, Messidor-2, EyePACS, Retina/cataract) and the fundus tasks, on tiny
copies of the real downloads: same folder names, file-name patterns and CSV headers, a few pixels each."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import make_aptos, make_imagefolder, write_image

from midol_cli.data import ingest as ingest_mod
from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.tasks import get_task, resolve_data

GRADES = ("0", "1", "2", "3", "4")


def scan(name: str, root: Path, **extra: str):
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(extra=extra))}


def ingest(root: Path, out: Path, layout: str):
    summary = ingest_folder(root, "fundus", layout=layout, out=out, workers=1)
    df, _ = read_manifest(out)
    return summary, df.set_index("path", drop=False)


def assert_no_group_leak(df) -> None:
    ok = df[df["status"] == "ok"]
    assert (ok.groupby("group")["split"].nunique() == 1).all()


def check_task(name: str, root: Path, tmp_path: Path, monkeypatch):
    """Ingest ``root`` through the task (in-process), check every emitted class is a task class and
    that the labels encode for the probe; return the manifest."""
    from midol_cli.eval.results import task_data

    spec = get_task(name)
    monkeypatch.setattr(ingest_mod, "ingest_folder", functools.partial(ingest_mod.ingest_folder, workers=1))
    out = resolve_data(spec, root, tmp_path / "cache")
    df, meta = read_manifest(out)
    assert meta["layout"] == spec.layout and meta["modality"] == spec.modality == "fundus"
    ok = df[(df["status"] == "ok") & (df["label"] != "")]
    emitted = set(ok["label"])
    assert emitted and emitted <= set(spec.classes), emitted - set(spec.classes)
    emb = ok.assign(embedding=[np.zeros(4, np.float32)] * len(ok))
    td = task_data(emb, spec.eval_task())
    assert len(td.y) == len(ok)
    if spec.label_type == "ordinal":
        assert spec.classes == GRADES and spec.metric == "qwk"
    return df


# ---------------------------------------------------------------- APTOS 2019 (existing layout)


def test_aptos2019_task(tmp_path, monkeypatch):
    make_aptos(tmp_path / "raw", per_class=4, classes=GRADES)
    df = check_task("aptos2019", tmp_path / "raw", tmp_path, monkeypatch)
    assert set(df["label"]) == set(GRADES) and set(df["split"]) == {"train", "val", "test"}


# ---------------------------------------------------------------- IDRiD

IDRID_PART = "B. Disease Grading"
IDRID_SETS = (
    ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv", "train"),
    ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv", "test"),
)


def make_idrid(root: Path, n_train: int = 15, n_test: int = 5) -> dict[tuple[str, str], str]:
    """``B. Disease Grading/{1. Original Images,2. Groundtruths}`` with the release's CSV quirks:
    header ``Risk of macular edema `` (trailing space), empty trailing columns, names without
    extension, and a few all-empty rows at the end. Returns {(split, name): grade}."""
    base = root / IDRID_PART
    grades = {}
    for (folder, csv_name, split), n in zip(IDRID_SETS, (n_train, n_test), strict=True):
        lines = ["Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,,"]
        for i in range(1, n + 1):
            name = f"IDRiD_{i:03d}"
            grade = str((i + (split == "test")) % 5)
            write_image(base / "1. Original Images" / folder / f"{name}.jpg", (16, 16))
            lines.append(f"{name},{grade},{i % 3},,,,,,,,,")
            grades[(split, name)] = grade
        lines += [",,,,,,,,,,,"] * 3
        path = base / "2. Groundtruths" / csv_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\r\n".join(lines) + "\r\n")
    return grades


def test_idrid_repeated_names_official_split(tmp_path):
    grades = make_idrid(tmp_path)
    es = scan("idrid", tmp_path)
    assert len(es) == len(grades) == 20
    for (split, name), grade in grades.items():
        folder = "a. Training Set" if split == "train" else "b. Testing Set"
        e = es[f"{IDRID_PART}/1. Original Images/{folder}/{name}.jpg"]
        # IDRiD_001 exists in both sets: different images, different groups.
        assert (e.label, e.labels, e.group, e.split, e.reason) == (
            grade,
            [grade],
            f"{split}/{name}",
            split,
            "",
        )
    assert detect_layout(tmp_path).name == "idrid"


def test_idrid_root_is_the_grading_folder(tmp_path):
    grades = make_idrid(tmp_path, n_train=3, n_test=2)
    es = scan("idrid", tmp_path / IDRID_PART)
    assert len(es) == len(grades) and all(p.startswith("1. Original Images/") for p in es)
    assert detect_layout(tmp_path / IDRID_PART).name == "idrid"


def test_idrid_ingest_no_leak(tmp_path):
    raw = tmp_path / "raw"
    grades = make_idrid(raw, n_train=20, n_test=6)
    (raw / IDRID_PART / "1. Original Images" / "a. Training Set" / "IDRiD_004.jpg").unlink()
    summary, df = ingest(raw, tmp_path / "m.parquet", "idrid")
    assert summary["ok"] == len(grades) - 1
    assert summary["rejects_by_reason"] == {
        "listed in a. IDRiD_Disease Grading_Training Labels.csv but missing": 1
    }
    ok = df[df["status"] == "ok"]
    test = ok[ok["path"].str.contains("b. Testing Set")]
    assert len(test) == 6 and set(test["split"]) == {"test"} and set(test["split_source"]) == {"official"}
    assert set(ok.loc[ok["split"] == "val", "split_source"]) == {"derived"}
    assert_no_group_leak(df)


def test_idrid_damaged_copy(tmp_path):
    make_idrid(tmp_path, n_train=2, n_test=1)
    truth = tmp_path / IDRID_PART / "2. Groundtruths"
    csv = truth / IDRID_SETS[0][1]
    good = csv.read_text()
    csv.write_text(good.replace("Retinopathy grade", "DR grade"))
    with pytest.raises(UsageError, match="Training Labels.csv has no column 'Retinopathy grade'"):
        scan("idrid", tmp_path)
    csv.write_text(good)
    (truth / IDRID_SETS[1][1]).unlink()
    with pytest.raises(
        UsageError, match="2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv' is missing"
    ):
        scan("idrid", tmp_path)


def test_idrid_task(tmp_path, monkeypatch):
    make_idrid(tmp_path / "raw")
    check_task("idrid", tmp_path / "raw", tmp_path, monkeypatch)


# ---------------------------------------------------------------- Messidor-2


def make_messidor2(root: Path, exams: int = 8, pairs_file: bool = True) -> list[dict]:
    """``IMAGES/`` (Messidor-Original ``<date>_<exam>_0n00_PP.png``/``.tif`` pairs and Brest
    ``IM00nnnn.JPG`` pairs), ``messidor_data.csv`` (ids as the Kaggle file spells them: ``.jpg``
    lower case) and optionally ADCIS's ``messidor-2.csv`` ("left;right" pairs). Exam 1's second image
    is ungradable. Returns one dict per image (id, file, grade, gradable, exam)."""
    rows = []
    for e in range(exams):
        if e % 2 == 0:
            stem = f"200510{20 + e:02d}_{43808 + 97 * e}"
            ids = [f"{stem}_0100_PP.png", f"{stem}_0200_PP.png"]
            files = [ids[0], ids[1].replace(".png", ".tif") if e % 4 == 0 else ids[1]]
        else:
            ids = [f"IM00{2385 + 2 * e:04d}.jpg", f"IM00{2386 + 2 * e:04d}.jpg"]
            files = [i.replace(".jpg", ".JPG") for i in ids]
        for k, (iid, fname) in enumerate(zip(ids, files, strict=True)):
            write_image(root / "IMAGES" / fname, (16, 16))
            gradable = not (e == 1 and k == 1)
            grade = str((e + k) % 5) if gradable else ""
            rows.append({"id": iid, "file": fname, "grade": grade, "gradable": gradable, "exam": ids[0]})
    lines = ["image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"]
    lines += [f"{r['id']},{r['grade']},{'0' if r['gradable'] else ''},{int(r['gradable'])}" for r in rows]
    (root / "messidor_data.csv").write_text("\n".join(lines) + "\n")
    (root / "messidor_readme.txt").write_text("adjudicated grades\n")
    if pairs_file:
        pairs = ["left;right"] + [f"{rows[i]['file']};{rows[i + 1]['file']}" for i in range(0, len(rows), 2)]
        (root / "messidor-2.csv").write_text("\n".join(pairs) + "\n")
    return rows


def test_messidor2_grades_pairs_and_ungradable(tmp_path):
    rows = make_messidor2(tmp_path)
    es = scan("messidor2", tmp_path)
    assert len(es) == len(rows) == 16
    for r in rows:
        e = es[f"IMAGES/{r['file']}"]
        assert e.group == r["exam"].rsplit(".", 1)[0] and e.split is None
        if r["gradable"]:
            assert (e.label, e.labels, e.reason) == (r["grade"], [r["grade"]], "")
        else:
            assert e.reason == "ungradable (adjudicated_gradable = 0 in messidor_data.csv)"
    assert detect_layout(tmp_path).name == "messidor2"


def test_messidor2_groups_without_the_exam_list(tmp_path):
    rows = make_messidor2(tmp_path, exams=4, pairs_file=False)
    es = scan("messidor2", tmp_path)
    groups = {r["file"]: es[f"IMAGES/{r['file']}"].group for r in rows}
    # Messidor-Original pairs share the <date>_<exam> prefix; Brest images stand alone.
    assert groups["20051020_43808_0100_PP.png"] == groups["20051020_43808_0200_PP.tif"] == "20051020_43808"
    assert groups["IM002387.JPG"] == "IM002387" and groups["IM002388.JPG"] == "IM002388"


def test_messidor2_ingest_no_leak(tmp_path):
    raw = tmp_path / "raw"
    rows = make_messidor2(raw, exams=14)
    summary, df = ingest(raw, tmp_path / "m.parquet", "messidor2")
    assert summary["ok"] == len(rows) - 1 and summary["rejects_by_reason"] == {"ungradable": 1}
    assert summary["unlisted"] == 0
    assert set(df.loc[df["status"] == "ok", "split"]) == {"train", "val", "test"}
    assert_no_group_leak(df)


def test_messidor2_damaged_copy(tmp_path):
    make_messidor2(tmp_path, exams=2)
    csv = tmp_path / "messidor_data.csv"
    csv.write_text(csv.read_text().replace("adjudicated_dr_grade", "dr_grade"))
    with pytest.raises(UsageError, match="messidor_data.csv has no column 'adjudicated_dr_grade'"):
        scan("messidor2", tmp_path)
    csv.unlink()
    with pytest.raises(UsageError, match="has no messidor_data.csv"):
        scan("messidor2", tmp_path)


def test_messidor2_task(tmp_path, monkeypatch):
    make_messidor2(tmp_path / "raw", exams=12)
    check_task("messidor2", tmp_path / "raw", tmp_path, monkeypatch)


# ---------------------------------------------------------------- EyePACS


def make_eyepacs(root: Path, patients: int = 10, test_patients: int = 3, solution: bool = False) -> dict:
    """``train/<id>_{left,right}.jpeg`` + ``trainLabels.csv`` (image,level); ``test/`` images and,
    with ``solution``, ``retinopathy_solution.csv`` (image,level,Usage). Returns {image: level}."""
    levels = {}
    lines = ["image,level"]
    for p in range(patients):
        pid = 10 + 3 * p + p % 2  # sparse ids, as in the release
        for k, eye in enumerate(("left", "right")):
            image = f"{pid}_{eye}"
            write_image(root / "train" / f"{image}.jpeg", (16, 16))
            levels[image] = str((p + k) % 5)
            lines.append(f"{image},{levels[image]}")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    sol = ["image,level,Usage"]
    for p in range(test_patients):
        for eye in ("left", "right"):
            image = f"{p + 1}_{eye}"
            write_image(root / "test" / f"{image}.jpeg", (16, 16))
            sol.append(f"{image},{p % 5},{'Public' if p % 2 else 'Private'}")
            if solution:
                levels[image] = str(p % 5)
    if solution:
        (root / "retinopathy_solution.csv").write_text("\n".join(sol) + "\n")
    return levels


def test_eyepacs_groups_both_eyes(tmp_path):
    levels = make_eyepacs(tmp_path)
    es = scan("eyepacs", tmp_path)
    train = {p: e for p, e in es.items() if p.startswith("train/")}
    assert len(train) == len(levels) == 20
    for image, level in levels.items():
        e = train[f"train/{image}.jpeg"]
        assert (e.label, e.group, e.split, e.reason) == (level, image.split("_")[0], None, "")
    test = [e for p, e in es.items() if p.startswith("test/")]
    assert len(test) == 6 and all(e.label == "" for e in test)
    assert detect_layout(tmp_path).name == "eyepacs"


def test_eyepacs_ingest_derived_and_official(tmp_path):
    raw = tmp_path / "raw"
    make_eyepacs(raw, patients=14)
    summary, df = ingest(raw, tmp_path / "m.parquet", "eyepacs")
    assert summary["unlisted"] == 0 and summary["ok"] == 34
    labelled = df[df["label"] != ""]
    assert set(labelled["split"]) == {"train", "val", "test"} and set(labelled["split_source"]) == {"derived"}
    assert_no_group_leak(df)

    (raw / "retinopathy_solution.csv").write_text(
        "image,level,Usage\n"
        + "".join(f"{p}_{e},{p % 5},Public\n" for p in (1, 2, 3) for e in ("left", "right"))
    )
    _summary, df = ingest(raw, tmp_path / "m2.parquet", "eyepacs")
    test = df[df["path"].str.startswith("test/")]
    assert set(test["split"]) == {"test"} and set(test["split_source"]) == {"official"}
    assert set(test["label"]) == {"1", "2", "3"}
    assert set(df.loc[df["path"].str.startswith("train/"), "split"]) == {"train", "val"}


def test_eyepacs_damaged_copy(tmp_path):
    with pytest.raises(UsageError, match="has no trainLabels.csv"):
        scan("eyepacs", tmp_path)
    make_eyepacs(tmp_path, patients=1, test_patients=0)
    csv = tmp_path / "trainLabels.csv"
    csv.write_text(csv.read_text().replace("level", "grade"))
    with pytest.raises(UsageError, match="trainLabels.csv has no column 'level'"):
        scan("eyepacs", tmp_path)


def test_eyepacs_task(tmp_path, monkeypatch):
    make_eyepacs(tmp_path / "raw", patients=12)
    check_task("eyepacs", tmp_path / "raw", tmp_path, monkeypatch)


# ---------------------------------------------------------------- Retina (cataract dataset)

RETINA_FOLDERS = {
    "1_normal": "NL",
    "2_cataract": "cataract",
    "2_glaucoma": "Glaucoma",
    "3_retina_disease": "Retina",
}


def make_retina(root: Path, per_class: int = 5, under: str = "dataset") -> dict[str, str]:
    """``dataset/{1_normal,2_cataract,2_glaucoma,3_retina_disease}/<Prefix>_NNN.png``; returns {path:
    class}."""
    out = {}
    for folder, prefix in RETINA_FOLDERS.items():
        for i in range(1, per_class + 1):
            rel = f"{under + '/' if under else ''}{folder}/{prefix}_{i:03d}.png"
            write_image(root / rel, (16, 16))
            out[rel] = folder.split("_", 1)[1]
    return out


@pytest.mark.parametrize("under", ["dataset", ""])
def test_retina_class_folders(tmp_path, under):
    made = make_retina(tmp_path, per_class=2, under=under)
    es = scan("retina-cataract", tmp_path)
    assert {p: e.label for p, e in es.items()} == made
    assert {e.label for e in es.values()} == {"normal", "cataract", "glaucoma", "retina_disease"}
    assert all(e.split is None and e.group == p.rsplit(".", 1)[0] for p, e in es.items())
    # Specific beats generic: the class-folder layout would call the classes "1_normal", ...
    assert detect_layout(tmp_path).name == "retina-cataract"


def test_retina_not_detected_on_other_class_folders(tmp_path):
    make_imagefolder(tmp_path)
    assert detect_layout(tmp_path).name == "imagefolder"
    with pytest.raises(UsageError, match="no class folders 1_normal"):
        scan("retina-cataract", tmp_path)


def test_retina_task(tmp_path, monkeypatch):
    make_retina(tmp_path / "raw", per_class=6)
    df = check_task("retina", tmp_path / "raw", tmp_path, monkeypatch)
    assert set(df["split"]) == {"train", "val", "test"}
    assert get_task("retina").metric == "accuracy"
    with pytest.raises(UsageError, match="retina-cataract layout has no option 'x'"):
        scan("retina-cataract", tmp_path / "raw", x="1")


def test_messidor2_and_eyepacs_record_the_eye_and_ingest_keeps_it(tmp_path):
    rows = make_messidor2(tmp_path / "m", exams=4)
    es = scan("messidor2", tmp_path / "m")
    # messidor-2.csv lists each exam as "left;right"
    assert [es[f"IMAGES/{r['file']}"].meta.get("eye") for r in rows] == ["left", "right"] * 4
    make_eyepacs(tmp_path / "e", patients=3)
    ep = scan("eyepacs", tmp_path / "e")
    assert {p.rsplit("_", 1)[-1].split(".")[0]: e.meta["eye"] for p, e in ep.items()} == {
        "left": "left", "right": "right"}
    from midol_cli.data.manifest import row_meta

    _, df = ingest(tmp_path / "e", tmp_path / "e.parquet", "eyepacs")
    ok = df[df["status"] == "ok"]
    assert sorted({row_meta(m)["eye"] for m in ok["meta"]}) == ["left", "right"]

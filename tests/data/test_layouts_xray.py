"""X-ray benchmark layouts (CheXpert, RSNA Pneumonia, COVIDx) and the xray tasks, on tiny copies of the
real downloads: same folder names, file-name patterns and CSV headers, a few pixels per image."""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import make_cxr14, write_dicom, write_image

from midol_cli.data import ingest as ingest_mod
from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.layouts.covidx import parse_line
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.tasks import get_task, resolve_data, task_options


def scan(name: str, root: Path, **extra: str):
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(extra=extra))}


def ingest(root: Path, out: Path, layout: str, **extra: str):
    summary = ingest_folder(
        root, "xray", layout=layout, out=out, workers=1, layout_options=LayoutOptions(extra=extra)
    )
    df, _ = read_manifest(out)
    return summary, df.set_index("path", drop=False)


def assert_no_group_leak(df) -> None:
    ok = df[df["status"] == "ok"]
    assert (ok.groupby("group")["split"].nunique() == 1).all()


def check_task(name: str, root: Path, tmp_path: Path, monkeypatch, overrides: tuple[str, ...] = ()):
    """Ingest ``root`` through the task (in-process), check every emitted class is a task class and
    that the labels encode for the probe; return the manifest."""
    from midol_cli.eval.results import task_data

    spec = get_task(name)
    monkeypatch.setattr(ingest_mod, "ingest_folder", functools.partial(ingest_mod.ingest_folder, workers=1))
    out = resolve_data(spec, root, tmp_path / "cache", task_options(spec, overrides))
    df, meta = read_manifest(out)
    assert meta["layout"] == spec.layout and meta["modality"] == spec.modality == "xray"
    ok = df[df["status"] == "ok"]
    emitted = {lab for labels in ok["labels"] for lab in labels}
    allowed = set(spec.classes) | ({"No Finding"} if spec.label_type == "multilabel" else set())
    assert emitted and emitted <= allowed, emitted - allowed
    emb = ok.assign(embedding=[np.zeros(4, np.float32)] * len(ok))
    td = task_data(emb, spec.eval_task())
    assert len(td.y) == int((ok["label"] != "").sum())
    return df


# ---------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)
FIVE = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CYCLE = ("1.0", "0.0", "-1.0", "", "0.0")
# patient00001: Atelectasis -1, Cardiomegaly 1, Consolidation blank, Edema 0, Pleural Effusion -1.
P1 = {
    "Atelectasis": "-1.0",
    "Cardiomegaly": "1.0",
    "Consolidation": "",
    "Edema": "0.0",
    "Pleural Effusion": "-1.0",
}


def make_chexpert(root: Path, train_patients: int = 8, valid_patients: int = 3) -> list[dict]:
    """``CheXpert-v1.0-small/{train,valid}.csv`` + ``{train,valid}/patientNNNNN/studyN/viewN_*.jpg``.

    patient00001 carries ``P1``; patient00002 has nothing positive; even patients also have a lateral
    view. Valid labels are 0/1 only, as in the release. Returns one dict per CSV row.
    """
    base = root / "CheXpert-v1.0-small"
    cols = CHEXPERT_HEADER.split(",")
    rows = []
    for split, first, count in (("train", 1, train_patients), ("valid", 64541, valid_patients)):
        lines = [CHEXPERT_HEADER]
        for k in range(count):
            patient = f"patient{first + k:05d}"
            views = [("view1_frontal.jpg", "Frontal", "AP")]
            if k % 2 == 0:
                views.append(("view2_lateral.jpg", "Lateral", ""))
            for view, fl, appa in views:
                path = f"CheXpert-v1.0-small/{split}/{patient}/study1/{view}"
                write_image(root / path, (16, 16), mode="L")
                if patient == "patient00001":
                    vals = dict(P1)
                elif patient == "patient00002":
                    vals = dict.fromkeys(FIVE, "")
                else:
                    # Uncertain labels on every third training patient only; valid is 0/1.
                    pool = ("1.0", "0.0") if split == "valid" else CYCLE if k % 3 == 0 else ("1.0", "0.0", "")
                    vals = {f: pool[(k + i) % len(pool)] for i, f in enumerate(FIVE)}
                rec = dict.fromkeys(cols, "")
                rec.update(vals, Path=path, Sex="Female" if k % 2 else "Male", Age=str(40 + k))
                rec["Frontal/Lateral"], rec["AP/PA"], rec["Support Devices"] = fl, appa, "1.0"
                lines.append(",".join(rec[c] for c in cols))
                rows.append({"path": path, "patient": patient, "split": split, "view": fl, **vals})
        (base / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return rows


def test_chexpert_policies_view_groups_and_official_split(tmp_path):
    rows = make_chexpert(tmp_path)
    es = scan("chexpert", tmp_path)
    assert len(es) == len(rows)
    p1 = es["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]
    assert (
        p1.labels == ["Atelectasis", "Cardiomegaly", "Pleural Effusion"] and not p1.reason
    )  # u-ones default
    assert p1.label == "Atelectasis|Cardiomegaly|Pleural Effusion"
    assert es["CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg"].labels == ["No Finding"]
    for r in rows:
        e = es[r["path"]]
        assert e.group == r["patient"]
        assert e.split == ("test" if r["split"] == "valid" else "train")
        assert (e.reason == "lateral view (frontal_only=true)") == (r["view"] == "Lateral")
        if r["view"] == "Frontal":
            expected = sorted(f for f in FIVE if r[f] in ("1.0", "-1.0"))
            assert e.labels == (expected or ["No Finding"])

    zeros = scan("chexpert", tmp_path, uncertainty="u-zeros")
    assert zeros[p1.path].labels == ["Cardiomegaly"]
    ignore = scan("chexpert", tmp_path, uncertainty="ignore")
    assert ignore[p1.path].reason == "uncertain competition label (uncertainty=ignore)"
    # A valid image (no -1 in the release) is never dropped by the policy.
    valid = [p for p, e in ignore.items() if "/valid/" in p and "frontal" in p]
    assert valid and not any(ignore[p].reason for p in valid)
    both = scan("chexpert", tmp_path, frontal_only="no")
    assert not any(e.reason for e in both.values())


def test_chexpert_root_may_be_the_release_folder_itself(tmp_path):
    rows = make_chexpert(tmp_path, train_patients=3, valid_patients=1)
    es = scan("chexpert", tmp_path / "CheXpert-v1.0-small")
    assert set(es) == {r["path"].removeprefix("CheXpert-v1.0-small/") for r in rows}
    assert not any("missing" in e.reason for e in es.values())
    assert detect_layout(tmp_path).name == detect_layout(tmp_path / "CheXpert-v1.0-small").name == "chexpert"


def test_chexpert_ingest_no_patient_leak_and_missing_image(tmp_path):
    raw = tmp_path / "raw"
    rows = make_chexpert(raw, train_patients=12)
    gone = "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg"
    (raw / gone).unlink()
    summary, df = ingest(raw, tmp_path / "m.parquet", "chexpert")
    assert df.loc[gone, "reason"] == "listed in train.csv but missing"
    laterals = sum(r["view"] == "Lateral" for r in rows)
    assert summary["rejects_by_reason"] == {"lateral view": laterals, "listed in train.csv but missing": 1}
    assert summary["unlisted"] == 0
    assert_no_group_leak(df)
    ok = df[df["status"] == "ok"]
    assert set(ok.loc[ok["group"].str.startswith("patient645"), "split"]) == {"test"}
    assert {"train", "val"} <= set(ok.loc[ok["split_source"] != "", "split"])


def test_chexpert_damaged_copy_and_bad_option(tmp_path):
    make_chexpert(tmp_path, train_patients=2, valid_patients=1)
    with pytest.raises(UsageError, match="no option 'policy'"):
        scan("chexpert", tmp_path, policy="u-ones")
    with pytest.raises(UsageError, match="uncertainty='u-maybe'.*chexpert.*u-ones, u-zeros, ignore"):
        scan("chexpert", tmp_path, uncertainty="u-maybe")
    csv = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    good = csv.read_text()
    csv.write_text(good.replace("Pleural Effusion", "Effusion", 1))
    with pytest.raises(UsageError, match="train.csv has no column 'Pleural Effusion'"):
        scan("chexpert", tmp_path)
    csv.write_text(good)
    assert scan("chexpert", tmp_path)
    (tmp_path / "CheXpert-v1.0-small" / "valid.csv").unlink()
    with pytest.raises(UsageError, match="'CheXpert-v1.0-small/valid.csv' is missing"):
        scan("chexpert", tmp_path)


def test_chexpert_task(tmp_path, monkeypatch):
    make_chexpert(tmp_path / "raw", train_patients=10)
    df = check_task("chexpert", tmp_path / "raw", tmp_path, monkeypatch, ("uncertainty=ignore",))
    assert "uncertain competition label" in set(df["reason"].str.split(" \\(").str[0])
    spec = get_task("chexpert")
    assert dict(spec.layout_options) == {"uncertainty": "u-ones", "frontal_only": "true"}
    with pytest.raises(UsageError, match="no option 'magnification'"):
        task_options(spec, ["magnification=40X"])


# ---------------------------------------------------------------- RSNA Pneumonia


def _uuid(i: int) -> str:
    h = hashlib.sha1(f"rsna{i}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def make_rsna(root: Path, patients: int = 12, test_images: int = 2) -> dict[str, str]:
    """``stage_2_train_labels.csv`` (one row per box) + class info + 8-bit DICOMs; returns {patientId:
    Target}."""
    labels = ["patientId,x,y,width,height,Target"]
    info = ["patientId,class"]
    truth = {}
    for i in range(patients):
        pid = _uuid(i)
        positive = i % 3 == 0
        truth[pid] = "1" if positive else "0"
        boxes = 2 if positive else 1
        for b in range(boxes):
            labels.append(f"{pid},{264.0 + b},152.0,213.0,379.0,1" if positive else f"{pid},,,,,0")
            info.append(
                f"{pid},{'Lung Opacity' if positive else ('Normal', 'No Lung Opacity / Not Normal')[i % 2]}"
            )
        arr = np.random.default_rng(i).integers(0, 256, (20, 20), dtype=np.uint8)
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", arr, modality="CR", patient_id=pid)
    for j in range(test_images):
        arr = np.full((20, 20), j * 40, dtype=np.uint8)
        write_dicom(root / "stage_2_test_images" / f"{_uuid(1000 + j)}.dcm", arr, modality="CR")
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(info) + "\n")
    return truth


def test_rsna_dedupes_boxes_per_patient(tmp_path):
    truth = make_rsna(tmp_path)
    es = scan("rsna-pneumonia", tmp_path)
    train = {p: e for p, e in es.items() if p.startswith("stage_2_train_images/")}
    assert len(train) == len(truth)  # 4 positive patients have 2 box rows each
    for pid, target in truth.items():
        e = train[f"stage_2_train_images/{pid}.dcm"]
        assert (e.label, e.labels, e.group, e.split, e.reason) == (target, [target], pid, None, "")
    test = [e for p, e in es.items() if p.startswith("stage_2_test_images/")]
    assert len(test) == 2 and all(e.label == "" for e in test)
    assert detect_layout(tmp_path).name == "rsna-pneumonia"


def test_rsna_ingest_dicom_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    truth = make_rsna(raw, patients=15)
    gone = next(iter(truth))
    (raw / "stage_2_train_images" / f"{gone}.dcm").unlink()
    summary, df = ingest(raw, tmp_path / "m.parquet", "rsna-pneumonia")
    assert (
        df.loc[f"stage_2_train_images/{gone}.dcm", "reason"]
        == "listed in stage_2_train_labels.csv but missing"
    )
    assert summary["ok"] == len(truth) - 1 + 2 and summary["unlisted"] == 0
    ok = df[df["status"] == "ok"]
    assert set(ok["format"]) == {"DICOM"}
    assert summary["per_label_split"]["1"]["train"] >= 1
    assert set(ok["split"]) == {"train", "val", "test"}
    assert_no_group_leak(df)


def test_rsna_damaged_copy(tmp_path):
    with pytest.raises(UsageError, match="has no stage_2_train_labels.csv"):
        scan("rsna-pneumonia", tmp_path)
    make_rsna(tmp_path, patients=2, test_images=0)
    csv = tmp_path / "stage_2_train_labels.csv"
    csv.write_text(csv.read_text().replace("Target", "label", 1))
    with pytest.raises(UsageError, match="stage_2_train_labels.csv has no column 'Target'"):
        scan("rsna-pneumonia", tmp_path)
    with pytest.raises(UsageError, match="rsna-pneumonia layout has no option 'uncertainty'"):
        scan("rsna-pneumonia", tmp_path, uncertainty="u-ones")


def test_rsna_task(tmp_path, monkeypatch):
    make_rsna(tmp_path / "raw", patients=12)
    df = check_task("rsna-pneumonia", tmp_path / "raw", tmp_path, monkeypatch)
    spec = get_task("rsna-pneumonia")
    assert (spec.label_type, spec.classes, spec.metric) == ("binary", ("0", "1"), "accuracy")
    assert set(df.loc[df["label"] != "", "label"]) == {"0", "1"}


# ---------------------------------------------------------------- COVIDx

SOURCES = ("cohen", "rsna", "actmed", "sirm", "ricord")


def make_covidx(root: Path, release: str = "v9", patients: int = 10, with_val: bool = False) -> list[tuple]:
    """``{train,test}/`` + headerless space-separated lists; returns (patient, file, class, split) tuples.

    v9: ``train.txt``/``test.txt`` (``val.txt`` too with ``with_val``), classes positive/negative.
    v8: ``train_COVIDx8A.txt``/``test_COVIDx8A.txt``, classes normal/pneumonia/COVID-19.
    Every patient has 1-2 images; patients are listed in one split only.
    """
    classes = ("positive", "negative") if release == "v9" else ("normal", "pneumonia", "COVID-19")
    splits = ("train", "val", "test") if with_val else ("train", "test")
    lists: dict[str, list[str]] = {s: [] for s in splits}
    out = []
    for i in range(patients):
        # Per patient: 3 of 5 to train, then val (when listed) and test.
        split = ("train", "train", "train", "val" if with_val else "train", "test")[i % 5]
        cls = classes[i % len(classes)]
        pid = str(100 + i) if i % 2 else _uuid(i)
        src = SOURCES[i % len(SOURCES)]
        for n in range(1 + i % 2):
            fname = f"{pid}-{n}.png" if src != "rsna" else f"{pid}.png"
            if src == "rsna" and n:
                continue
            write_image(root / split / fname, (14, 14), mode="L")
            lists[split].append(f"{pid} {fname} {cls} {src}")
            out.append((pid, fname, cls, split))
    suffix = ".txt" if release == "v9" else "_COVIDx8A.txt"
    for s, lines in lists.items():
        (root / f"{s}{suffix}").write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("release", ["v9", "v8"])
def test_covidx_both_releases(tmp_path, release):
    made = make_covidx(tmp_path, release)
    es = scan("covidx", tmp_path)
    assert len(es) == len(made)
    for pid, fname, cls, split in made:
        e = es[f"{split}/{fname}"]
        assert (e.label, e.labels, e.group, e.split, e.reason) == (cls, [cls], pid, split, "")
    assert detect_layout(tmp_path).name == "covidx"


def test_covidx_parse_line_formats():
    assert parse_line("419 a-b.jpeg COVID-19 cohen") == ("419", "a-b.jpeg", "COVID-19")
    assert parse_line("3 img.png normal") == ("3", "img.png", "normal")
    assert parse_line("only two") is None


def test_covidx_ingest_val_list_missing_extra_and_unknown(tmp_path):
    raw = tmp_path / "raw"
    made = make_covidx(raw, "v9", patients=14, with_val=True)
    pid, fname, _cls, split = made[0]
    assert split == "train"
    (raw / split / fname).unlink()
    write_image(raw / "train" / "stray.png")  # on disk, in no list
    with open(raw / "train.txt", "a") as fh:
        fh.write("999 odd.png maybe cohen\n")
    write_image(raw / "train" / "odd.png")
    summary, df = ingest(raw, tmp_path / "m.parquet", "covidx")
    assert df.loc[f"train/{fname}", "reason"] == "listed in train.txt but missing"
    assert df.loc["train/odd.png", "reason"] == "unknown class 'maybe' in train.txt"
    assert summary["unlisted"] == 1 and any("1 image files are not listed" in w for w in summary["warnings"])
    ok = df[(df["status"] == "ok") & (df["label"] != "")]
    assert set(ok["split_source"]) == {"official"}  # val.txt given: nothing derived
    for _pid, name, _c, listed in made[1:]:
        assert df.loc[f"{listed}/{name}", "split"] == listed
    assert_no_group_leak(df)


def test_covidx_damaged_copy(tmp_path):
    make_covidx(tmp_path, "v9", patients=4)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(UsageError, match="has no test.txt .*covidx layout"):
        scan("covidx", tmp_path)


def test_covidx_task_old_release_val_carved(tmp_path, monkeypatch):
    make_covidx(tmp_path / "raw", "v8", patients=18)
    df = check_task("covidx", tmp_path / "raw", tmp_path, monkeypatch)
    ok = df[df["status"] == "ok"]
    assert set(ok["label"]) == {"normal", "pneumonia", "COVID-19"}
    assert set(ok.loc[ok["split"] == "val", "split_source"]) == {"derived"}


# ---------------------------------------------------------------- ChestX-ray14 (existing layout)


def test_chestxray14_task_v2020_header(tmp_path, monkeypatch):
    rows = make_cxr14(tmp_path / "raw", patients=8, sex_column="Patient Sex")
    shutil.move(tmp_path / "raw" / "Data_Entry_2017.csv", tmp_path / "raw" / "Data_Entry_2017_v2020.csv")
    df = check_task("chestxray14", tmp_path / "raw", tmp_path, monkeypatch)
    spec = get_task("chestxray14")
    assert len(spec.classes) == 14 and "No Finding" not in spec.classes and spec.metric == "auroc"
    assert len(df) == len(rows) and (df["status"] == "ok").all()
    test = {r["name"] for r in rows if r["split"] == "test"}
    assert set(df.loc[df["split"] == "test", "path"].str.removeprefix("images/")) == test
    assert_no_group_leak(df)


def test_chexpert_records_sex_age_and_view(tmp_path):
    rows = make_chexpert(tmp_path, train_patients=4, valid_patients=1)
    es = scan("chexpert", tmp_path, frontal_only="no")
    front = es["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]
    assert front.meta == {"sex": "male", "age": "40", "view": "AP"}
    lateral = es["CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg"]
    assert lateral.meta["view"] == "lateral"
    assert es["CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg"].meta["sex"] == "female"
    assert len(es) == len(rows)

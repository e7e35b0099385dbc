"""Pathology benchmark layouts and tasks: BreakHis, PCam (HDF5 members), MHIST, NCT-CRC."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ingest_fixtures import make_nct, write_image

from midol_cli.data import readers
from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.tasks import get_task, resolve_data, task_options

# subtype folder -> tumour-type code in the patient folder and file names
BREAKHIS_TYPES = {
    "adenosis": "A",
    "fibroadenoma": "F",
    "phyllodes_tumor": "PT",
    "tubular_adenoma": "TA",
    "ductal_carcinoma": "DC",
    "lobular_carcinoma": "LC",
    "mucinous_carcinoma": "MC",
    "papillary_carcinoma": "PC",
}
MAGS = ("40X", "100X", "200X", "400X")
PCAM = "camelyonpatch_level_2_split_{}_{}"
MHIST_HEADER = "Image Name,Majority Vote Label,Number of Annotators who Selected SSA (Out of 7),Partition"


def scan(name: str, root: Path, **extra) -> dict:
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(extra=extra))}


def ingest(root: Path, tmp_path: Path, layout: str, **extra):
    out = tmp_path / "out" / f"{layout}.parquet"
    summary = ingest_folder(
        root, "pathology", layout=layout, out=out, workers=1, layout_options=LayoutOptions(extra=extra)
    )
    df, _ = read_manifest(out)
    return summary, df


def make_breakhis(root: Path, patients_per_subtype: int = 2, per_mag: int = 1) -> list[dict[str, str]]:
    """The BreaKHis tree: ``BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/``
    ``SOB_<B|M>_<T>_14-<id>/<mag>/...``."""
    rows = []
    pid = 10000
    for k, (subtype, code) in enumerate(BREAKHIS_TYPES.items()):
        cls, letter = ("benign", "B") if k < 4 else ("malignant", "M")
        for p in range(patients_per_subtype):
            pid += 137
            patient = f"14-{pid}" + ("AB" if p == 1 else "")
            pdir = f"BreaKHis_v1/histology_slides/breast/{cls}/SOB/{subtype}/SOB_{letter}_{code}_{patient}"
            for mag in MAGS:
                for n in range(1, per_mag + 1):
                    rel = f"{pdir}/{mag}/SOB_{letter}_{code}-{patient}-{mag[:-1]}-{n:03d}.png"
                    write_image(root / rel, (12, 8))
                    rows.append({"path": rel, "cls": cls, "subtype": subtype, "patient": patient, "mag": mag})
    return rows


def make_pcam(
    root: Path, n: dict[str, int] | None = None, meta: tuple[str, ...] = ("train", "valid")
) -> dict:
    """The six PCam HDF5 files (x [N,96,96,3] uint8, y [N,1,1,1] uint8) and meta CSVs for ``meta``.

    The train meta CSV carries pandas' unnamed index column, the valid one does not (both
    forms are around). Patch i of split s belongs to slide ``<s>_wsi_<i // 2>``; y = i % 2.
    """
    n = n or {"train": 8, "valid": 4, "test": 4}
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, count in n.items():
        rng = np.random.default_rng(sum(map(ord, split)))
        x = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(count) % 2).astype(np.uint8).reshape(count, 1, 1, 1)
        with h5py.File(root / f"{PCAM.format(split, 'x')}.h5", "w") as fh:
            fh.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
        with h5py.File(root / f"{PCAM.format(split, 'y')}.h5", "w") as fh:
            fh.create_dataset("y", data=y)
        wsi = [f"{split}_wsi_{i // 2}" for i in range(count)]
        if split in meta:
            index_col = split == "train"
            lines = [("," if index_col else "") + "coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
            for i in range(count):
                lead = f"{i}," if index_col else ""
                lines.append(f"{lead}{96 * i},{48 * i},{bool(y[i, 0, 0, 0])},{bool(y[i, 0, 0, 0])},{wsi[i]}")
            (root / f"{PCAM.format(split, 'meta')}.csv").write_text("\n".join(lines) + "\n")
        out[split] = (x, y.reshape(-1), wsi)
    return out


def make_mhist(root: Path, n: int = 16) -> list[dict[str, str]]:
    """``annotations.csv`` (exact header) + ``images/MHIST_<xxx>.png``; every fourth image in test."""
    rows, lines = [], [MHIST_HEADER]
    for i in range(n):
        name = f"MHIST_{chr(97 + i // 26 % 26)}{chr(97 + i % 26)}{chr(97 + (i * 7) % 26)}.png"
        label = "SSA" if i % 3 == 0 else "HP"
        votes = 5 if label == "SSA" else 1
        split = "test" if i % 4 == 0 else "train"
        write_image(root / "images" / name, (16, 16))
        lines.append(f"{name},{label},{votes},{split}")
        rows.append({"name": name, "label": label, "split": split})
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return rows


# ---------------------------------------------------------------- BreakHis


def test_breakhis_path_gives_class_subtype_patient_magnification(tmp_path):
    rows = make_breakhis(tmp_path)
    assert detect_layout(tmp_path).name == "breakhis"
    es = scan("breakhis", tmp_path)
    assert len(es) == len(rows) == 64
    for r in rows:
        e = es[r["path"]]
        assert (e.label, e.labels, e.group, e.split, e.reason) == (
            r["subtype"],
            [r["subtype"]],
            r["patient"],
            None,
            "",
        )
    assert {e.group for e in es.values()} >= {"14-10137", "14-10274AB"}
    binary = scan("breakhis", tmp_path, label="binary")
    assert {p: e.label for p, e in binary.items()} == {r["path"]: r["cls"] for r in rows}
    only = scan("breakhis", tmp_path, magnification="40x")
    kept = {p for p, e in only.items() if not e.reason}
    assert kept == {r["path"] for r in rows if r["mag"] == "40X"}
    skipped = next(e for p, e in only.items() if "/100X/" in p)
    assert skipped.reason == "magnification 100X not selected (magnification=40X)"


def test_breakhis_root_may_be_any_folder_above_the_classes(tmp_path):
    rows = make_breakhis(tmp_path / "raw", patients_per_subtype=1)
    inner = tmp_path / "raw" / "BreaKHis_v1"
    assert detect_layout(inner).name == "breakhis"
    es = scan("breakhis", inner)
    assert set(es) == {r["path"].removeprefix("BreaKHis_v1/") for r in rows}
    # Kaggle's copy nests BreaKHis_v1 twice.
    shutil.move(inner, tmp_path / "k" / "BreaKHis_v1" / "BreaKHis_v1")
    assert detect_layout(tmp_path / "k").name == "breakhis" and len(scan("breakhis", tmp_path / "k")) == len(
        rows
    )


def test_breakhis_ingest_keeps_patients_together(tmp_path):
    rows = make_breakhis(tmp_path / "raw", patients_per_subtype=3)
    write_image(tmp_path / "raw" / "BreaKHis_v1" / "README.png")  # outside the pattern
    summary, df = ingest(tmp_path / "raw", tmp_path, "breakhis", label="binary", magnification="200X")
    assert summary["ok"] == len(rows) // 4 + 1 and summary["rejected"] == len(rows) * 3 // 4
    assert list(summary["rejects_by_reason"]) == [
        f"magnification {m} not selected" for m in ("100X", "400X", "40X")
    ]
    assert summary["unlisted"] == 1 and summary["groups_across_splits"] == 0
    ok = df[(df["status"] == "ok") & (df["label"] != "")]
    assert set(ok["label"]) == {"benign", "malignant"} and ok["group"].nunique() == 24
    assert (ok.groupby("group")["split"].nunique() == 1).all()
    assert set(ok["split"]) == {"train", "val", "test"}


def test_breakhis_options_are_checked(tmp_path):
    make_breakhis(tmp_path, patients_per_subtype=1)
    with pytest.raises(
        UsageError, match=r"magnification='50X' of the breakhis layout must be one of 40X, 100X"
    ):
        scan("breakhis", tmp_path, magnification="50X")
    with pytest.raises(UsageError, match="breakhis layout has no option 'zoom'"):
        scan("breakhis", tmp_path, zoom="40X")
    spec = get_task("breakhis-8class")
    assert task_options(spec, ["magnification=400X"]) == {"label": "subtype", "magnification": "400X"}
    with pytest.raises(UsageError, match="has no option 'label'"):
        task_options(spec, ["label=binary"])


# ---------------------------------------------------------------- PCam (HDF5)


def test_split_member_only_matches_hdf5_indices():
    assert readers.split_member("a/camelyonpatch_level_2_split_train_x.h5#12") == (
        "a/camelyonpatch_level_2_split_train_x.h5",
        12,
    )
    assert readers.split_member("x.HDF5#0") == ("x.HDF5", 0)
    for path in ("scan#1.png", "x.h5", "x.h5#", "x.h5#-1", "x.h5#1a", "x.h5#١"):
        assert readers.split_member(path) is None, path
    assert readers.split_member(readers.member_path("d/x.h5", 7)) == ("d/x.h5", 7)


def test_read_image_of_an_hdf5_member(tmp_path):
    made = make_pcam(tmp_path)
    x_file = tmp_path / f"{PCAM.format('train', 'x')}.h5"
    res = readers.read_image(f"{x_file}#3")
    assert (res.width, res.height, res.channels, res.format, res.bit_depth, res.intensity) == (
        96, 96, 3, "HDF5", 8, ""
    )
    assert np.array_equal(np.asarray(res.image), made["train"][0][3])
    data, st = readers.read_file_bytes(f"{x_file}#3")
    assert st.st_size == x_file.stat().st_size
    # The bytes are the patch as .npy: equal patches hash equally, different ones do not.
    assert np.array_equal(np.load(io.BytesIO(data)), made["train"][0][3])
    assert data == readers.read_file_bytes(f"{x_file}#3")[0] != readers.read_file_bytes(f"{x_file}#4")[0]
    with pytest.raises(readers.ImageRejected, match=r"HDF5 index out of range \(8 of 8\)"):
        readers.read_image(f"{x_file}#8")
    with pytest.raises(readers.ImageRejected, match=r"over pixel cap \(96 x 96\)"):
        readers.read_image(f"{x_file}#0", max_pixels=96 * 95)
    with pytest.raises(readers.ImageRejected, match="file not found"):
        readers.read_image(f"{tmp_path / 'nope.h5'}#0")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5 at all" * 20)
    with pytest.raises(readers.ImageRejected, match="unreadable HDF5"):
        readers.read_image(f"{tmp_path / 'fake.h5'}#0")


def test_hdf5_member_grayscale_16bit_and_missing_h5py(tmp_path, monkeypatch):
    arr = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5) * 300
    with h5py.File(tmp_path / "stack.h5", "w") as fh:
        fh.create_dataset("images", data=arr)  # the only dataset: used though not called x
    res = readers.read_image(f"{tmp_path / 'stack.h5'}#1")
    assert (res.width, res.height, res.channels, res.bit_depth, res.intensity) == (5, 6, 1, 16, "minmax16to8")
    assert np.asarray(res.image).min() == 0 and np.asarray(res.image).max() == 255
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(readers.ImageRejected, match=r"HDF5 image needs h5py: pip install 'midol\[hdf5\]'"):
        readers.read_image(f"{tmp_path / 'stack.h5'}#0")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / f"{PCAM.format('test', 'y')}.h5").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"needs h5py: pip install 'midol\[hdf5\]'"):
        scan("pcam", tmp_path / "p")


def test_pcam_entries_labels_groups_official_splits(tmp_path):
    made = make_pcam(tmp_path, meta=("train", "valid"))
    assert detect_layout(tmp_path).name == "pcam"
    es = scan("pcam", tmp_path)
    assert len(es) == 16
    for split, official in (("train", "train"), ("valid", "val"), ("test", "test")):
        _, y, wsi = made[split]
        for i in range(len(y)):
            e = es[f"{PCAM.format(split, 'x')}.h5#{i}"]
            assert (e.label, e.split, e.reason) == (("normal", "tumor")[y[i]], official, "")
            # No meta CSV for test: each patch is its own group (ingest falls back to the path).
            assert e.group == (wsi[i] if split != "test" else "")


def test_pcam_ingest_hashes_patches_and_reuses_rows(tmp_path):
    root = tmp_path / "raw"
    made = make_pcam(root)
    # Patch 5 of train is an exact copy of patch 0 of test.
    with h5py.File(root / f"{PCAM.format('train', 'x')}.h5", "r+") as fh:
        fh["x"][5] = made["test"][0][0]
    summary, df = ingest(root, tmp_path, "pcam")
    assert summary["ok"] == 16 and summary["rejected"] == 0 and summary["unlisted"] == 0
    assert summary["per_split"] == {"train": 8, "val": 4, "test": 4}
    assert set(df["split_source"]) == {"official"} and set(df["format"]) == {"HDF5"}
    row = df[df["path"] == f"{PCAM.format('valid', 'x')}.h5#2"].iloc[0]
    data, _ = readers.read_file_bytes(f"{root / PCAM.format('valid', 'x')}.h5#2")
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and (row["width"], row["height"]) == (96, 96)
    assert summary["duplicates"] == 1 and summary["duplicates_across_splits"] == 1
    assert summary["groups_across_splits"] == 0
    # A second run reads nothing; touching one container re-reads only its patches.
    again = ingest_folder(root, "pathology", layout="pcam", out=tmp_path / "out" / "pcam.parquet", workers=1)
    assert (again["decoded"], again["reused"]) == (0, 16)
    os.utime(root / f"{PCAM.format('valid', 'x')}.h5", ns=(1, 1))
    again = ingest_folder(root, "pathology", layout="pcam", out=tmp_path / "out" / "pcam.parquet", workers=1)
    assert (again["decoded"], again["reused"]) == (4, 12)


def test_pcam_damaged_downloads(tmp_path):
    make_pcam(tmp_path / "a")
    meta = tmp_path / "a" / f"{PCAM.format('valid', 'meta')}.csv"
    meta.write_text(meta.read_text().replace(",wsi", ",slide", 1))
    with pytest.raises(UsageError, match="camelyonpatch_level_2_split_valid_meta.csv has no column 'wsi'"):
        scan("pcam", tmp_path / "a")
    meta.write_text("coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n0,0,False,False,w\n")
    with pytest.raises(
        UsageError, match="has 1 rows but camelyonpatch_level_2_split_valid_y.h5 has 4 labels"
    ):
        scan("pcam", tmp_path / "a")
    meta.unlink()
    (tmp_path / "a" / f"{PCAM.format('test', 'y')}.h5").unlink()
    with pytest.raises(
        UsageError, match=r"split_test_y.h5' is missing beside camelyonpatch_level_2_split_test_x.h5"
    ):
        scan("pcam", tmp_path / "a")
    # A missing x file: its patches are rejected rows, the run goes on.
    make_pcam(tmp_path / "b", n={"valid": 3})
    (tmp_path / "b" / f"{PCAM.format('valid', 'x')}.h5").unlink()
    es = scan("pcam", tmp_path / "b")
    assert {e.reason for e in es.values()} == {"camelyonpatch_level_2_split_valid_x.h5 is missing"}
    # Still gzipped, as downloaded.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / f"{PCAM.format('train', 'x')}.h5.gz").write_bytes(b"\x1f\x8b")
    assert detect_layout(tmp_path / "c").name == "pcam"
    with pytest.raises(UsageError, match="decompress them"):
        scan("pcam", tmp_path / "c")


# ---------------------------------------------------------------- MHIST


def test_mhist_labels_official_partition_and_rejects(tmp_path):
    rows = make_mhist(tmp_path)
    assert detect_layout(tmp_path).name == "mhist"
    with open(tmp_path / "annotations.csv", "a") as fh:
        fh.write("MHIST_zzz.png,HP,0,train\nMHIST_zzy.png,TA,3,test\n")
    write_image(tmp_path / "images" / "MHIST_zzy.png")
    es = scan("mhist", tmp_path)
    for r in rows:
        e = es[f"images/{r['name']}"]
        assert (e.label, e.split, e.group, e.reason) == (r["label"], r["split"], r["name"][:-4], "")
    assert es["images/MHIST_zzz.png"].reason == "listed in annotations.csv but missing"
    assert es["images/MHIST_zzy.png"].reason == "invalid Majority Vote Label 'TA' in annotations.csv"


def test_mhist_ingest_keeps_official_test_and_carves_val(tmp_path):
    rows = make_mhist(tmp_path / "raw", n=24)
    summary, df = ingest(tmp_path / "raw", tmp_path, "mhist")
    got = dict(zip(df["path"], df["split"], strict=True))
    assert {got[f"images/{r['name']}"] for r in rows if r["split"] == "test"} == {"test"}
    assert {got[f"images/{r['name']}"] for r in rows if r["split"] == "train"} == {"train", "val"}
    assert summary["per_split"]["test"] == 6


def test_mhist_damaged_download(tmp_path):
    make_mhist(tmp_path, n=2)
    csv = tmp_path / "annotations.csv"
    csv.write_text(csv.read_text().replace("Majority Vote Label", "Label", 1))
    with pytest.raises(UsageError, match="annotations.csv has no column 'Majority Vote Label'"):
        scan("mhist", tmp_path)
    csv.write_text(MHIST_HEADER + "\nMHIST_aaa.png,HP,0,holdout\n")
    with pytest.raises(UsageError, match="unknown split value 'holdout'"):
        scan("mhist", tmp_path)
    csv.unlink()
    with pytest.raises(UsageError, match="has no annotations.csv"):
        scan("mhist", tmp_path)


# ---------------------------------------------------------------- tasks


def _make_nct_with_test(root: Path) -> None:
    make_nct(root)
    for cls in ("ADI", "TUM"):
        write_image(root / "CRC-VAL-HE-7K" / cls / f"{cls}-TCGA-AAAAAAAA.tif", (16, 16), fmt="TIFF")


@pytest.mark.parametrize(
    ("task", "make", "label_type", "metric"),
    [
        ("breakhis-binary", make_breakhis, "binary", "accuracy"),
        ("breakhis-8class", make_breakhis, "multiclass", "accuracy"),
        ("pcam", make_pcam, "binary", "auroc"),
        ("mhist", make_mhist, "binary", "auroc"),
        ("nct-crc", _make_nct_with_test, "multiclass", "accuracy"),
    ],
)
def test_tasks_agree_with_their_layouts(tmp_path, monkeypatch, task, make, label_type, metric):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # resolve_data ingests in-process
    spec = get_task(task)
    assert (spec.modality, spec.label_type, spec.metric) == ("pathology", label_type, metric)
    (tmp_path / "raw").mkdir()
    make(tmp_path / "raw")
    emitted = {e.label for e in scan(spec.layout, tmp_path / "raw", **dict(spec.layout_options)).values()}
    assert emitted and emitted <= set(spec.classes)
    df, meta = read_manifest(resolve_data(spec, tmp_path / "raw", tmp_path / "cache"), only_ok=True)
    assert meta["layout"] == spec.layout and set(df["label"]) == emitted
    if task == "nct-crc":
        assert set(df.loc[df["path"].str.startswith("CRC-VAL-HE-7K/"), "split"]) == {"test"}
        assert set(df.loc[df["path"].str.startswith("NCT-CRC-HE-100K/"), "split"]) == {"train", "val"}


def test_breakhis_task_classes_match_the_layout():
    from midol_cli.data.layouts.breakhis import BINARY, SUBTYPES

    assert get_task("breakhis-binary").classes == BINARY
    assert get_task("breakhis-8class").classes == SUBTYPES == tuple(BREAKHIS_TYPES)
    assert get_task("breakhis-binary").user_options == ("magnification",)


def test_pcam_patches_go_through_shard_and_verify(tmp_path):
    """HDF5 members (``x.h5#i``) are read, hashed and re-encoded by the shard writer like files."""
    from midol_cli.data.shards import ShardParams, verify_shards, write_shards

    root = tmp_path / "pcam"
    make_pcam(root)
    man = tmp_path / "pcam.parquet"
    ingest_folder(root, "pathology", layout="pcam", out=man, workers=1)
    idx = write_shards([man], tmp_path / "shards", ShardParams(max_side=64, min_shards=1))
    df, _ = read_manifest(man, only_ok=True)
    assert idx["totals"]["samples"] == len(df[df["duplicate_of"] == ""]) > 0
    assert all(c.ok for c in verify_shards(tmp_path / "shards"))

"""OCT benchmark layouts and tasks: OCTID (class folders) and OCT2017 (official test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ingest_fixtures import make_oct, write_image

from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout, get_layout
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError
from midol_cli.tasks import get_task, layout_description, resolve_data

# The per-class archives as they unpack (the AMD archive is spelled "AMRD"), and the
# long spellings some mirrors use.
OCTID_FOLDERS = {"NORMAL": "normal", "AMRD": "AMD", "CSR": "CSR", "DR": "DR", "MH": "MH"}
OCTID_LONG = {
    "Normal": "normal",
    "ARMD": "AMD",
    "CSCR": "CSR",
    "Diabetic Retinopathy": "DR",
    "Macular Hole": "MH",
}


def make_octid(root: Path, per_class: int = 6, folders: dict[str, str] = OCTID_FOLDERS) -> dict[str, str]:
    """``<class folder>/<FOLDER><n>.jpeg``; returns {relative path: expected label}."""
    out = {}
    for folder, label in folders.items():
        for n in range(1, per_class + 1):
            rel = f"{folder}/{folder.replace(' ', '')}{n}.jpeg"
            write_image(root / rel, (20, 12), mode="L")
            out[rel] = label
    return out


def scan(name: str, root: Path, **extra) -> dict:
    return {e.path: e for e in get_layout(name).scan(root, LayoutOptions(extra=extra))}


def ingest(root: Path, tmp_path: Path, layout: str, **extra):
    out = tmp_path / "out" / f"{layout}.parquet"
    summary = ingest_folder(
        root, "oct", layout=layout, out=out, workers=1, layout_options=LayoutOptions(extra=extra)
    )
    df, _ = read_manifest(out)
    return summary, df


def test_octid_class_folders_map_to_task_labels(tmp_path):
    made = make_octid(tmp_path / "a", per_class=2)
    assert detect_layout(tmp_path / "a").name == "octid"
    es = scan("octid", tmp_path / "a")
    assert {p: e.label for p, e in es.items()} == made
    e = es["AMRD/AMRD1.jpeg"]
    assert (e.labels, e.group, e.split, e.reason) == (["AMD"], "AMRD/AMRD1", None, "")
    # Long spellings, one level down in an OCTID/ folder.
    long = make_octid(tmp_path / "b" / "OCTID", per_class=1, folders=OCTID_LONG)
    assert detect_layout(tmp_path / "b").name == "octid"
    es = scan("octid", tmp_path / "b")
    assert {p: e.label for p, e in es.items()} == {f"OCTID/{p}": lab for p, lab in long.items()}


def test_octid_ingest_derives_a_stratified_split(tmp_path):
    made = make_octid(tmp_path / "raw", per_class=6)
    summary, df = ingest(tmp_path / "raw", tmp_path, "octid")
    assert summary["ok"] == len(made) == 30 and summary["rejected"] == 0 and not summary["warnings"]
    assert dict(zip(df["path"], df["label"], strict=True)) == made
    assert set(df["split_source"]) == {"derived"}
    per = summary["per_split"]
    assert sum(per.values()) == 30 and per["train"] > per["val"] > 0 and per["train"] > per["test"] > 0
    # Stratified: every class is learned (in train) and evaluated (in val or test).
    for label, counts in summary["per_label_split"].items():
        assert counts["train"] >= 3 and counts["val"] + counts["test"] >= 1, label
    assert summary["groups_across_splits"] == 0


def test_octid_stray_folder_is_counted_and_options_refused(tmp_path):
    make_octid(tmp_path / "raw", per_class=2)
    write_image(tmp_path / "raw" / "misc" / "scan.jpeg")
    summary, df = ingest(tmp_path / "raw", tmp_path, "octid")
    assert summary["unlisted"] == 1 and "1 image files are not listed" in summary["warnings"][0]
    assert df.loc[df["path"] == "misc/scan.jpeg", "label"].item() == ""
    with pytest.raises(UsageError, match="octid layout has no option 'magnification'"):
        scan("octid", tmp_path / "raw", magnification="40X")


def test_oct2017_official_test_and_val_carved_by_patient(tmp_path):
    made = make_oct(tmp_path / "raw", patients_per_class=4, images_per_patient=2)
    summary, df = ingest(tmp_path / "raw", tmp_path, "oct2017")
    official = {rel: split for rel, _, split in made}
    got = dict(zip(df["path"], df["split"], strict=True))
    assert all(got[rel] == "test" for rel, s in official.items() if s == "test")
    assert {got[rel] for rel, s in official.items() if s == "train"} == {"train", "val"}
    test_rows = df[df["split"] == "test"]
    assert set(test_rows["split_source"]) == {"official"} and len(test_rows) == 8
    assert (df.groupby("group")["split"].nunique() == 1).all()


@pytest.mark.parametrize(("task", "make"), [("octid", make_octid), ("oct2017", make_oct)])
def test_tasks_agree_with_their_layouts(tmp_path, monkeypatch, task, make):
    # resolve_data ingests with min(4, CPUs) workers: one here, so no process pool in a unit test.
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    spec = get_task(task)
    assert spec.modality == "oct" and spec.metric == "accuracy" and spec.label_type == "multiclass"
    make(tmp_path / "raw")
    emitted = {e.label for e in scan(spec.layout, tmp_path / "raw", **dict(spec.layout_options)).values()}
    assert emitted and emitted <= set(spec.classes)
    manifest = resolve_data(spec, tmp_path / "raw", tmp_path / "cache")
    assert manifest.is_relative_to(tmp_path / "cache")
    df, meta = read_manifest(manifest, only_ok=True)
    assert meta["layout"] == spec.layout and set(df["label"]) == emitted
    assert set(df["split"]) == {"train", "val", "test"}


def test_octid_task_classes_and_shown_layout():
    from midol_cli.data.layouts.octid import CLASSES

    assert get_task("octid").classes == CLASSES
    # `midol tasks show octid` prints the folder names a user has to have.
    assert "{NORMAL,AMRD,CSR,DR,MH}" in layout_description(get_task("octid"))

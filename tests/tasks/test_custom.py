"""User-defined tasks: task files, `--task auto`, and their one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from midol_cli.errors import UsageError
from midol_cli.tasks import TASKS, resolve_task
from midol_cli.tasks.custom import auto_tasks, complete_classes, load_task_file


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_task_file_becomes_a_task_spec(tmp_path):
    _write(tmp_path / "labels.csv", "image,grade,patient\na.png,0,p1\n")
    f = _write(tmp_path / "dr.yaml", (
        "name: hospital-dr\nmodality: fundus\nlabel_type: ordinal\nclasses: ['0', '1', '2']\nmetric: qwk\n"
        "labels: labels.csv\npath_column: image\nlabel_column: grade\ngroup_column: patient\n"
    ))
    spec = resolve_task(str(f))
    assert (spec.name, spec.modality, spec.label_type, spec.classes, spec.metric) == (
        "hospital-dr", "fundus", "ordinal", ("0", "1", "2"), "qwk")
    opts = dict(spec.ingest_options)
    assert spec.layout == "csv" and opts["labels"] == str((tmp_path / "labels.csv").resolve())
    assert opts["label_col"] == "grade" and opts["group_col"] == "patient"
    assert spec.origin == str(f.resolve())


def test_task_file_defaults_and_classes_from_the_data(tmp_path):
    f = _write(tmp_path / "t.yaml", "name: mine\nmodality: dermoscopy\nlabel_type: multiclass\n")
    spec = load_task_file(f)
    assert spec.classes == () and spec.metric == "balanced_accuracy" and spec.layout == ""
    df = pd.DataFrame({"modality": ["dermoscopy"] * 3 + ["oct"], "label": ["nv", "mel", "nv", "CNV"],
                       "labels": [["nv"], ["mel"], ["nv"], ["CNV"]]})
    assert complete_classes(spec, df, "data").classes == ("mel", "nv")
    with pytest.raises(UsageError, match="only the class 'nv'"):
        complete_classes(spec, df.iloc[[0, 2]], "data")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("name: a b\nmodality: oct\nlabel_type: multiclass\n", "name"),
        ("name: t\nmodality: oct\nlabel_type: ordinal\n", "grade order"),
        ("name: t\nmodality: oct\nlabel_type: binary\nclasses: [a, b, c]\n", "exactly two"),
        ("name: t\nmodality: oct\nlabel_type: multiclass\nmetric: qwk\n", "metric 'qwk'"),
        ("name: t\nmodality: oct\nlabel_type: multiclass\nlabel_colum: x\n", "unknown key"),
        ("name: t\nmodality: fondus\nlabel_type: multiclass\n", "fundus"),
        (
            "name: t\nmodality: oct\nlabel_type: multiclass\n"
            "labels: nope.csv\npath_column: p\nlabel_column: l\n",
            "does not exist",
        ),
    ],
)
def test_bad_task_files_are_one_line_errors(tmp_path, body, fragment):
    f = _write(tmp_path / "t.yaml", body)
    with pytest.raises(UsageError, match=fragment) as e:
        resolve_task(str(f))
    assert "\n" not in str(e.value)


def _manifest(tmp_path, labels, modality="fundus", name="m.parquet"):
    from midol_cli.artifacts import MANIFEST_COLUMNS
    from midol_cli.data.manifest import empty_row, write_manifest

    rows = []
    for i, lab in enumerate(labels):
        r = empty_row()
        names = lab.split("|") if lab else []
        r.update(sample_id=f"s{i}", path=f"{i}.png", modality=modality, dataset="clinic-A", label=lab,
                 labels=names, group=f"g{i}", split=["train", "val", "test"][i % 3], status="ok")
        rows.append(r)
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    out = tmp_path / name
    write_manifest(df, {"root": str(tmp_path)}, out)
    return out


def test_auto_reads_label_type_and_classes_from_the_manifest(tmp_path):
    spec = resolve_task("auto", _manifest(tmp_path, ["a", "b", "a", "c"] * 3))
    assert (spec.name, spec.label_type, spec.classes, spec.metric) == (
        "auto-clinic-A", "multiclass", ("a", "b", "c"), "balanced_accuracy")
    assert (
        resolve_task("auto", _manifest(tmp_path, ["neg", "pos"] * 3, name="b.parquet")).label_type == "binary"
    )
    ml = resolve_task("auto", _manifest(tmp_path, ["x|y", "x", "", "y"] * 2, name="c.parquet"))
    assert ml.label_type == "multilabel" and ml.metric == "auroc" and ml.classes == ("x", "y")


def test_auto_refuses_unlabelled_and_one_class_data(tmp_path):
    with pytest.raises(UsageError, match="has no labels"):
        resolve_task("auto", _manifest(tmp_path, [""] * 6))
    with pytest.raises(UsageError, match="only the class 'a'"):
        resolve_task("auto", _manifest(tmp_path, ["a"] * 6, name="one.parquet"))
    with pytest.raises(UsageError, match="needs --data"):
        resolve_task("auto")


def test_auto_gives_one_task_per_labelled_modality():
    df = pd.DataFrame(
        {
            "modality": ["oct", "oct", "xray", "xray", "fundus"],
            "label": ["A", "B", "n", "m", ""],
            "labels": [["A"], ["B"], ["n"], ["m"], []],
            "dataset": ["o", "o", "x", "x", "f"],
            "status": ["ok"] * 5,
        }
    )
    specs = auto_tasks(df, "shards")
    assert [(s.modality, s.name) for s in specs] == [("oct", "auto-o"), ("xray", "auto-x")]
    # two modalities in one dataset layout (a look-alike of fundus ingested as APTOS) stay two tasks
    same = df.assign(dataset=["aptos2019"] * 4 + ["f"], modality=["slo", "slo", "fundus", "fundus", "oct"])
    assert [s.name for s in auto_tasks(same, "shards")] == ["auto-aptos2019-fundus", "auto-aptos2019-slo"]


def test_builtin_names_still_resolve_and_suggest():
    assert resolve_task("synth-oct") is TASKS["synth-oct"]
    with pytest.raises(UsageError, match="did you mean 'synth-oct'"):
        resolve_task("synth-ocd")


def test_task_file_with_indicator_columns_ingests_a_raw_folder(tmp_path):
    """A raw folder + a CSV with one 0/1 column per finding: resolve_data ingests it with the csv layout."""
    from midol_cli.data.manifest import read_manifest
    from midol_cli.tasks import resolve_data

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = ["file,effusion,nodule,pid"]
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(raw / f"img{i}.png")
        lines.append(f"img{i}.png,{i % 2},{1 if i % 3 == 0 else 0},p{i // 2}")
    _write(tmp_path / "findings.csv", "\n".join(lines) + "\n")
    f = _write(
        tmp_path / "cxr.yaml",
        (
            "name: cxr-findings\nmodality: xray\nlabel_type: multilabel\n"
            "labels: findings.csv\npath_column: file\n"
            "label_column: [effusion, nodule]\ngroup_column: pid\n"
        ),
    )
    spec = resolve_task(str(f))
    man = resolve_data(spec, raw, tmp_path / "cache")
    df, _ = read_manifest(man, only_ok=True)
    assert len(df) == 12
    got = dict(zip(df["path"], df["labels"].apply(tuple), strict=True))
    assert (
        got["img0.png"] == ("nodule",) and got["img3.png"] == ("effusion", "nodule") and got["img2.png"] == ()
    )
    assert df.groupby("group")["split"].nunique().max() == 1  # patients stay in one split


def test_task_file_and_auto_run_end_to_end(tmp_path):
    """probe --task FILE on a raw folder with a labels CSV, and probe/finetune --task auto on its manifest."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.outputs import export_initial

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    raw = tmp_path / "clinic"
    raw.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,finding,patient,site"]
    for i in range(60):
        cls = ["clear", "spots"][i % 2]
        img = rng.integers(90, 110, (48, 48, 3), dtype=np.uint8)
        if cls == "spots":
            for _ in range(6):
                y, x = rng.integers(4, 44, 2)
                img[y - 2:y + 2, x - 2:x + 2] = 250
        Image.fromarray(img).save(raw / f"im{i:03d}.png")
        lines.append(f"im{i:03d}.png,{cls},p{i // 2},{'AB'[i // 2 % 2]}")
    _write(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    task = _write(tmp_path / "spots.yaml", (
        "name: clinic-spots\nmodality: dermoscopy\nlabel_type: binary\nclasses: [clear, spots]\n"
        "labels: labels.csv\npath_column: file\nlabel_column: finding\ngroup_column: patient\n"
        "subgroup_columns: [site]\ngroup_unit: patient\n"
    ))
    recipe = load_recipe(PretrainRecipe, root / "recipes" / "smoke.yaml", ["data.modalities=[dermoscopy]"])
    export_initial(recipe, tmp_path / "model")

    def midol(*args):
        res = subprocess.run([sys.executable, "-m", "midol_cli", *map(str, args)], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    out = tmp_path / "results"
    midol("probe", "--task", task, "--weights", tmp_path / "model", "--data", raw, "--out", out,
          "--fractions", "1.0", "--seeds", "1", "--n-boot", "50", "--workers", "0")
    s = json.loads((out / "model" / "clinic-spots" / "summary.json").read_text())
    assert s["task"]["classes"] == ["clear", "spots"] and s["primary_metric"] == "auroc"
    assert s["n"]["test"] > 0 and s["chance"]["auroc"] == 0.5
    # The task file's subgroup column reaches the manifest and the results; its patients have two images.
    site = s["protocols"]["linear"]["subgroups"]["columns"]["site"]
    assert {g["value"] for g in site["groups"]} <= {"A", "B"} and site["missing"] == 0
    assert s["protocols"]["linear"]["patient_level"]["n_groups"] == s["n"]["test"] // 2

    man = next((tmp_path / "cache" / "manifests").glob("clinic-spots-*.parquet"))
    midol("probe", "--task", "auto", "--weights", tmp_path / "model", "--data", man, "--out", out,
          "--fractions", "1.0", "--seeds", "1", "--n-boot", "50", "--workers", "0")
    auto = json.loads((out / "model" / "auto-clinic" / "summary.json").read_text())
    assert auto["task"]["label_type"] == "binary" and auto["task"]["classes"] == ["clear", "spots"]
    midol("finetune", "--task", "auto", "--weights", tmp_path / "model", "--data", man, "--out", out,
          "recipes/finetune_smoke.yaml", "epochs=1")
    ft = json.loads((out / "model" / "auto-clinic" / "summary.json").read_text())
    # auto: no columns
    assert "finetune" in ft["protocols"] and "subgroups" not in ft["protocols"]["finetune"]
    assert (out / "model" / "auto-clinic" / "run_finetune" / "best.pt").is_file()
    midol("report", out)


# ------------------------------------------------------------ issue 25.7: one line, not a traceback


def _spec_file(tmp_path, classes: str, label_type: str = "multiclass"):
    body = f"name: mine\nmodality: fundus\nlabel_type: {label_type}\n"
    body += f"classes: {classes}\n" if classes else ""
    return resolve_task(str(_write(tmp_path / "t.yaml", body)))


def test_classes_that_do_not_name_the_data_labels_are_one_line_errors(tmp_path):
    from midol_cli.tasks import resolve_data

    man = _manifest(tmp_path, ["0", "1", "2", "3"] * 3)
    unknown = r"label\(s\) '0', '1', '2', '3' that are not among its classes \('a', 'b'\)"
    with pytest.raises(UsageError, match=unknown) as e:
        resolve_data(_spec_file(tmp_path, "[a, b]"), man, tmp_path / "cache")
    assert "\n" not in str(e.value) and "task mine" in str(e.value)
    with pytest.raises(UsageError, match="none of its classes .'cat', 'dog'. appear in manifest"):
        resolve_data(_spec_file(tmp_path, "[cat, dog]", "multilabel"), man, tmp_path / "cache")
    # classes that name the data's labels pass
    assert resolve_data(_spec_file(tmp_path, "['0', '1', '2', '3']"), man, tmp_path / "cache") == man


def test_a_one_class_test_split_is_refused_before_embedding(tmp_path):
    from midol_cli.tasks import resolve_data

    # split cycles train/val/test: every test image (index 2, 5, 8, ...) is 'a'
    man = _manifest(tmp_path, ["b", "c", "a"] * 4)
    one_class = "the test split of manifest .* holds only the class 'a' .4 images."
    with pytest.raises(UsageError, match=one_class) as e:
        resolve_data(_spec_file(tmp_path, ""), man, tmp_path / "cache")
    assert "split column" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="task auto-clinic-A: the test split of .* holds only the class 'a'"):
        resolve_task("auto", man)


def test_probe_on_a_one_class_test_split_is_one_usage_line(tmp_path, monkeypatch, capsys):
    import sys

    from midol_cli.cli import main

    man = _manifest(tmp_path, ["b", "c", "a"] * 4)
    monkeypatch.setattr(sys, "argv", ["midol", "probe", "--task", "auto", "--weights", str(tmp_path),
                                      "--data", str(man), "--out", str(tmp_path / "results")])
    with pytest.raises(SystemExit) as ex:
        main.run()
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "holds only the class 'a'" in lines[0], err


def test_probe_prints_n_a_for_an_auroc_the_test_split_cannot_define(tmp_path):
    """A multi-label test split where no label has both positive and negative images: the probe runs
    (other labels may be scorable elsewhere) and its summary line says n/a, never a TypeError traceback."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.outputs import export_initial

    root = Path(__file__).resolve().parents[2]
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,x,y,split"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(raw / f"i{i:02d}.png")
        split = ("train", "train", "val", "test", "train")[i % 5]
        x, y = (1, 0) if split == "test" else (i % 2, 1 - i % 2)  # test: every image x only
        lines.append(f"i{i:02d}.png,{x},{y},{split}")
    _write(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    task = _write(tmp_path / "ml.yaml", (
        "name: ml\nmodality: dermoscopy\nlabel_type: multilabel\nclasses: [x, y]\nlabels: labels.csv\n"
        "path_column: file\nlabel_column: [x, y]\nsplit_column: split\n"))
    recipe = load_recipe(PretrainRecipe, root / "recipes" / "smoke.yaml", ["data.modalities=[dermoscopy]"])
    export_initial(recipe, tmp_path / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "midol_cli", "probe", "--task", str(task), "--weights",
                          str(tmp_path / "model"), "--data", str(raw), "--out", str(tmp_path / "r"),
                          "--fractions", "1.0", "--seeds", "1", "--n-boot", "20", "--workers", "0"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "r" / "model" / "ml" / "summary.json").read_text())
    assert s["protocols"]["linear"]["metrics"]["auroc"]["value"] is None
    assert "ml / model: linear auroc n/a [n/a, n/a]" in res.stdout + res.stderr


def _slide_task_folder(tmp_path):
    """16 small Aperio slides (4 tiles each) in one flat folder: the labels come from a CSV that names
    slides (tumor slides a paler stain); patient T0 has two slides."""
    from tests.data.wsi_fixtures import slide_pixels, write_svs

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["slide_file,diagnosis,case"]
    for i in range(16):
        img = slide_pixels(512, 512, (16, 16, 480, 480), seed=i)
        tumor = i % 2 == 1
        if tumor:
            img[16:496, 16:496] = (img[16:496, 16:496] * np.array([0.6, 0.7, 1.0])).astype(np.uint8)
        write_svs(raw / f"s{i:02d}.svs", img, mpp=0.5, app_mag=20, factors=(1, 2))
        case = "T0" if i in (1, 3) else f"{'T' if tumor else 'N'}{i}"
        rows.append(f"s{i:02d},{'tumor' if tumor else 'normal'},{case}")
    (tmp_path / "slides.csv").write_text("\n".join(rows) + "\n")
    return raw


def test_task_file_labels_slides_and_every_tile_inherits(tmp_path):
    """label_level: slide: the labels CSV names slides; resolve_data ingests the raw folder with the slides
    layout, and every tile row of a slide carries its label, its patient as group, and one split."""
    pytest.importorskip("openslide", reason="the wsi extra is not installed")
    pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the test slides")
    from midol_cli.data.manifest import read_manifest, row_meta
    from midol_cli.tasks import resolve_data

    raw = _slide_task_folder(tmp_path)
    f = _write(tmp_path / "slides.yaml", (
        "name: tumour-slides\nmodality: pathology\nlabel_type: binary\nclasses: [normal, tumor]\n"
        "label_level: slide\nlabels: slides.csv\npath_column: slide_file\nlabel_column: diagnosis\n"
        "group_column: case\nlayout_options: {mpp: 0.5, tile: 224, min_tissue: 0.5}\n"
    ))
    spec = resolve_task(str(f))
    assert spec.layout == "slides" and dict(spec.layout_options) == {"mpp": "0.5", "tile": "224",
                                                                    "min_tissue": "0.5"}
    manifest = resolve_data(spec, raw, tmp_path / "cache")
    df, _ = read_manifest(manifest, only_ok=True)
    assert (df["layout"] == "slides").all() and len(df) == 64  # 4 tiles a slide
    slide = [row_meta(m)["slide"] for m in df["meta"]]
    df = df.assign(slide=slide)
    assert df.groupby("slide")["label"].nunique().max() == 1
    want = {f"s{i:02d}.svs": "tumor" if i % 2 else "normal" for i in range(16)}
    assert dict(zip(df["slide"], df["label"], strict=True)) == want
    assert set(df[df["slide"].isin(["s01.svs", "s03.svs"])]["group"]) == {"T0"}  # the patient kept
    assert df["group"].nunique() == 15 and df.groupby("group")["split"].nunique().max() == 1
    assert set(df["split"]) == {"train", "val", "test"}


def test_task_file_labels_volumes_and_every_b_scan_inherits(tmp_path):
    """label_level: volume: every frame of a multi-frame OCT DICOM takes its volume's label; the group is
    the CSV's patient, and --task-option style overrides go through the volumes layout's frames."""
    pytest.importorskip("pydicom")
    from midol_cli.data.manifest import read_manifest, row_meta
    from midol_cli.tasks import resolve_data, task_options
    from tests.data.test_volumes import frames_of, write_opt

    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["volume,label,patient"]
    for i in range(16):
        write_opt(raw / f"v{i:02d}.dcm", frames_of(5) // (1 + i % 2), patient=f"H{i}")
        rows.append(f"v{i:02d}.dcm,{'cnv' if i % 2 else 'normal'},P{i // 2 if i < 2 else i}")
    (tmp_path / "vols.csv").write_text("\n".join(rows) + "\n")
    f = _write(tmp_path / "oct.yaml", (
        "name: oct-volumes\nmodality: oct\nlabel_type: binary\nclasses: [normal, cnv]\n"
        "label_level: volume\nlabels: vols.csv\nlayout_options: {frames: all}\n"
    ))
    spec = resolve_task(str(f))
    assert spec.layout == "volumes"
    opts = task_options(spec, ["frames=central:3"])
    df, _ = read_manifest(resolve_data(spec, raw, tmp_path / "cache", opts), only_ok=True)
    assert len(df) == 16 * 3 and df["path"].str.contains("#frame=").all()
    vol = [row_meta(m)["volume"] for m in df["meta"]]
    assert dict(zip(vol, df["label"], strict=True)) == {
        f"v{i:02d}.dcm": "cnv" if i % 2 else "normal" for i in range(16)}
    assert set(df[[v in ("v00.dcm", "v01.dcm") for v in vol]]["group"]) == {"P0"}  # the CSV's patient wins
    assert df.groupby("group")["split"].nunique().max() == 1


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("split_column: split\n", "split_column is not read with label_level slide"),
        ("label_column: [a, b]\n", "one label_column"),
        ("layout_options: {frames: all}\n", "not 'frames'"),
    ],
)
def test_slide_task_file_refuses_what_the_slides_layout_cannot_read(tmp_path, extra, fragment):
    head = "name: t\nmodality: pathology\nlabel_type: multilabel\nlabel_level: slide\n"
    f = _write(tmp_path / "t.yaml", head + extra)
    with pytest.raises(UsageError, match=fragment):
        load_task_file(f)
    body = "name: t\nmodality: oct\nlabel_type: multiclass\nlayout_options: {tile: 9}\n"
    g = _write(tmp_path / "u.yaml", body)
    with pytest.raises(UsageError, match="need label_level slide or volume"):
        load_task_file(g)

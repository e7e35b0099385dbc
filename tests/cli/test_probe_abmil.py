"""Issue 27 end to end through the real CLI (in-process): Aperio SVS files written by tifffile, half with a
planted lesion, through `ingest`, `embed`, `probe --protocol abmil --heatmaps 1`, `report --format html`
and `heatmap`; multi-frame DICOM volumes with volume labels through the same protocol; and the one-line
errors of bad case-level input."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("openslide")
pytest.importorskip("tifffile")
pytest.importorskip("pydicom")

from tests.data.wsi_fixtures import slide_pixels, write_svs  # noqa: E402

SIDE = 1024  # level-0 pixels at 0.5 um/px: tiles of 224 px are read at level 0
TISSUE = (96, 96, 832, 832)
LESION = (320, 320, 448, 448)  # x, y, w, h: holds at least one whole tile of the grid
WEIGHTS = "random:resnet10t"


def midol(*args) -> tuple[int, str, str]:
    """The console entry in-process: (exit code, stdout, stderr)."""
    from midol_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["midol", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as ex:
                main.run()
    finally:
        sys.argv = argv
    return (0 if ex.value.code is None else int(ex.value.code)), out.getvalue(), err.getvalue()


def ok(*args) -> str:
    code, out, err = midol(*args)
    assert code == 0, (out + err)[-3000:]
    return out + err


def one_line(*args) -> str:
    code, out, err = midol(*args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    assert "Traceback" not in err
    return lines[0]


def _write_slides(raw, n: int = 10) -> None:
    """``n`` tumour slides (a dark planted lesion inside the tissue), ``n`` normal ones, and one blank
    slide (no tissue: ingest rejects it, the case is skipped and counted)."""
    for i in range(2 * n):
        pos = i % 2 == 1
        img = slide_pixels(SIDE, SIDE, TISSUE, seed=i)
        if pos:
            x, y, w, h = LESION
            lesion = np.random.default_rng(100 + i).normal((60, 20, 90), 10, size=(h, w, 3))
            img[y : y + h, x : x + w] = np.clip(lesion, 0, 255).astype(np.uint8)
        folder = raw / ("tumor" if pos else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        write_svs(folder / f"s{i:02d}.svs", img, mpp=0.5, app_mag=20)
    write_svs(raw / "normal" / "blank.svs", slide_pixels(SIDE, SIDE, None, seed=99), mpp=0.5, app_mag=20)


@pytest.fixture(scope="module")
def slides_run(tmp_path_factory):
    """ingest -> embed -> probe --protocol abmil --heatmaps 1 -> report --format html, once."""
    tmp = tmp_path_factory.mktemp("abmil")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        _write_slides(tmp / "raw")
        manifest = tmp / "slides.parquet"
        ok("ingest", tmp / "raw", "-m", "pathology", "--layout", "slides", "--out", manifest, "-j", "1")
        common = ["--weights", WEIGHTS, "--data", manifest, "--workers", "0", "--batch-size", "32"]
        ok("embed", *common, "--out", tmp / "emb.parquet")
        args = ["--task", "auto", *common, "--protocol", "abmil", "--runs", "2", "--n-boot", "50", "--out",
                tmp / "results"]
        probe = ok("probe", *args, "--heatmaps", "1")
        ok("probe", *args, "--name", "other")  # a second model on the same cases (embeddings cached)
        ok("report", tmp / "results", "-p", "abmil", "--format", "html", "--out", tmp / "report.html")
        yield {"tmp": tmp, "manifest": manifest, "probe": probe, "common": common}


@pytest.mark.slow
def test_slides_through_abmil_heatmap_peaks_inside_the_planted_lesion(slides_run):
    import pandas as pd

    tmp, out = slides_run["tmp"], slides_run["probe"]
    run_dir = tmp / "results" / "random-resnet10t" / "auto-raw"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["protocols"]) == {"abmil", "mean", "max"}
    assert summary["case_level"]["unit"] == "slide" and summary["case_level"]["n_skipped"] == 1
    for name in ("abmil", "mean", "max"):
        assert f"  {name}: auroc " in out and " ± " in out
    assert "1 slide(s) with no readable instance skipped" in out
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert set(preds["protocol"]) == {"abmil", "mean", "max"}
    assert preds["sample_id"].str.endswith(".svs").all()
    # The positive test slides' most-attended tile lies inside the planted lesion (level-0 tile boxes).
    att = pd.read_parquet(run_dir / "attention.parquet")
    att = att[att["seed"] == att["seed"].min()]
    positives = preds[(preds["protocol"] == "abmil") & (preds["label"] == "tumor")]["sample_id"].unique()
    assert len(positives) >= 1
    x0, y0, w, h = LESION
    for case in positives:
        rows = att[att["case"] == case]
        top = json.loads(rows.loc[rows["attention"].idxmax(), "meta"])
        cx, cy = float(top["x"]) + 112, float(top["y"]) + 112  # the centre of a 224-px tile
        assert x0 <= cx < x0 + w and y0 <= cy < y0 + h, (case, top)
    # --heatmaps 1 drew PNGs recorded in summary.json; the HTML report embeds them as data URIs.
    drawn = summary["heatmaps"]
    assert drawn and all((run_dir / h["png"]).is_file() for h in drawn)
    html = (tmp / "report.html").read_text()
    assert "Attention heatmaps" in html and drawn[0]["case"] in html
    section = html.split("Attention heatmaps", 1)[1]
    assert section.count('src="data:image/png;base64,') == len(drawn) and "file:" not in html


@pytest.mark.slow
def test_report_tables_and_compare_pair_the_case_protocols(slides_run):
    tmp = slides_run["tmp"]
    for proto in ("abmil", "mean", "max"):
        code, out, err = midol("report", tmp / "results", "-p", proto, "--format", "json")
        assert code == 0, err
        (row,) = json.loads(out)["rows"]
        assert row["task"] == "auto-raw" and set(row["cells"]) == {"random-resnet10t", "other"}
        assert all(c["n_test"] == 4 and c["value"] is not None for c in row["cells"].values())
    assert "auto-raw" in ok("report", tmp / "results", "-p", "mean", "--format", "csv")
    out = ok("report", tmp / "results", "-p", "abmil", "--compare", "random-resnet10t,other")
    assert "| auto-raw | auroc |" in out and "| 4 | 4 |" in out  # 4 test slides, each its own patient


@pytest.mark.slow
def test_heatmap_command_draws_one_case_from_the_run_dir(slides_run):
    tmp = slides_run["tmp"]
    run_dir = tmp / "results" / "random-resnet10t" / "auto-raw"
    out = ok("heatmap", run_dir, "--case", "tumor/s07.svs", "--out", tmp / "one.png")
    assert (tmp / "one.png").is_file() and "slide heatmap" in out
    line = one_line("heatmap", run_dir, "--case", "tumor/s01.svs")
    assert "not among the test cases" in line


def _write_volumes(raw, n: int = 10, frames: int = 6) -> None:
    """``n`` AMD and ``n`` normal multi-frame OCT DICOMs (one patient each); an AMD volume carries a bright
    drusen-like band in one of its B-scans."""
    from tests.data.test_volumes import write_opt

    for i in range(2 * n):
        pos = i % 2 == 1
        rng = np.random.default_rng(i)
        vol = (40 + rng.normal(0, 8, size=(frames, 48, 64))).clip(0, 255).astype(np.uint8)
        if pos:
            vol[i % frames, 20:30, 8:56] = 230
        folder = raw / ("amd" if pos else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        write_opt(folder / f"v{i:02d}.dcm", vol, patient=f"P{i:02d}")


def test_volumes_through_abmil_case_per_volume(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    _write_volumes(tmp_path / "raw")
    manifest = tmp_path / "oct.parquet"
    ok("ingest", tmp_path / "raw", "-m", "oct", "--layout", "volumes", "--out", manifest, "-j", "1")
    out = ok("probe", "--task", "auto", "--weights", WEIGHTS, "--data", manifest, "--workers", "0",
             "--protocol", "abmil", "--runs", "1", "--n-boot", "20", "--heatmaps", "1", "--out",
             tmp_path / "results")
    assert "volume-level" in out and "  abmil: " in out and "  max: " in out
    run_dir = next((tmp_path / "results").rglob("summary.json")).parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["case_level"]["unit"] == "volume" and set(summary["protocols"]) == {"abmil", "mean", "max"}
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert preds["sample_id"].str.endswith(".dcm").all()
    assert preds["sample_id"].nunique() == summary["n"]["test"]
    att = pd.read_parquet(run_dir / "attention.parquet")
    per_case = att.groupby("case")["attention"].agg(["sum", "size"])
    assert np.allclose(per_case["sum"], 1, atol=1e-4) and (per_case["size"] == 6).all()  # every B-scan once
    assert all("frame" in json.loads(m) for m in att["meta"])
    # The volumes' heatmaps (attention per B-scan, the top B-scans read from the DICOM) in the HTML report.
    assert summary["heatmaps"] and all((run_dir / h["png"]).is_file() for h in summary["heatmaps"])
    ok("report", tmp_path / "results", "-p", "abmil", "-f", "html", "--out", tmp_path / "r.html")
    section = (tmp_path / "r.html").read_text().split("Attention heatmaps", 1)[1]
    assert section.count('src="data:image/png;base64,') == len(summary["heatmaps"])


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory):
    """Four normal and four tumour slides (no embedding needed: the refusals come before it)."""
    tmp = tmp_path_factory.mktemp("bad")
    for i in range(8):
        folder = tmp / "raw" / ("tumor" if i % 2 else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        img = slide_pixels(512, 512, (32, 32, 448, 448), seed=i)
        write_svs(folder / f"s{i}.svs", img, mpp=0.5, app_mag=20)
    manifest = tmp / "m.parquet"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))
        ok("ingest", tmp / "raw", "-m", "pathology", "--layout", "slides", "--out", manifest, "-j", "1")

    def by_slide(df):  # slides 0-1 test, 2-3 val, the rest train: both classes in every split
        num = df["path"].str.extract(r"/s(\d)\.svs")[0].astype(int)
        df["split"] = np.where(num < 2, "test", np.where(num < 4, "val", "train"))
        return df

    _relabelled(manifest, manifest, by_slide)
    (tmp / "task.yaml").write_text("name: slides\nmodality: pathology\nlabel_type: binary\n"
                                   "classes: [normal, tumor]\ncase: slide\n")
    return tmp, manifest


def _relabelled(manifest, out, change) -> str:
    from midol_cli.data.manifest import read_manifest, write_manifest

    df, meta = read_manifest(manifest)
    write_manifest(change(df.copy()), meta, out)
    return str(out)


def test_labels_varying_within_a_slide_are_one_line_errors(small_slides, monkeypatch):
    tmp, manifest = small_slides
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))

    def flip_one_tile(df):
        i = df.index[(df["status"] == "ok") & (df["label"] == "normal")][0]
        df.loc[i, "label"] = "tumor"
        df.at[i, "labels"] = ["tumor"]
        return df

    bad = _relabelled(manifest, tmp / "mixed.parquet", flip_one_tile)
    common = ["--weights", WEIGHTS, "--data", bad, "--protocol", "abmil", "--out", tmp / "r"]
    line = one_line("probe", "--task", tmp / "task.yaml", *common)
    assert "labels vary within slide 'normal/s" in line and "one label per slide" in line
    # --task auto sees labels that vary within a slide: an image-level task, which abmil refuses.
    line = one_line("probe", "--task", "auto", *common)
    assert "is not case-level" in line and "case: slide" in line


def test_a_single_class_test_split_is_a_one_line_error(small_slides, monkeypatch):
    import pandas as pd

    tmp, manifest = small_slides
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))

    def test_all_normal(df):
        test = df["split"] == "test"
        df.loc[test, "label"] = "normal"
        df.loc[test, "labels"] = pd.Series([["normal"]] * int(test.sum()), index=df.index[test])
        return df

    bad = _relabelled(manifest, tmp / "one_class.parquet", test_all_normal)
    line = one_line("probe", "--task", tmp / "task.yaml", "--weights", WEIGHTS, "--data", bad,
                    "--protocol", "abmil", "--out", tmp / "r")
    assert "test split" in line and "only the class 'normal'" in line and "two or more classes" in line


def test_auto_derives_a_slide_level_task_and_a_task_file_says_case(small_slides):
    from midol_cli.tasks import resolve_task

    tmp, manifest = small_slides
    assert resolve_task("auto", manifest).case == "slide"
    assert resolve_task(str(tmp / "task.yaml")).case == "slide"
    assert resolve_task("synth-pathology").case == ""


def test_heatmaps_on_a_shard_dir_is_a_one_line_error_before_embedding(small_slides, monkeypatch):
    tmp, manifest = small_slides
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))
    shards = tmp / "shards"
    if not (shards / "index.json").is_file():
        ok("shard", manifest, "--out", shards, "--workers", "1", "--min-shards", "1")
    line = one_line("probe", "--task", tmp / "task.yaml", "--weights", WEIGHTS, "--data", shards,
                    "--protocol", "abmil", "--heatmaps", "1", "--out", tmp / "r")
    assert "is a shard dir" in line and "midol heatmap RUN --case ID --root" in line


def test_heatmaps_without_protocol_abmil_is_a_one_line_error(small_slides, monkeypatch):
    tmp, manifest = small_slides
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))
    line = one_line("probe", "--task", tmp / "task.yaml", "--weights", WEIGHTS, "--data", manifest,
                    "--heatmaps", "2", "--out", tmp / "r")
    assert "add --protocol abmil" in line


def test_abmil_counts_the_dropped_instances_in_summary_json(tmp_path, monkeypatch):
    """Issue 25.4 for --protocol abmil: a test volume gone after ingest is counted in summary.json's
    ``n.dropped`` (each of its B-scans, with reason and split) and printed, as for the image protocol."""
    import os

    import pandas as pd

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    _write_volumes(tmp_path / "raw", n=10, frames=3)
    manifest = tmp_path / "oct.parquet"
    ok("ingest", tmp_path / "raw", "-m", "oct", "--layout", "volumes", "--out", manifest, "-j", "1")
    df = pd.read_parquet(manifest)
    test = df[df["split"] == "test"].assign(vol=lambda d: d["path"].str.split("#").str[0])
    per_class = test.groupby("label")["vol"].unique()
    victim = sorted(max(per_class, key=len))[0]  # both classes keep a test volume
    assert len(max(per_class, key=len)) >= 2 and len(per_class) == 2
    os.remove(tmp_path / "raw" / victim)
    out = ok("probe", "--task", "auto", "--weights", WEIGHTS, "--data", manifest, "--workers", "0",
             "--protocol", "abmil", "--runs", "1", "--n-boot", "20", "--allow-changed", "--out",
             tmp_path / "results")
    dropped = json.loads(next((tmp_path / "results").rglob("summary.json")).read_text())["n"]["dropped"]
    assert dropped["count"] == 3 and dropped["by_split"] == {"test": 3}
    assert dropped["reasons"] == {"file not found": 3} and dropped["examples"][0].startswith(victim)
    assert "3 damaged or unreadable sample(s) left out (3 file not found)" in " ".join(out.split())


def test_contamination_is_stated_per_test_case(tmp_path, monkeypatch):
    """Issue 27.2: the probe's contamination check at case level. Two test slides (the second the first
    under a coarse checkerboard, so no tile of one is a near copy of the other's); pre-training shards that
    hold one slide's tiles: '1 of 2 test slides', naming that slide, recorded for summary.json; weights
    that are no midol run skip the check without a line."""
    from midol_cli.data.manifest import read_manifest
    from midol_cli.eval.cases import case_keys
    from midol_cli.workflows.probe_cases import case_contamination

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    img = slide_pixels(512, 512, (32, 32, 448, 448), seed=0)
    yy, xx = np.mgrid[:512, :512]
    other = np.where(((yy // 48 + xx // 48) % 2 == 0)[..., None], img // 2, img).astype(img.dtype)
    for label, name, pixels in (("normal", "a", img), ("tumor", "b", other)):
        (tmp_path / "raw" / label).mkdir(parents=True)
        write_svs(tmp_path / "raw" / label / f"{name}.svs", pixels, mpp=0.5, app_mag=20)
    manifest = tmp_path / "m.parquet"
    ok("ingest", tmp_path / "raw", "-m", "pathology", "--layout", "slides", "--out", manifest, "-j", "1")
    _relabelled(manifest, manifest, lambda d: d.assign(split="test"))
    df = read_manifest(manifest, only_ok=True)[0]
    test = sorted(set(case_keys(df, "slide").tolist()))
    assert test == ["normal/a.svs", "tumor/b.svs"]
    for slide in test:
        mine = df["path"].str.startswith(slide)
        pre = _relabelled(manifest, tmp_path / "pre.parquet", lambda d, m=mine: d[m].assign(split="train"))
        ok("shard", pre, "--out", tmp_path / f"{slide}-shards", "--workers", "1")
        run = tmp_path / f"{slide}-run"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"shards": str(tmp_path / f"{slide}-shards")}))
        lines: list[str] = []
        rec = case_contamination(str(run), manifest, test, "slide", "slides", "pathology", lines.append)
        n = int(mine.sum())
        assert rec == {"test_cases": 2, "cases": 1, "first": [slide], "instances_checked": len(df),
                       "instances": n, "exact": n, "near": 0}
        assert lines == [f"probe: WARNING 1 of 2 test slides of slides have tiles in the pre-training shards "
                         f"({n} of {len(df)} test tiles: {n} exact, 0 near; first: '{slide}'); see midol "
                         "contamination"]
        json.dumps(rec)  # summary.json takes it as is
    lines = []
    assert case_contamination(WEIGHTS, manifest, test, "slide", "slides", "pathology", lines.append) is None
    assert lines == []

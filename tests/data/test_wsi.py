"""Whole-slide images (issue 26): real Aperio SVS and generic pyramidal TIFF files written by tifffile +
imagecodecs, opened by OpenSlide; tiles, tissue, rejects, determinism, parts, QC and shards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("openslide", reason="the wsi extra (openslide-python, openslide-bin) is not installed")
pytest.importorskip("tifffile", reason="tifffile + imagecodecs (dev extra) write the test slides")
pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the test slides")

import openslide  # noqa: E402
from wsi_fixtures import slide_pixels, write_blank_pyramid, write_generic_tiff, write_svs  # noqa: E402

from midol_cli.data import tissue, wsi  # noqa: E402
from midol_cli.data.ingest import ingest_folder  # noqa: E402
from midol_cli.data.layouts import LayoutOptions, detect_layout  # noqa: E402
from midol_cli.data.manifest import read_manifest, row_meta  # noqa: E402
from midol_cli.data.slide_tiles import TileSettings, tile_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# 4096 x 3072 at 0.25 um/px; tissue planted at level-0 (1024, 768), 1536 x 1024.
W, H, TISSUE = 4096, 3072, (1024, 768, 1536, 1024)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("slides") / "raw"
    (raw / "site1").mkdir(parents=True)
    img = slide_pixels(W, H, TISSUE)
    write_svs(raw / "site1" / "a.svs", img)
    write_generic_tiff(raw / "b.tif", img)
    return raw


def _ingest(raw: Path, out: Path, **extra: str) -> tuple[pd.DataFrame, dict]:
    s = ingest_folder(raw, "pathology", out=out, workers=1, layout_options=LayoutOptions(extra=dict(extra)))
    df, _ = read_manifest(out)
    return df, s


def test_openslide_detects_the_written_formats(slides):
    assert openslide.OpenSlide.detect_format(str(slides / "site1" / "a.svs")) == "aperio"
    assert openslide.OpenSlide.detect_format(str(slides / "b.tif")) == "generic-tiff"
    s = wsi.open_slide(slides / "site1" / "a.svs")
    assert (
        s.level_count == 3
        and wsi.slide_mpp(s) == (0.25, "openslide.mpp")
        and wsi.magnification(s, 0.25) == "40x"
    )


def test_tiles_lie_in_the_planted_tissue_and_background_gives_none(slides):
    res = tile_slide(str(slides / "site1" / "a.svs"), "site1/a.svs", TileSettings(), None)
    assert res["status"] == "ok" and res["level"] == 0 and res["read"] == 448  # 224 px at 0.5 from 0.25
    assert len(res["tiles"]) >= 6
    x0, y0, tw, th = TISSUE
    for x, y, frac, _ph in res["tiles"]:
        ox = max(0, min(x + 448, x0 + tw) - max(x, x0))
        oy = max(0, min(y + 448, y0 + th) - max(y, y0))
        assert ox * oy / 448**2 >= 0.45 and frac >= 0.5  # every tile mostly on the planted tissue
    # every grid tile fully inside the tissue was found
    inside = {
        (x, y)
        for x in range(0, W, 448)
        for y in range(0, H, 448)
        if x >= x0 and y >= y0 and x + 448 <= x0 + tw and y + 448 <= y0 + th
    }
    assert inside <= {(t[0], t[1]) for t in res["tiles"]}


def test_blank_slide_gives_no_tiles_and_a_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_svs(raw / "blank.svs", slide_pixels(2048, 1536, None))
    df, s = _ingest(raw, tmp_path / "m.parquet")
    assert len(df) == 1 and df["status"][0] == "rejected" and df["reason"][0].startswith("no tissue tiles")


def test_ingest_rows_shard_and_qc(slides, tmp_path):
    assert detect_layout(slides).name == "slides"  # recognised by content
    out = tmp_path / "m.parquet"
    df, s = _ingest(slides, out)
    ok = df[df["status"] == "ok"]
    assert s["layout"] == "slides" and len(ok) == s["slides"]["site1/a.svs"]["tiles"] * 2
    row = ok.iloc[0]
    meta = row_meta(row["meta"])
    assert (
        row["path"]
        == (f"{meta['slide']}#x={meta['x']},y={meta['y']},level={meta['level']},read={meta['read']},size=224")
        and row["width"] == 224
    )
    assert {"slide_sha256", "x", "y", "level", "mpp", "tile", "tissue", "slide_mpp"} <= set(meta)
    assert set(ok["group"]) == {"site1/a", "b"}  # group = the slide
    assert ok.groupby("group")["split"].nunique().max() == 1
    assert ok["sha256"].is_unique and (ok["duplicate_of"] == "").all()
    assert any(
        line.startswith("slide site1/a.svs: ") and "tiles" in line and "40x" in line for line in s["lines"]
    )
    png = Path(s["slides"]["site1/a.svs"]["thumbnail"])
    assert png.is_file() and png.parent == tmp_path / "m.qc"
    assert not any(p.suffix == ".png" for p in slides.rglob("*"))  # nothing written into the raw folder

    from midol_cli.data.shard_format import decode_image, iter_tar_samples
    from midol_cli.data.shards import write_shards

    idx = write_shards([out], tmp_path / "shards", workers=1)
    assert idx["totals"]["samples"] == len(ok) and idx["skipped"]["count"] == 0
    by_id = ok.set_index("sample_id")
    sample = next(iter_tar_samples(tmp_path / "shards" / "shard-000000.tar"))
    m = row_meta(by_id.loc[sample["__key__"], "meta"])
    img = np.asarray(decode_image(sample["jpg"], "jpg").convert("RGB"), dtype=np.float32)
    s_ = openslide.OpenSlide(str(slides / m["slide"]))
    ref = wsi.read_tile(s_, int(m["x"]), int(m["y"]), int(m["level"]), int(m["read"]), 224)
    assert (
        img.shape == (224, 224, 3) and np.abs(img - np.asarray(ref, np.float32)).mean() < 4
    )  # JPEG re-encode
    from midol_cli.data.phash import hamming, phash  # the ingest-time hash (a coarse read) finds the tile

    row_hash = by_id.loc[sample["__key__"], "phash"]
    assert len(row_hash) == 16 and hamming(row_hash, phash(decode_image(sample["jpg"], "jpg"))) <= 8


def test_any_manifest_reader_gets_a_tile_from_its_path(slides, tmp_path):
    """Embedding and fine-tuning read manifest rows through readers.read_image (data.rows.LoadImage)."""
    from midol_cli.data import readers

    df, _ = _ingest(slides, tmp_path / "m.parquet")
    row = df[df["status"] == "ok"].iloc[0]
    m = row_meta(row["meta"])
    got = readers.read_image(slides / row["path"])
    ref = wsi.read_tile(openslide.OpenSlide(str(slides / m["slide"])), int(m["x"]), int(m["y"]), 0, 448, 224)
    assert (got.width, got.height, got.format) == (224, 224, "WSI")
    assert np.array_equal(np.asarray(got.image), np.asarray(ref))


def test_same_settings_same_coordinates_and_seeded_sample(slides, tmp_path):
    a, _ = _ingest(slides, tmp_path / "a.parquet")
    b, _ = _ingest(slides, tmp_path / "b.parquet")
    cols = ["sample_id", "path", "meta", "sha256", "group"]
    assert a[cols].equals(b[cols])
    s1, _ = _ingest(slides, tmp_path / "s1.parquet", max_tiles_per_slide="3")
    s2, _ = _ingest(slides, tmp_path / "s2.parquet", max_tiles_per_slide="3")
    assert s1[cols].equals(s2[cols]) and (s1.groupby("group").size() == 3).all()
    assert set(s1["path"]) <= set(a["path"])


def test_rejects_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    img = slide_pixels(2048, 1536, (256, 256, 1280, 1024))
    write_generic_tiff(raw / "nompp.tif", img, mpp=None)
    data = write_svs(tmp_path / "whole.svs", img).read_bytes()
    (raw / "truncated.svs").write_bytes(data[: len(data) // 2])  # the IFDs are lost
    (raw / "cut.svs").write_bytes(data[:4096] + b"\0" * (len(data) - 4096))  # the IFDs stay, the tiles go
    import tifffile

    tifffile.imwrite(raw / "plain.tif", img[:300, :400])  # a stripped, single-level TIFF: an image
    df, s = _ingest(raw, tmp_path / "m.parquet")
    reasons = dict(zip(df["path"], df["reason"], strict=True))
    assert reasons["nompp.tif"] == "no pixel size (give --slide-mpp)"
    assert reasons["truncated.svs"].startswith("truncated or corrupt slide")
    assert reasons["cut.svs"].startswith(("truncated or corrupt slide", "unreadable slide")), reasons[
        "cut.svs"
    ]
    assert reasons["plain.tif"].startswith("not a slide")
    df, _ = _ingest(raw, tmp_path / "m2.parquet", slide_mpp="0.25")
    assert (df[df["path"].str.startswith("nompp.tif#")]["status"] == "ok").sum() > 0


def test_level_nearest_above_the_target(slides):
    s = wsi.open_slide(slides / "site1" / "a.svs")  # levels at 0.25, 1.0, 4.0 um/px
    assert wsi.make_grid(s, 0.25, 1.0, 224).level == 1 and wsi.make_grid(s, 0.25, 1.0, 224).read == 224
    g = wsi.make_grid(s, 0.25, 2.0, 256)
    assert (g.level, g.read, g.span) == (1, 512, 2048.0)  # never from the coarser 4.0 level
    with pytest.raises(wsi.ImageRejected, match="coarser than --mpp"):
        wsi.make_grid(s, 0.25, 0.1, 224)


def test_tissue_mask_leaves_out_pen_holes_and_specks():
    rgb = np.full((120, 160, 3), 242, np.uint8)
    rgb[20:100, 20:140] = (215, 130, 185)  # tissue
    rgb[50:70, 60:100] = 242  # a large hole: stays background
    rgb[30:32, 30:32] = 242  # a tiny hole: filled
    rgb[5:15, 5:60] = (30, 60, 200)  # blue pen
    rgb[105:115, 5:60] = (40, 150, 60)  # green pen
    rgb[20:100, 145:150] = (10, 10, 10)  # black ink
    rgb[110, 150] = (215, 130, 185)  # a speck
    m = tissue.tissue_mask(rgb, min_area=16)
    assert m[40:48, 30:50].all() and m[31, 31]
    assert not m[55:65, 65:95].any() and not m[5:15, 5:60].any() and not m[105:115, 5:60].any()
    assert not m[20:100, 145:150].any() and not m[110, 150]
    assert not tissue.tissue_mask(np.full((64, 64, 3), 240, np.uint8)).any()


def test_three_parts_give_the_rows_of_one_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(6):
        write_svs(raw / f"s{i}.svs", slide_pixels(1792, 1344, (224, 224, 1344, 896), seed=i), factors=(1, 4))
    from PIL import Image

    for i in range(3):  # ordinary images beside the slides (a scanner's macro photos): each in one part only
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(raw / f"macro{i}.png")
    whole, _ = _ingest(raw, tmp_path / "all.parquet")
    parts = [_ingest(raw, tmp_path / f"p{i}.parquet", part=f"{i}/3")[0] for i in range(3)]
    assert sum(len(p) for p in parts) == len(whole)
    assert all(len(p) for p in parts) or len({*map(len, parts)}) > 1
    # the split too: each part splits its own slides as one run splits them all
    cols = ["sample_id", "path", "group", "label", "meta", "sha256", "status", "split", "split_source"]
    ok = whole[whole["status"] == "ok"]
    assert set(ok["split"]) == {"train", "val", "test"} and ok.groupby("group")["split"].nunique().max() == 1
    merged = pd.concat(parts).sort_values("path").reset_index(drop=True)
    assert merged[cols].equals(whole.sort_values("path").reset_index(drop=True)[cols])
    from midol_cli.data.shards import write_shards  # the parts' manifests shard together

    idx = write_shards([tmp_path / f"p{i}.parquet" for i in range(3)], tmp_path / "shards", workers=1)
    assert idx["totals"]["samples"] == int((whole["status"] == "ok").sum())
    with pytest.raises(Exception, match="--part must be I/N"):
        _ingest(raw, tmp_path / "bad.parquet", part="3/3")


def test_labels_csv_gives_label_and_patient(slides, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label,patient\na.svs,tumor,P1\nb,normal,P1\n")
    s = ingest_folder(
        slides,
        "pathology",
        out=tmp_path / "m.parquet",
        layout="slides",
        layout_options=LayoutOptions(labels=csv),
    )
    df, _ = read_manifest(tmp_path / "m.parquet", only_ok=True)
    assert s["ok"] == len(df) and set(df["group"]) == {"P1"}
    assert set(df[df["path"].str.startswith("site1/")]["label"]) == {"tumor"}
    assert set(df[df["path"].str.startswith("b.tif")]["label"]) == {"normal"}


def test_missing_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)
    with pytest.raises(wsi.ImageRejected) as e:
        wsi.open_slide(tmp_path / "x.svs")
    assert e.value.reason == "whole-slide image needs openslide-python: pip install 'midol[wsi]'"


@pytest.mark.slow
def test_40k_by_30k_slide_tiles_in_bounded_memory(tmp_path):
    """A 40,000 x 30,000 pyramid (1.2 gigapixels, 3.6 GB as RGB), blank but for one tissue box: ingest's
    peak memory in a fresh process stays under 1 GB."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_blank_pyramid(raw / "big.svs", 40_000, 30_000, (20_000, 15_000, 2_000, 1_500))
    code = textwrap.dedent(f"""
        import json, resource
        from midol_cli.data.ingest import ingest_folder
        s = ingest_folder({str(raw)!r}, "pathology", out={str(tmp_path / "m.parquet")!r}, workers=1)
        # VmHWM, not RUSAGE_SELF: Linux carries the forking parent's peak (here pytest's) into the child's
        # ru_maxrss across exec; the decoding workers' own peaks come from RUSAGE_CHILDREN.
        hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps({{"ok": s["ok"], "rss_kb": max(hwm, kids)}}))
    """)
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] >= 10 and out["rss_kb"] < 1024 * 1024, out


def test_a_rerun_resumes_slide_by_slide_and_shard_refuses_a_changed_slide(tmp_path):
    import os

    raw = tmp_path / "raw"
    raw.mkdir()
    for seed, name in enumerate(("a", "b")):
        write_svs(
            raw / f"{name}.svs", slide_pixels(1792, 1344, (224, 224, 1344, 896), seed=seed), factors=(1, 4)
        )
    out = tmp_path / "m.parquet"
    first, _ = _ingest(raw, out)
    qc = tmp_path / "m.qc"
    (qc / ".cache" / "b.svs.json").unlink()  # as if the run had been killed before slide b
    os.utime(qc / "a.svs.png", ns=(1, 1))
    again, _ = _ingest(raw, out)
    assert again[["sample_id", "meta"]].equals(first[["sample_id", "meta"]])
    assert (qc / "a.svs.png").stat().st_mtime_ns == 1  # slide a: its cached result, not tiled again
    assert (qc / "b.svs.png").stat().st_mtime_ns > 1 and (qc / ".cache" / "b.svs.json").is_file()

    write_svs(raw / "a.svs", slide_pixels(1792, 1344, (0, 0, 1792, 1344), seed=5), factors=(1, 4))
    from midol_cli.data.shards import write_shards

    idx = write_shards([out], tmp_path / "shards", workers=1)
    reasons = {i["reason"] for i in idx["skipped"]["items"]}
    assert idx["skipped"]["count"] == (first["path"].str.startswith("a.svs#")).sum()
    assert reasons == {"slide changed since ingest (size or mtime differs); re-run `midol ingest`"}


def _dies_on_boom(task: str) -> str:
    import os

    if task == "boom":
        os._exit(1)  # as a native library dying on a hostile file
    return task.upper()


def test_a_reader_that_kills_its_worker_costs_only_its_file():
    from midol_cli.data.slide_runner import run_isolated

    got = dict(run_isolated(_dies_on_boom, ["a", "boom", "b", "c"], 2, lambda t: f"crashed {t}"))
    assert got == {"a": "A", "boom": "crashed boom", "b": "B", "c": "C"}


def test_dicom_files_that_are_not_slides_are_each_rejected_never_dropped(tmp_path):
    from test_volumes import frames_of, write_opt

    raw = tmp_path / "raw"
    (raw / "s").mkdir(parents=True)
    for name in ("a.dcm", "b.dcm"):
        write_opt(raw / "s" / name, frames_of(1))
    s = ingest_folder(raw, "pathology", layout="slides", out=tmp_path / "m.parquet", workers=1)
    df, _ = read_manifest(tmp_path / "m.parquet")
    assert sorted(df["path"]) == ["s/a.dcm", "s/b.dcm"] and s["rejected"] == 2
    assert all(r.startswith("not a slide") for r in df["reason"])


def test_rehash_tiles_a_slide_replaced_by_one_of_the_same_size_and_mtime(tmp_path):
    """Issue 25.5: the per-slide cache is keyed by size and mtime; `ingest --rehash` must not trust it."""
    import os

    raw, other = tmp_path / "raw", tmp_path / "other.svs"
    raw.mkdir()
    a = raw / "a.svs"
    write_svs(a, slide_pixels(1792, 1344, (224, 224, 1344, 896), seed=0), factors=(1, 4))
    write_svs(other, slide_pixels(1792, 1344, (0, 0, 1792, 1344), seed=5), factors=(1, 4))
    size = max(a.stat().st_size, other.stat().st_size)
    for p in (a, other):  # bytes after the last IFD's data: TIFF readers never see them
        with open(p, "ab") as fh:
            fh.write(b"\0" * (size - p.stat().st_size))
    out = tmp_path / "m.parquet"
    first, _ = _ingest(raw, out)
    st = a.stat()
    os.replace(other, a)  # as `cp -p`: same size, same mtime, other pixels
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    kept, _ = _ingest(raw, out)
    assert kept["path"].tolist() == first["path"].tolist()  # a plain re-run trusts the cache
    s = ingest_folder(raw, "pathology", out=out, workers=1, rehash=True)
    again, _ = read_manifest(out)
    fresh, _ = _ingest(raw, tmp_path / "fresh.parquet")
    assert again["path"].tolist() == fresh["path"].tolist() != first["path"].tolist()
    assert again["sha256"].tolist() == fresh["sha256"].tolist() and s["ok"] == len(fresh)

"""issue 26's ingest flags: --mpp, --tile, --min-tissue, --slide-mpp, --max-tiles-per-slide, --part and
--frames are the slides / volumes layouts' options (LayoutOptions.extra), and --labels labels slides and
volumes, on the real command line, with a real SVS written by tifffile."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openslide", reason="the wsi extra (openslide-python, openslide-bin) is not installed")
pytest.importorskip("tifffile", reason="tifffile + imagecodecs (dev extra) write the test slides")
pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the test slides")

from midol_cli.data.manifest import read_manifest, row_meta  # noqa: E402
from tests.cli.test_ingest_cli import midol  # noqa: E402
from tests.data.wsi_fixtures import slide_pixels, write_svs  # noqa: E402


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("slides") / "raw"
    for cls, name, seed in (("tumor", "tumor", 0), ("normal", "n2", 1)):  # --part 1/2 and 0/2
        (raw / cls).mkdir(parents=True)
        write_svs(raw / cls / f"{name}.svs", slide_pixels(2048, 1536, (256, 256, 1536, 1152), seed=seed))
    return raw


def _ok(out: Path):
    df, _ = read_manifest(out)
    return df[df["status"] == "ok"]


def test_mpp_and_tile_flags_give_tiles_at_that_mpp(raw, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.parquet"
    code, _, err = midol(capsys, monkeypatch, "ingest", "--modality", "pathology", str(raw), "--mpp", "1.0",
                         "--tile", "224", "--min-tissue", "0.3", "--out", str(out), "--workers", "1")
    assert code == 0, err
    ok = _ok(out)
    metas = [row_meta(m) for m in ok["meta"]]
    assert len(ok) > 0 and {(m["mpp"], m["tile"]) for m in metas} == {("1", "224")}
    # 0.25 um/px slides: a 224 px tile at 1 um/px spans 896 level-0 pixels (level 1, 4x, read at 224)
    assert all(p.endswith("size=224") for p in ok["path"])
    assert {(m["level"], m["read"]) for m in metas} == {("1", "224")} and len(ok) >= 2
    default = tmp_path / "d.parquet"
    assert midol(capsys, monkeypatch, "ingest", "--modality", "pathology", str(raw), "--out", str(default),
                 "--workers", "1")[0] == 0
    assert len(_ok(default)) > len(ok)  # 0.5 um/px by default: 4x the tiles of 1.0


def test_max_tiles_part_and_labels_flags(raw, tmp_path, capsys, monkeypatch):
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label,patient\ntumor.svs,pos,p1\nn2.svs,neg,p1\n")
    seen = []
    for i in range(2):
        out = tmp_path / f"p{i}.parquet"
        code, _, err = midol(capsys, monkeypatch, "ingest", "-m", "pathology", str(raw), "--layout", "slides",
                             "--labels", str(labels), "--max-tiles-per-slide", "1", "--part", f"{i}/2",
                             "--mpp", "1", "--min-tissue", "0.3", "--out", str(out), "--workers", "1")
        assert code == 0, err
        ok = _ok(out)
        seen += [(p.split("#")[0], lab, g)
                 for p, lab, g in zip(ok["path"], ok["label"], ok["group"], strict=True)]
    assert sorted(set(seen)) == [("normal/n2.svs", "neg", "p1"), ("tumor/tumor.svs", "pos", "p1")]
    assert len(seen) == 2  # 1 tile a slide (of 2), each slide in one part


def test_frames_is_a_volumes_option(raw, tmp_path, capsys, monkeypatch):
    code, _, err = midol(capsys, monkeypatch, "ingest", "-m", "pathology", str(raw), "--layout", "slides",
                         "--frames", "central:3", "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and "the slides layout has no option 'frames'" in " ".join(err.split())
    code, _, err = midol(capsys, monkeypatch, "ingest", "-m", "pathology", str(raw), "--layout", "slides",
                         "--path-col", "x", "--out", str(tmp_path / "y.parquet"))
    assert code == 2 and "--path-col only apply to --layout csv" in " ".join(err.split())

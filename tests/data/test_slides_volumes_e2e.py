"""Issue 26 end to end: a folder of slides and a folder of OCT volumes (class folders) go through
`midol quickstart` (tiny recipe): ingest recognises both by content, shard reads tiles from the slides and
frames from the volumes, pre-training, embedding and probing run on them, and the report lists both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide", reason="the wsi extra (openslide-python, openslide-bin) is not installed")
pytest.importorskip("tifffile", reason="tifffile + imagecodecs (dev extra) write the test slides")
pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the test slides")

from test_volumes import frames_of, write_opt  # noqa: E402
from wsi_fixtures import slide_pixels, write_svs  # noqa: E402

from tests.cli.test_quickstart_cli import TINY, midol  # noqa: E402


def _raw(root: Path) -> Path:
    for c, cls in enumerate(("normal", "tumor")):
        (root / "pathology" / cls).mkdir(parents=True)
        (root / "oct" / cls).mkdir(parents=True)
        for i in range(8):
            img = slide_pixels(512, 512, (16, 16, 480, 480), seed=10 * c + i)
            if cls == "tumor":
                img[16:496, 16:496] = (img[16:496, 16:496] * np.array([0.6, 0.7, 1.0])).astype(np.uint8)
            write_svs(root / "pathology" / cls / f"s{i}.svs", img, mpp=0.5, app_mag=20, factors=(1, 2))
            vol = (frames_of(4) // (1 + c) + 7 * i).astype(np.uint8)
            write_opt(root / "oct" / cls / f"v{i}.dcm", vol, patient=f"{cls}{i}")
    return root


@pytest.mark.slow
def test_slides_and_volumes_through_quickstart(tmp_path, monkeypatch, capsys):
    import pandas as pd

    raw = _raw(tmp_path / "raw")
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "qs"
    _, stdout, err = midol(
        monkeypatch, capsys, "quickstart", raw, "--out", out, "--recipe", "recipes/smoke.yaml", *TINY
    )
    path = pd.read_parquet(out / "manifests" / "pathology.parquet")
    oct_ = pd.read_parquet(out / "manifests" / "oct.parquet")
    assert (
        (path["layout"] == "slides").all() and len(path) == 64 and set(path["label"]) == {"normal", "tumor"}
    )
    assert (
        (oct_["layout"] == "volumes").all() and len(oct_) == 64 and oct_["path"].str.contains("#frame=").all()
    )
    assert (out / "manifests" / "pathology.qc").is_dir()
    report = (out / "report.md").read_text()
    assert "auto-pathology" in report and "auto-oct" in report and report in stdout
    assert "slide normal/s0.svs: 4 tiles" in err and "volume tumor/v0.dcm: 4 of 4 frames" in err

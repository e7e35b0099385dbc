"""Attention heatmaps (report/heatmaps.py) on a real Aperio SVS written by tifffile, on a volume's
B-scans, and the choice of cases to draw."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("openslide")
pytest.importorskip("tifffile")

from midol_cli.errors import UsageError  # noqa: E402
from midol_cli.report.heatmaps import (  # noqa: E402
    ATTENTION_NAME,
    draw_case,
    pick_cases,
    slide_heatmap,
    volume_heatmap,
)
from tests.data.wsi_fixtures import slide_pixels, write_svs  # noqa: E402

LESION = (1200, 1150, 560, 520)  # x, y, w, h in level-0 pixels


def _slide(tmp_path):
    """A 2048 x 2048 SVS (0.25 um/px) with tissue and, inside it, a darker planted lesion; its tiles as the
    slides layout makes them (real tissue detection and grid), 112 px at 0.5 um/px (224 level-0 px)."""
    from midol_cli.data.slide_tiles import TileSettings, tile_slide

    img = slide_pixels(2048, 2048, (256, 256, 1536, 1536), seed=3)
    x, y, w, h = LESION
    rng = np.random.default_rng(4)
    lesion = rng.normal((70, 30, 110), 12, size=(h, w, 3))
    img[y : y + h, x : x + w] = np.clip(lesion, 0, 255).astype(np.uint8)
    path = write_svs(tmp_path / "a.svs", img, mpp=0.25)
    res = tile_slide(str(path), "a.svs", TileSettings(mpp=0.5, tile=112), None)
    assert res["status"] == "ok", res
    common = {"slide": "a.svs", "level": str(res["level"]), "read": str(res["read"]), "tile": "112",
              "mpp": "0.5", "slide_mpp": f"{res['slide_mpp']:.6g}"}
    metas = [{**common, "x": str(tx), "y": str(ty)} for tx, ty, *_ in res["tiles"]]
    return path, metas, res["span"]


def _inside(px, py, box=LESION):
    x, y, w, h = box
    return x <= px < x + w and y <= py < y + h


def test_slide_heatmap_peaks_inside_the_lesion_the_attention_points_at(tmp_path):
    path, metas, span = _slide(tmp_path)
    assert len(metas) > 30
    centre = [(float(m["x"]) + span / 2, float(m["y"]) + span / 2) for m in metas]
    hit = np.array([_inside(cx, cy) for cx, cy in centre])
    assert 2 <= hit.sum() < len(metas) // 2
    rng = np.random.default_rng(0)
    att = np.where(hit, 1.0 + rng.random(len(metas)), 0.2 * rng.random(len(metas)))
    att /= att.sum()
    out = tmp_path / "figs" / "a.png"
    hm = slide_heatmap(path, att, metas, out, top_k=4, thumb=512)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000 and hm.strip == 4
    assert hm.kind == "slide" and _inside(*hm.peak)
    # the map follows the attention, not the tissue: point it at a tile outside the lesion instead
    j = int(np.flatnonzero(~hit)[0])
    att2 = np.full(len(metas), 0.1)
    att2[j] = 5.0
    hm2 = slide_heatmap(path, att2 / att2.sum(), metas, tmp_path / "b.png", top_k=2, thumb=512)
    tx, ty = float(metas[j]["x"]), float(metas[j]["y"])
    assert not _inside(*hm2.peak) and tx <= hm2.peak[0] < tx + span and ty <= hm2.peak[1] < ty + span


def test_draw_case_reads_the_run_dirs_attention(tmp_path):
    import pandas as pd

    path, metas, span = _slide(tmp_path)
    att = np.ones(len(metas)) / len(metas)
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"case": "a.svs", "sample_id": [f"t{i}" for i in range(len(metas))], "seed": 0,
                  "attention": att.astype(np.float32), "meta": [json.dumps(m) for m in metas]}
                 ).to_parquet(run / ATTENTION_NAME)
    hm = draw_case(run, "a.svs", tmp_path, tmp_path / "c.png", top_k=3)
    assert hm.png.is_file()
    with pytest.raises(UsageError, match="not among the test cases"):
        draw_case(run, "b.svs", tmp_path, tmp_path / "d.png")
    with pytest.raises(UsageError, match="give --root"):
        draw_case(run, "a.svs", None, tmp_path / "d.png")  # no summary.json recording the data root
    with pytest.raises(UsageError, match="--protocol abmil"):
        draw_case(tmp_path, "a.svs", tmp_path, tmp_path / "d.png")


def test_volume_heatmap_draws_attention_along_the_bscans(tmp_path):
    att = np.full(12, 0.02)
    att[7] = 0.78
    hm = volume_heatmap(range(12), att, tmp_path / "v.png", title="v.dcm")
    assert hm.kind == "volume" and hm.peak[0] == 7 and hm.png.is_file()


def test_a_volume_case_shows_its_top_bscans_read_from_the_dicom(tmp_path):
    import pandas as pd

    from tests.data.test_volumes import frames_of, write_opt

    write_opt(tmp_path / "v.dcm", frames_of(10))
    att = np.full(10, 0.05)
    att[[3, 8]] = 0.3
    run = tmp_path / "run"
    run.mkdir()
    metas = [json.dumps({"volume": "v.dcm", "frame": str(i), "n_frames": "10"}) for i in range(10)]
    pd.DataFrame({"case": "v.dcm", "sample_id": [f"v.dcm#frame={i}" for i in range(10)], "seed": 0,
                  "attention": att.astype(np.float32), "meta": metas}).to_parquet(run / ATTENTION_NAME)
    hm = draw_case(run, "v.dcm", tmp_path, tmp_path / "v.png", top_k=3)
    assert hm.kind == "volume" and hm.peak[0] in (3, 8) and hm.strip == 3 and hm.png.is_file()


def test_pick_cases_most_confident_true_positives_and_worst_errors():
    ids = ["a", "b", "c", "d", "e", "f"]
    y = [1, 1, 1, 0, 0, 1]
    p1 = np.array([0.9, 0.6, 0.99, 0.95, 0.2, 0.1])
    picked = pick_cases(ids, y, np.stack([1 - p1, p1], 1), 2)
    assert picked == [("c", "true positive"), ("a", "true positive"), ("d", "error"), ("f", "error")]


def test_heatmaps_of_a_probe_run_pick_cases_and_draw_them(tmp_path):
    """--heatmaps N end to end below the CLI: cases (one group each, all on the test slide's tiles) through
    the abmil protocol into a run dir, then the picked cases drawn from the run dir alone."""
    import pandas as pd

    from midol_cli.eval.case_protocols import run_case_protocols, write_case_results
    from midol_cli.eval.cases import case_data
    from midol_cli.eval.mil import MILRecipe, planted_bags
    from midol_cli.eval.results import Task

    path, metas, _ = _slide(tmp_path)
    k = len(metas)
    bags, y, _ = planted_bags(40, np.random.default_rng(0), dim=8, sizes=(k, k), frac=(0.05, 0.1))
    task = Task("t", "pathology", "binary", ("normal", "tumor"), "auroc")
    rows = [{"sample_id": f"c{i}#{j}", "modality": "pathology", "label": task.classes[lab], "labels": None,
             "group": f"c{i:02d}", "split": ("test" if i % 5 >= 3 else "train"), "dataset": "",
             "meta": json.dumps(metas[j]), "embedding": e}
            for i, (b, lab) in enumerate(zip(bags, y, strict=True)) for j, e in enumerate(b)]
    cd = case_data(pd.DataFrame(rows), task, "group")
    run = run_case_protocols(cd, task, protocols=("abmil",), runs=1, n_boot=20,
                             recipe=MILRecipe(max_epochs=3, min_epochs=0))
    run_dir = tmp_path / "results" / "m" / "t"
    model = {"id": "m", "weights": "", "weights_hash": "", "arch": ""}
    write_case_results(run_dir, cd, task, run, model, "d", data_root=str(tmp_path))
    from midol_cli.report.heatmaps import draw_heatmaps

    drawn = draw_heatmaps(run_dir, None, tmp_path / "figs", n=1, top_k=2)  # the root the run recorded
    assert 1 <= len(drawn) <= 2
    for case, why, hm in drawn:
        assert why in ("true positive", "error") and hm.png.is_file() and hm.png.name == f"heatmap_{case}.png"


def test_a_patient_case_of_two_slides_draws_the_slide_of_its_most_attended_tile(tmp_path):
    """A patient case holds the tiles of several slides: the heatmap draws the slide holding the top tile,
    with that slide's tiles only (the old drawing painted every slide's tiles over the first slide)."""
    import shutil

    import pandas as pd

    path, metas, _ = _slide(tmp_path)
    shutil.copy(path, tmp_path / "b.svs")
    metas_b = [{**m, "slide": "b.svs"} for m in metas]
    inside = [i for i, m in enumerate(metas) if _inside(float(m["x"]) + 112, float(m["y"]) + 112)]
    att = np.full(2 * len(metas), 0.1)
    att[len(metas) + inside[0]] = 5.0  # the top tile: slide b, inside the lesion
    att /= att.sum()
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"case": "P1", "sample_id": [f"t{i}" for i in range(len(att))], "seed": 0,
                  "attention": att.astype(np.float32), "meta": [json.dumps(m) for m in metas + metas_b]}
                 ).to_parquet(run / ATTENTION_NAME)
    hm = draw_case(run, "P1", tmp_path, tmp_path / "p.png", top_k=10 * len(metas))
    assert hm.strip == len(metas) and _inside(*hm.peak)

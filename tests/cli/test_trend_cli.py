"""`midol trend` through the real CLI: two study folders, default labels, --out with its settings, the
figure, JSON, and one-line refusals."""

from __future__ import annotations

import json
import os

from tests.conftest import one_line_error, run_midol
from tests.report.test_trend import study

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write(folder, rec):
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(rec), encoding="utf-8")
    return folder


def test_trend_cli(tmp_path):
    small = write(tmp_path / "s200" / "study", study([0, 1, 2], {
        "a": {"midol": [0.5, 0.6, 0.7], "no_moe": [0.51, 0.62, 0.73], "random_bn": [0.4, 0.5, 0.6]},
        "b": {"midol": [0.4, 0.4, 0.4], "no_moe": [0.4, 0.4, 0.4], "random_bn": [0.3, 0.3, 0.3]}}))
    large = write(tmp_path / "s800" / "study", study([0, 1, 2, 3], {
        "a": {"midol": [0.7] * 4, "no_moe": [0.75, 0.76, 0.78, 0.2], "random_bn": [0.5] * 4},
        "b": {"midol": [0.5] * 4, "no_moe": [0.5] * 4, "random_bn": [0.4] * 4}}))
    res = run_midol("trend", small, large, env=ENV, check=True)
    assert "@ s200" in res.stdout and "change s800 - s200" in res.stdout  # the parents name twin folders
    assert "| a | +2.0 [" in res.stdout and "## random_bn - midol" in res.stdout
    out, png = tmp_path / "t" / "trend.md", tmp_path / "t" / "trend.png"
    res = run_midol("trend", small, large / "study.json", "--labels", "200,800", "--variants", "no_moe",
                    "-o", out, "--plot", png, env=ENV, check=True)
    text = out.read_text(encoding="utf-8")
    assert "change 800 - 200" in text and "random_bn" not in text.split("## Scores")[1]
    assert png.stat().st_size > 1000 and (tmp_path / "t" / "trend.trend.yaml").is_file()
    res = run_midol("trend", small, large, "-f", "json", "seeds=0,1", env=ENV, check=True)
    assert json.loads(res.stdout)["seeds"] == {"s200": [0, 1], "s800": [0, 1]}
    res = run_midol("trend", small, large, "--seeds", "all", env=ENV, check=True)
    assert "`s200` 0, 1, 2; `s800` 0, 1, 2, 3" in res.stdout
    assert "no study.json" in one_line_error(run_midol("trend", small, tmp_path / "none", env=ENV))
    assert "lacks seed(s) 3" in one_line_error(run_midol("trend", small, large, "--seeds", "3", env=ENV))
    assert "--labels names 1" in one_line_error(run_midol("trend", small, large, "--labels", "x", env=ENV))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "study.json").write_text("{not json", encoding="utf-8")
    assert "cannot read" in one_line_error(run_midol("trend", small, tmp_path / "bad", env=ENV))

"""report --compare on retrieval protocols (report/compare_retrieval.py) and the table's use of a protocol
block's own primary metric (report/cells._block_primary): known answers on hand-made result folders
(issue 29.2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from midol_cli.errors import UsageError
from midol_cli.report.compare import comparison_rows
from midol_cli.report.table import build_table, collect_summaries
from tests.report._tree import summary


def _folder(root, model: str, task: str, map10: list[float], ids: list[str] | None = None) -> None:
    d = root / model / task
    d.mkdir(parents=True)
    s = summary(model, task, "xray", "accuracy", 0.8, 0.7, 0.9)
    s["protocols"]["retrieval"] = {"metrics": {"map_10": {"value": float(np.mean(map10)), "ci_low": 0.0,
                                                          "ci_high": 1.0},
                                               "precision_1": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}},
                                   "primary_metric": "map_10"}
    (d / "summary.json").write_text(json.dumps(s))
    n = len(map10)
    pd.DataFrame({"sample_id": ids or [f"s{i}" for i in range(n)], "group": [f"p{i // 2}" for i in range(n)],
                  "label": ["a"] * n, "protocol": "retrieval", "map_10": map10,
                  "precision_1": [0.5] * n}).to_parquet(d / "retrieval.parquet")


def test_the_paired_difference_is_the_difference_of_query_means(tmp_path):
    _folder(tmp_path, "A", "t1", [1.0, 0.5, 0.5, 0.0, 1.0, 1.0])
    _folder(tmp_path, "B", "t1", [0.5, 0.5, 0.0, 0.0, 1.0, 0.5])
    rows = comparison_rows(tmp_path, "A", "B", protocol="retrieval", n_boot=200, warn=lambda m: None)
    t1 = rows[0]
    assert t1["task"] == "t1" and t1["metric"] == "map_10" and t1["n_test"] == 6 and t1["n_groups"] == 3
    assert t1["a"] == pytest.approx(4 / 6) and t1["b"] == pytest.approx(2.5 / 6)
    assert t1["diff"] == pytest.approx(1.5 / 6)
    # every patient's pair of queries differs by +0.5 in total: each resample's mean difference is 0.25
    assert t1["ci_low"] == pytest.approx(0.25) and t1["ci_high"] == pytest.approx(0.25)
    assert t1["p_delong"] is None and rows[-1]["task"] == "mean"


def test_other_queries_are_skipped_with_a_warning(tmp_path):
    _folder(tmp_path, "A", "t1", [1.0, 0.0])
    _folder(tmp_path, "B", "t1", [1.0, 0.0], ids=["x0", "x1"])
    said: list[str] = []
    with pytest.raises(UsageError, match="no task with comparable 'retrieval' values"):
        comparison_rows(tmp_path, "A", "B", protocol="retrieval", n_boot=50, warn=said.append)
    assert any("not the same test images" in m for m in said)


def test_the_table_shows_the_blocks_primary_metric_unless_told(tmp_path):
    _folder(tmp_path, "A", "t1", [1.0, 0.5])
    found, _ = collect_summaries(tmp_path)
    row = build_table(found, protocol="retrieval").rows[0]
    assert row.metric == "map_10" and row.cells["A"].value == pytest.approx(0.75)
    assert build_table(found, protocol="retrieval", metric="precision_1").rows[0].metric == "precision_1"
    assert build_table(found, protocol="linear").rows[0].metric == "accuracy"

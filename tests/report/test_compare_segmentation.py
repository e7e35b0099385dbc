"""report --compare on segmentation protocols (report/compare_segmentation.py, issue 29): per-case paired
Dice / Jaccard differences from the per-image files segmentation writes (eval/segmentation.py), known
answers on hand-made result folders, and the command in md, csv and json."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from midol_cli.errors import UsageError
from midol_cli.eval.segmentation import write_predictions
from midol_cli.report.compare import comparison_rows
from midol_cli.report.compare_segmentation import load_case_scores
from tests.report._tree import summary

SEG = "isic2018-seg"


def _seg_folder(root, model: str, dice: list[float], *, protocol: str = "dense_probe",
                ids: list[str] | None = None, groups: bool = True) -> None:
    d = root / model / SEG
    d.mkdir(parents=True, exist_ok=True)
    s = summary(model, SEG, "dermoscopy", "dice", 0.8, 0.7, 0.9)
    s["task"].update(label_type="segmentation", classes=["background", "lesion"])
    jac = [x / (2 - x) for x in dice]
    block = {"metrics": {"dice": {"value": float(np.mean(dice)), "ci_low": 0.0, "ci_high": 1.0},
                         "jaccard": {"value": float(np.mean(jac)), "ci_low": 0.0, "ci_high": 1.0}}}
    s["protocols"] = {"finetune": block, "dense_probe": block}
    (d / "summary.json").write_text(json.dumps(s))
    n = len(dice)
    name = "predictions.parquet" if protocol == "finetune" else f"predictions_{protocol}.parquet"
    write_predictions(d / name, ids or [f"s{i}" for i in range(n)], ["test"] * n, dice, jac,
                      groups=[f"p{i // 2}" for i in range(n)] if groups else None)


A_DICE = [0.9, 0.5, 0.8, 0.2, 1.0, 0.6]
B_DICE = [0.6, 0.4, 0.6, 0.0, 0.9, 0.3]  # each patient's pair differs by +0.4 in total


def test_the_paired_difference_is_the_difference_of_case_means(tmp_path):
    _seg_folder(tmp_path, "A", A_DICE)
    _seg_folder(tmp_path, "B", B_DICE)
    rows = comparison_rows(tmp_path, "A", "B", protocol="dense_probe", n_boot=200, warn=lambda m: None)
    t = rows[0]
    assert t["task"] == SEG and t["metric"] == "dice" and t["n_test"] == 6 and t["n_groups"] == 3
    assert t["a"] == pytest.approx(np.mean(A_DICE)) and t["b"] == pytest.approx(np.mean(B_DICE))
    assert t["diff"] == pytest.approx(0.2)
    # patients are resampled whole: every replicate's mean difference is 0.2, so the CI has no width
    assert t["ci_low"] == pytest.approx(0.2) and t["ci_high"] == pytest.approx(0.2) and t["excludes_zero"]
    assert t["p_delong"] is None and rows[-1]["task"] == "mean"
    assert rows[-1]["diff"] == pytest.approx(0.2)


def test_images_are_the_cases_in_files_without_groups_and_jaccard_is_paired_too(tmp_path):
    _seg_folder(tmp_path, "A", A_DICE, groups=False)
    _seg_folder(tmp_path, "B", B_DICE, groups=False)
    pd.read_parquet(tmp_path / "A" / SEG / "predictions_dense_probe.parquet")  # the schema reads back
    rows = comparison_rows(tmp_path, "A", "B", protocol="dense_probe", n_boot=300, warn=lambda m: None)
    assert rows[0]["n_groups"] == 6 and rows[0]["ci_low"] < 0.2 < rows[0]["ci_high"]  # images vary now
    cs = load_case_scores(tmp_path / "A" / SEG, tmp_path / "B" / SEG, SEG, "dense_probe", "jaccard")
    expect = np.array([x / (2 - x) for x in A_DICE]) - np.array([x / (2 - x) for x in B_DICE])
    assert cs.metric == "jaccard" and np.allclose(cs.values["A"] - cs.values["B"], expect)
    rows = comparison_rows(tmp_path, "A", "B", protocol="dense_probe", n_boot=100, warn=lambda m: None,
                           metric="jaccard")  # report --compare A,B -p dense_probe -m jaccard
    assert rows[0]["metric"] == "jaccard" and rows[0]["diff"] == pytest.approx(expect.mean())


def test_finetune_on_a_segmentation_task_reads_predictions_parquet(tmp_path):
    _seg_folder(tmp_path, "A", A_DICE, protocol="finetune")
    _seg_folder(tmp_path, "B", B_DICE, protocol="finetune")
    rows = comparison_rows(tmp_path, "A", "B", protocol="finetune", n_boot=100, warn=lambda m: None)
    assert rows[0]["metric"] == "dice" and rows[0]["diff"] == pytest.approx(0.2)


def test_other_images_or_a_missing_file_are_skipped_with_a_warning(tmp_path):
    _seg_folder(tmp_path, "A", [1.0, 0.0])
    _seg_folder(tmp_path, "B", [1.0, 0.0], ids=["x0", "x1"])
    said: list[str] = []
    with pytest.raises(UsageError, match="no task with comparable 'dense_probe' values"):
        comparison_rows(tmp_path, "A", "B", protocol="dense_probe", n_boot=50, warn=said.append)
    assert any("not on the same test images" in m for m in said)
    (tmp_path / "B" / SEG / "predictions_dense_probe.parquet").unlink()
    said.clear()
    with pytest.raises(UsageError):
        comparison_rows(tmp_path, "A", "B", protocol="dense_probe", n_boot=50, warn=said.append)
    assert any("no 'dense_probe' per-image scores" in m for m in said)


def test_finetune_with_classification_tasks_beside_skips_the_segmentation_one(tmp_path):
    _seg_folder(tmp_path, "A", A_DICE, protocol="finetune")
    _seg_folder(tmp_path, "B", B_DICE, protocol="finetune")
    for m in ("A", "B"):  # a classification task without finetune predictions: nothing to compare
        (tmp_path / m / "ham").mkdir()
        (tmp_path / m / "ham" / "summary.json").write_text(json.dumps(summary(m, "ham", "x", "accuracy",
                                                                               .8, .7, .9)))
    said: list[str] = []
    with pytest.raises(UsageError, match="no task with comparable 'finetune' predictions"):
        comparison_rows(tmp_path, "A", "B", protocol="finetune", n_boot=50, warn=said.append)
    assert any(f"task {SEG} skipped: a segmentation task" in m for m in said)


def test_the_command_writes_md_csv_json_and_html(tmp_path, monkeypatch, capsys):
    from midol_cli.cli import main

    _seg_folder(tmp_path, "A", A_DICE)
    _seg_folder(tmp_path, "B", B_DICE)
    out = {}
    page = tmp_path / "r.html"
    for fmt in ("md", "csv", "json", "html"):
        monkeypatch.setattr(sys, "argv", ["midol", "report", str(tmp_path), "--compare", "A,B", "-p",
                                          "dense_probe", "--n-boot", "100", "-f", fmt,
                                          *(["-o", str(page)] if fmt == "html" else [])])
        with pytest.raises(SystemExit) as ex:
            main.run()
        got = capsys.readouterr()
        assert ex.value.code in (0, None), got.err
        out[fmt] = got.out
    assert "protocol: dense_probe" in out["md"] and f"| {SEG} | dice |" in out["md"]
    assert out["csv"].splitlines()[1].startswith(f"A,B,{SEG},dice,")
    row = json.loads(out["json"])["rows"][0]
    assert json.loads(out["json"])["protocol"] == "dense_probe" and row["diff"] == pytest.approx(20.0)
    assert "Paired comparison: A vs B" in page.read_text() and "20.00 [20.00, 20.00]" in page.read_text()

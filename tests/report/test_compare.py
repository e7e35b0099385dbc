"""`midol report --compare A,B`: rows from real prediction files, checked against the pieces they are
made of (paired bootstrap, DeLong, Holm), the renderers, and the command through typer's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from midol_cli.cli.main import app
from midol_cli.errors import UsageError
from midol_cli.report.compare import ROW_KEYS, comparison_rows, parse_compare, render_comparison
from tests.report._tree import summary

runner = CliRunner()


def _write(results: Path, model: str, task: str, label_type: str, classes: list[str], metric: str,
           labels: list[str], probs: np.ndarray, groups: list[str] | None = None,
           sample_ids: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table

    folder = results / model / task
    folder.mkdir(parents=True)
    s = summary(model, task, "fundus", metric, 0.5, 0.4, 0.6)
    s["task"].update({"label_type": label_type, "classes": classes})
    (folder / "summary.json").write_text(json.dumps(s))
    n = len(labels)
    sids = sample_ids or [f"s{i:03d}" for i in range(n)]
    parts = [("linear", None, sids, groups or sids, labels, probs)]
    pq.write_table(prediction_table(classes, task, model, parts), folder / "predictions.parquet")


def _onehot(pred: np.ndarray, c: int, conf: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def build(root: Path) -> dict:
    """Two models on three shared tasks (a binary AUROC one, two multiclass accuracy ones), a task
    only m-a has, and a task whose m-b predictions cover other test images."""
    rng = np.random.default_rng(0)
    results = root / "results"
    out: dict = {"results": results}
    # Binary AUROC, 150 patients with one image each: A separates better than B.
    n = 150
    y = (rng.random(n) < 0.4).astype(int)
    e = rng.normal(size=(n, 2))
    sa, sb = 1 / (1 + np.exp(-(e[:, 0] + 1.6 * y))), 1 / (1 + np.exp(-(e[:, 1] + 0.6 * y)))
    labels = [["neg", "pos"][v] for v in y]
    for model, s in (("m-a", sa), ("m-b", sb)):
        _write(results, model, "bin", "binary", ["neg", "pos"], "auroc", labels, np.stack([1 - s, s], 1))
    out["bin"] = (y, sa, sb)
    # Multiclass accuracy, 80 patients x 3 images: A right on ~90%, B on ~50% (a clear difference).
    y3 = np.repeat(rng.integers(0, 3, 80), 3)
    groups = [f"p{i // 3}" for i in range(240)]
    labels3 = [["a", "b", "c"][v] for v in y3]
    u = rng.random(240)
    for model, rate in (("m-a", 0.9), ("m-b", 0.5)):
        pred = np.where(u < rate, y3, (y3 + 1) % 3)
        _write(results, model, "clear", "multiclass", ["a", "b", "c"], "accuracy", labels3, _onehot(pred, 3),
               groups=groups)
    # Multiclass accuracy with the same predictions: a difference of exactly 0.
    same = _onehot(np.where(u < 0.7, y3, (y3 + 2) % 3), 3)
    for model in ("m-a", "m-b"):
        _write(results, model, "tie", "multiclass", ["a", "b", "c"], "accuracy", labels3, same, groups=groups)
    # Only m-a: not compared. Other images for m-b: skipped with a warning.
    _write(results, "m-a", "solo", "multiclass", ["a", "b", "c"], "accuracy", labels3, same, groups=groups)
    for model, ids in (("m-a", None), ("m-b", [f"x{i:03d}" for i in range(240)])):
        _write(
            results,
            model,
            "moved",
            "multiclass",
            ["a", "b", "c"],
            "accuracy",
            labels3,
            same,
            groups=groups,
            sample_ids=ids,
        )
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def rows(tree) -> tuple[list[dict], list[str]]:
    warnings: list[str] = []
    return comparison_rows(tree["results"], "m-a", "m-b", protocol="linear", n_boot=500, seed=0,
                           warn=warnings.append), warnings


def test_rows_have_exactly_the_agreed_keys_and_order(rows):
    got, warnings = rows
    assert [r["task"] for r in got] == ["bin", "clear", "tie", "mean"]
    assert all(tuple(r) == ROW_KEYS for r in got)
    assert len(warnings) == 1 and "moved" in warnings[0] and "other test images" in warnings[0]


def test_binary_auroc_row_matches_delong_and_the_paired_bootstrap(tree, rows):
    from sklearn.metrics import roc_auc_score

    from midol_cli.eval.delong import delong_test
    from midol_cli.eval.paired import load_task_scores, paired_differences

    bin_row = rows[0][0]
    y, sa, sb = tree["bin"]
    sa32, sb32 = sa.astype(np.float32).astype(np.float64), sb.astype(np.float32).astype(np.float64)
    assert bin_row["metric"] == "auroc"
    assert bin_row["a"] == pytest.approx(roc_auc_score(y, sa32)) and bin_row["b"] == pytest.approx(
        roc_auc_score(y, sb32)
    )
    assert bin_row["diff"] == pytest.approx(bin_row["a"] - bin_row["b"])
    assert bin_row["p_delong"] == pytest.approx(delong_test(y, sa32, sb32).p_value)
    assert bin_row["n_test"] == 150 and bin_row["n_groups"] == 150
    # The CI and p are paired_differences' on the same files, same seed.
    ts = [
        load_task_scores(tree["results"], t, {"A": {0: "m-a"}, "B": {0: "m-b"}})
        for t in ("bin", "clear", "tie")
    ]
    d = paired_differences(ts, "B", ["A"], n_boot=500, seed=0)["A"]
    assert (bin_row["ci_low"], bin_row["ci_high"], bin_row["p_boot"]) == pytest.approx(
        (d["bin"].ci_low, d["bin"].ci_high, d["bin"].p_value))
    assert bin_row["excludes_zero"] == d["bin"].excludes_zero
    assert rows[0][-1]["diff"] == pytest.approx(d["mean"].value)


def test_multiclass_rows_holm_and_mean(rows):
    bin_row, clear, tie, mean = rows[0]
    assert clear["p_delong"] is None and tie["p_delong"] is None  # DeLong: binary AUROC tasks only
    assert clear["excludes_zero"] and clear["diff"] > 0.3 and clear["ci_low"] > 0
    assert clear["n_test"] == 240 and clear["n_groups"] == 80
    assert tie["diff"] == 0 and tie["ci_low"] == 0 and tie["ci_high"] == 0 and not tie["excludes_zero"]
    assert tie["p_boot"] == 1.0
    # Holm over the three bootstrap p-values, by hand.
    ps = [bin_row["p_boot"], clear["p_boot"], tie["p_boot"]]
    order = np.argsort(ps)
    want, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * ps[i]))
        want[i] = running
    assert [bin_row["p_holm"], clear["p_holm"], tie["p_holm"]] == pytest.approx(want)
    assert mean["task"] == "mean" and mean["p_holm"] is None and mean["p_delong"] is None
    assert mean["a"] == pytest.approx(np.mean([bin_row["a"], clear["a"], tie["a"]]))
    assert mean["diff"] == pytest.approx(np.mean([bin_row["diff"], clear["diff"], tie["diff"]]))
    assert mean["metric"] == "primary"


def test_renderers(rows):
    got = rows[0]
    md = render_comparison(got, ("m-a", "m-b"), "md", protocol="linear", n_boot=500)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert "| m-a | m-b | m-a − m-b | 95% CI | p (bootstrap) | p (DeLong) | p (Holm) |" in header
    clear = next(line for line in lines if line.startswith("| clear "))
    assert clear.rstrip().endswith("| * |") and "| n/a |" in clear
    tie = next(line for line in lines if line.startswith("| tie "))
    assert "| +0.00 | [+0.00, +0.00] | 1.000 | n/a | 1.000 |" in tie and not tie.rstrip().endswith("* |")
    assert any(line.startswith("| **mean** ") for line in lines)
    assert "Holm" in md and "crosses 0" in md
    table = list(csv.DictReader(io.StringIO(render_comparison(got, ("m-a", "m-b"), "csv"))))
    assert [r["task"] for r in table] == ["bin", "clear", "tie", "mean"]
    assert float(table[1]["diff"]) == pytest.approx(100 * got[1]["diff"], abs=1e-3)
    assert table[1]["p_delong"] == "" and table[0]["model_a"] == "m-a"
    obj = json.loads(render_comparison(got, ("m-a", "m-b"), "json", protocol="linear", n_boot=500))
    assert obj["a"] == "m-a" and obj["p_holm_of"] == "p_boot" and obj["scale"] == 100
    assert obj["rows"][0]["a"] == pytest.approx(100 * got[0]["a"], abs=1e-3)
    assert obj["rows"][0]["p_delong"] == pytest.approx(got[0]["p_delong"])


def test_usage_errors(tree, tmp_path):
    with pytest.raises(UsageError, match="no model 'nope'.*models: m-a, m-b"):
        comparison_rows(tree["results"], "m-a", "nope", protocol="linear", n_boot=100, seed=0)
    with pytest.raises(UsageError, match="exactly two"):
        parse_compare("m-a")
    with pytest.raises(UsageError, match="same model"):
        parse_compare("m-a,m-a")
    assert parse_compare(" m-a , m-b ") == ("m-a", "m-b")
    with pytest.raises(UsageError, match="n-boot"):
        comparison_rows(tree["results"], "m-a", "m-b", protocol="linear", n_boot=5, seed=0)
    labels = ["a", "b", "c"] * 4
    _write(
        tmp_path, "x", "t1", "multiclass", ["a", "b", "c"], "accuracy", labels, _onehot(np.zeros(12, int), 3)
    )
    _write(
        tmp_path, "y", "t2", "multiclass", ["a", "b", "c"], "accuracy", labels, _onehot(np.zeros(12, int), 3)
    )
    with pytest.raises(UsageError, match="no task in common"):
        comparison_rows(tmp_path, "x", "y", protocol="linear", n_boot=100, seed=0)


def test_command_line(tree):
    root = str(tree["results"])
    res = runner.invoke(app, ["report", root, "--compare", "m-a,m-b", "--n-boot", "300"])
    assert res.exit_code == 0, res.output
    assert "Paired comparison m-a − m-b" in res.stdout and "| clear " in res.stdout
    assert "warning: --compare: task moved:" in res.stderr and "(task skipped)" in res.stderr
    res = runner.invoke(app, ["report", root, "--compare", "m-a,m-b", "--n-boot", "300", "-f", "json"])
    assert res.exit_code == 0 and [r["task"] for r in json.loads(res.stdout)["rows"]][-1] == "mean"


def test_a_named_metric_is_compared_instead_of_the_primary_one(tree):
    """``report --compare -m balanced_accuracy``: every task on that metric (the binary one too, whose
    primary is AUROC), no DeLong (not an AUROC), and the caption names the metric."""
    from sklearn.metrics import balanced_accuracy_score

    said: list[str] = []
    rows = comparison_rows(tree["results"], "m-a", "m-b", protocol="linear", n_boot=200, seed=0,
                           warn=said.append, metric="balanced_accuracy")
    by = {r["task"]: r for r in rows}
    assert {r["metric"] for r in rows} == {"balanced_accuracy"} and by["tie"]["diff"] == pytest.approx(0)
    y, sa, sb = tree["bin"]
    want = balanced_accuracy_score(y, sa > 0.5) - balanced_accuracy_score(y, sb > 0.5)
    assert by["bin"]["diff"] == pytest.approx(want) and by["bin"]["p_delong"] is None
    assert by["clear"]["excludes_zero"] and by["clear"]["diff"] > 0.2
    said.clear()
    with pytest.raises(UsageError, match="no task with comparable"):  # qwk: ordinal tasks only
        comparison_rows(tree["results"], "m-a", "m-b", protocol="linear", n_boot=50, seed=0,
                        warn=said.append, metric="qwk")
    assert any("a binary task has no metric 'qwk'" in m for m in said)
    res = runner.invoke(app, ["report", str(tree["results"]), "--compare", "m-a,m-b", "--n-boot", "200",
                              "-m", "accuracy"])
    assert res.exit_code == 0, res.output
    assert "metric: accuracy" in res.stdout and "| bin | accuracy |" in res.stdout


@pytest.mark.parametrize(("args", "msg"), [
    (["--compare", "m-a"], "exactly two"),
    (["--compare", "m-a,zz"], "no model 'zz'"),
    (["--compare", "m-a,m-b", "--metric", "qwk_zz"], "no summary has metric 'qwk_zz'"),
])
def test_command_line_errors_are_one_line_with_exit_code_2(tree, monkeypatch, capsys, args, msg):
    import sys

    from midol_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["midol", "report", str(tree["results"]), *args])
    with pytest.raises(SystemExit) as ex:
        main.run()
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2
    assert err[-1].startswith("error: ") and msg in err[-1] and not any("Traceback" in e for e in err)

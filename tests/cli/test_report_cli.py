"""`midol report` through the real entry point, on a fixed results tree."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from midol_cli.cli import main
from tests.report._tree import write_tree

EXPECTED_MD = """\
Protocol: linear · metric: each task's primary metric · values ×100, 95% bootstrap CI in brackets

| modality | task | metric | m-a | m-b | M-IDoL (paper, arXiv 2604.08936) |
|---|---|---|---|---|---|
| dermoscopy | ham10000 | accuracy | 80.00 [78.00, 82.00] n=30 | **85.00 [83.00, 87.00]** n=30 | 97.10 |
| dermoscopy | *average* |  | 80.00 | **85.00** |  |
| fundus | aptos | qwk | 70.00 [65.00, 75.00] n=30 † | 72.00 [66.00, 78.00] n=30 † |  |
| fundus | retina | accuracy | 90.00 [88.00, 92.00] n=30 | 90.00 [87.00, 93.00] n=30 | 88.40 |
| fundus | *average* |  | 90.00 | 90.00 |  |
| all | *average rank* |  | 1.75 | **1.25** |  |

n=: the number of test images each value was computed on.
† data hash differs across models for aptos: not comparable, left out of averages and ranks.
M-IDoL (paper, arXiv 2604.08936): published percentages, shown only where the paper reports this metric; \
not part of the ranks.
"""


def midol(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midol", *args])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    code = ex.value.code
    return (0 if code is None else int(code)), out.out, out.err


def test_golden_markdown_with_reference(tmp_path, monkeypatch, capsys):
    results = write_tree(tmp_path)
    code, out, err = midol(monkeypatch, capsys, "report", str(results), "--reference", "paper")
    assert code == 0
    assert out == EXPECTED_MD
    # the malformed file is named, the mismatch is explained, on stderr only
    assert "oct2017" in err and "'task.data_hash'" in err
    assert "task 'aptos': data hash differs" in err
    assert "oct2017" not in out


def test_csv_and_json_carry_the_same_numbers(tmp_path, monkeypatch, capsys):
    results = write_tree(tmp_path)
    code, out_csv, _ = midol(monkeypatch, capsys, "report", str(results), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out_csv)))
    cell = {(r["row"], r["task"] or r["modality"], r["model"]): r for r in rows}
    assert cell[("task", "ham10000", "m-b")]["value"] == "85.0"
    assert cell[("task", "ham10000", "m-b")]["ci_low"] == "83.0"
    assert cell[("task", "ham10000", "m-b")]["n_test"] == "30"
    assert cell[("task", "aptos", "m-a")]["flag"] == "data_hash_mismatch"
    assert cell[("modality_average", "fundus", "m-a")]["value"] == "90.0"
    assert cell[("average_rank", "", "m-a")]["value"] == "1.75"
    assert "**" not in out_csv
    code, out_json, _ = midol(monkeypatch, capsys, "report", str(results), "--format", "json")
    obj = json.loads(out_json)
    ham = next(r for r in obj["rows"] if r["task"] == "ham10000")
    assert ham["cells"]["m-b"] == {"value": 85.0, "ci_low": 83.0, "ci_high": 87.0, "std": None,
                                   "n_seeds": None, "best": True, "degenerate": False, "n_test": 30}
    assert obj["average_rank"]["m-b"] == {"value": 1.25, "tasks": 2}
    assert obj["modality_average"]["dermoscopy"]["m-a"]["value"] == 80.0
    assert any("aptos" in w for w in obj["warnings"])


def test_fraction_protocol_and_metric_override(tmp_path, monkeypatch, capsys):
    results = write_tree(tmp_path)
    code, out, _ = midol(monkeypatch, capsys, "report", str(results), "--protocol", "fraction_0.01")
    assert code == 0
    assert "mean ± std over seeds" in out
    # ham10000: m-a mean 60.00 ± 10.00; m-b 70.00 ± 17.32 (best)
    assert "| dermoscopy | ham10000 | accuracy | 60.00 ± 10.00 n=30 | **70.00 ± 17.32** n=30 |" in out
    code, out, _ = midol(
        monkeypatch, capsys, "report", str(results), "--metric", "auroc", "--reference", "paper"
    )
    assert code == 0
    assert ("| dermoscopy | ham10000 | auroc | 85.00 [78.00, 87.00] n=30 | **90.00 [83.00, 92.00]** n=30 |  |"
            in out)


def test_plot_is_written(tmp_path, monkeypatch, capsys):
    results = write_tree(tmp_path)
    png = tmp_path / "bars.png"
    code, _, err = midol(monkeypatch, capsys, "report", str(results), "--plot", str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args,message",
    [
        (["report", "{missing}"], "does not exist"),
        (["report", "{empty}"], "no valid summary.json"),
        (
            ["report", "{results}", "--format", "xlsx"],
            "format (--format): Input should be 'md', 'csv', 'json' or 'html' (got \"xlsx\")",
        ),
        (["report", "{results}", "--protocol", "finetune"], "no summary has protocol 'finetune'"),
        (["report", "{results}", "--reference", "blog"], "--reference 'blog'"),
        (["report", "{results}", "--metric", "dice"], "no summary has metric 'dice'"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    results = write_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "results": results}
    code, out, err = midol(monkeypatch, capsys, *[a.format(**paths) for a in args])
    assert code == 2
    assert out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in err


def test_command_module_imports_nothing_heavy():
    import subprocess

    code = (
        "import sys, midol_cli.cli.report\n"
        "heavy = {'numpy', 'pandas', 'torch', 'matplotlib', 'sklearn', 'pyarrow'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _case_summary(model: str, task: str, value: float) -> dict:
    """A case-level run's summary (probe --protocol abmil): abmil, mean and max over 12 test slides."""
    from tests.report._tree import summary

    s = summary(model, task, "pathology", "auroc", value, value - 0.05, value + 0.05)
    block = {"metrics": {"auroc": {"value": value, "ci_low": value - 0.05, "ci_high": value + 0.05}}}
    s["protocols"] = {"abmil": block, "mean": block, "max": block}
    s["n"], s["case_level"] = {"train": 40, "val": 8, "test": 12}, {"unit": "slide", "runs": 5}
    return s


def _write(results, *summaries) -> None:
    for s in summaries:
        path = results / s["model"]["id"] / s["task"]["name"] / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(s))


def test_a_case_level_folder_reports_abmil_without_asking(tmp_path, monkeypatch, capsys):
    """Issue 27.2: plain `midol report` on case-level results only shows abmil (its heading says so, n=
    counts test slides); an explicit -p linear keeps the one-line error."""
    results = tmp_path / "results"
    _write(results, _case_summary("m-a", "camelyon", 0.90), _case_summary("m-b", "camelyon", 0.80))
    code, out, err = midol(monkeypatch, capsys, "report", str(results))
    assert code == 0, err
    assert out.startswith("Protocol: abmil · ")
    row = "| pathology | camelyon | auroc | **90.00 [85.00, 95.00]** n=12 | 80.00 [75.00, 85.00] n=12 |"
    assert row in out
    assert "n=: the number of test cases (slides) each value was computed on." in out
    code, out, err = midol(monkeypatch, capsys, "report", str(results), "-p", "linear")
    assert code == 2 and "no summary has protocol 'linear' (available: abmil, max, mean)" in err
    code, out, _ = midol(monkeypatch, capsys, "report", str(results), "-p", "mean", "--format", "json")
    assert code == 0 and json.loads(out)["protocol"] == "mean"


def test_a_mixed_folder_shows_linear_and_abmil_rows(tmp_path, monkeypatch, capsys):
    """Issue 27.2: image-level tasks show linear, case-level ones abmil (no dashes), each row labelled."""
    from tests.report._tree import summary

    results = tmp_path / "results"
    _write(results, summary("m-a", "ham10000", "dermoscopy", "accuracy", 0.80, 0.78, 0.82),
           _case_summary("m-a", "camelyon", 0.90))
    code, out, err = midol(monkeypatch, capsys, "report", str(results))
    assert code == 0, err
    assert out.startswith("Protocol: linear · ") and "; abmil for camelyon" in out.splitlines()[0]
    assert "| pathology | camelyon | auroc | **90.00 [85.00, 95.00]** n=12 |" in out
    assert "| dermoscopy | ham10000 | accuracy | **80.00 [78.00, 82.00]** n=30 |" in out
    assert ("n=: the number of test images each value was computed on; test cases (slides) on the "
            "case-level rows (camelyon).") in out
    code, out, _ = midol(monkeypatch, capsys, "report", str(results), "--format", "json")
    rows = {r["task"]: r["protocol"] for r in json.loads(out)["rows"]}
    assert rows == {"camelyon": "abmil", "ham10000": "linear"} and json.loads(out)["protocol"] == "linear"
    code, out, _ = midol(monkeypatch, capsys, "report", str(results), "-p", "linear")
    assert code == 0 and "| pathology | camelyon | auroc | – |" in out  # asked for: linear only


def test_the_written_settings_rerun_a_case_level_report(tmp_path, monkeypatch, capsys):
    """Issue 27.2: the settings written beside a report that picked abmil by itself leave the protocol
    out (not 'protocol: linear'), so `midol report THAT.yaml` gives the same report; a -p given is kept."""
    import yaml

    results = tmp_path / "results"
    _write(results, _case_summary("m-a", "camelyon", 0.90), _case_summary("m-b", "camelyon", 0.80))
    first = tmp_path / "first.md"
    code, _, err = midol(monkeypatch, capsys, "report", str(results), "--out", str(first))
    assert code == 0, err
    written = first.with_name("first.report.yaml")
    cfg = yaml.safe_load(written.read_text())
    assert "protocol" not in cfg and cfg["results_dir"] == str(results)
    again = tmp_path / "again.md"
    code, _, err = midol(monkeypatch, capsys, "report", str(written), "--out", str(again))
    assert code == 0, err
    assert again.read_text() == first.read_text() and again.read_text().startswith("Protocol: abmil · ")
    code, _, err = midol(monkeypatch, capsys, "report", str(results), "-p", "mean", "--out", str(first))
    assert code == 0, err
    assert yaml.safe_load(written.read_text())["protocol"] == "mean"


def _with_predictions(results, s: dict, protocol: str, skill: float) -> dict:
    """``s`` (a binary auroc task) written with a predictions.parquet of 40 test cases under ``protocol``:
    the positive class's score is ``skill`` * label + noise (fixed per skill; the same labels everywhere)."""
    import numpy as np
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table

    s["task"].update({"label_type": "binary", "classes": ["neg", "pos"], "metric": "auroc"})
    s["primary_metric"] = "auroc"
    y = np.arange(40) % 2
    pos = 1 / (1 + np.exp(-(skill * y + np.random.default_rng(int(skill * 10)).normal(size=40))))
    ids = [f"case{i:02d}" for i in range(40)]
    _write(results, s)
    part = (protocol, 0, ids, ids, [["neg", "pos"][v] for v in y], np.stack([1 - pos, pos], 1))
    table = prediction_table(["neg", "pos"], s["task"]["name"], s["model"]["id"], [part])
    pq.write_table(table, results / s["model"]["id"] / s["task"]["name"] / "predictions.parquet")
    return s


def test_compare_picks_abmil_for_a_case_level_task_as_the_table_does(tmp_path, monkeypatch, capsys):
    """Issue 27.2: `report --compare` without -p compares a case-level task on abmil (it stopped with 'no
    task with comparable linear predictions'); a mixed folder compares the others on linear."""
    from tests.report._tree import summary

    results = tmp_path / "results"
    for model, skill in (("m-a", 3.0), ("m-b", 1.0)):
        _with_predictions(results, _case_summary(model, "camelyon", 0.9), "abmil", skill)
    args = ("report", str(results), "--compare", "m-a,m-b", "--n-boot", "200")
    code, out, err = midol(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "Paired comparison m-a − m-b · protocol: abmil · " in out and "| camelyon | auroc |" in out
    code, out, err = midol(monkeypatch, capsys, *args, "-f", "json")
    assert code == 0 and json.loads(out)["protocol"] == "abmil"
    assert [r["task"] for r in json.loads(out)["rows"]] == ["camelyon", "mean"]
    code, _, err = midol(monkeypatch, capsys, *args, "-p", "linear")  # asked for: not picked
    assert code == 2 and "no summary has protocol 'linear'" in err

    for model, skill in (("m-a", 2.0), ("m-b", 2.5)):
        image_level = summary(model, "ham10000", "dermoscopy", "auroc", 0.8, 0.78, 0.82)
        _with_predictions(results, image_level, "linear", skill)
    code, out, err = midol(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "· protocol: linear; abmil for camelyon · " in out
    assert "| camelyon | auroc |" in out and "| ham10000 | auroc |" in out

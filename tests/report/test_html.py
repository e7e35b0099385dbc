"""`midol report --format html`: one self-contained page, parsed back with html.parser.

The results tree is ``tests/report/_tree.py``'s plus, for two runs, the files a probe writes beside
its summary (predictions, confusion matrix, reliability diagram) and hand-built calibration,
operating-point, subgroup and patient-level blocks; one run has hostile model and task names.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from midol_cli.cli.main import app
from tests.report._tree import summary, write_tree

runner = CliRunner()

HOSTILE_MODEL = '<script>alert("m")</script>'
HOSTILE_TASK = "x<img src=x onerror=alert(1)>&co"
DATA_PNG = "data:image/png;base64,"


def _ci(v: float, half: float = 0.05) -> dict[str, float]:
    return {"value": v, "ci_low": v - half, "ci_high": v + half}


def _bins() -> list[dict[str, Any]]:
    return [
        {
            "low": b / 15,
            "high": (b + 1) / 15,
            "n": 2 if b > 4 else 0,
            "confidence": (b + 0.5) / 15 if b > 4 else None,
            "accuracy": min(1.0, (b + 1) / 15) if b > 4 else None,
        }
        for b in range(15)
    ]


def _write_predictions(folder: Path, classes: list[str], task: str, model: str, labels: list[str],
                       protocols: list[tuple[str, int | None]], seed: int = 0) -> None:
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table

    rng = np.random.default_rng(seed)
    n, C = len(labels), len(classes)
    parts = []
    for protocol, s in protocols:
        logits = rng.normal(size=(n, C))
        logits[np.arange(n), [classes.index(lab) for lab in labels]] += 1.5  # better than chance
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        parts.append(
            (protocol, s, [f"s{i}" for i in range(n)], [f"p{i // 2}" for i in range(n)], labels, probs)
        )
    pq.write_table(prediction_table(classes, task, model, parts), folder / "predictions.parquet")


def rich_tree(root: Path) -> Path:
    """The shared tree, enriched: m-a/ham10000 has every figure and analysis block, a hostile binary
    run has predictions and operating points, m-b/retina a damaged confusion-matrix PNG, and a large
    t-SNE map sits in the results folder."""
    from PIL import Image

    from midol_cli.plotting import plot_confusion_matrix, plot_reliability

    results = write_tree(root)
    d = results / "m-a" / "ham10000"
    s = json.loads((d / "summary.json").read_text())
    lin = s["protocols"]["linear"]
    lin["calibration"] = {
        "ece": _ci(0.061, 0.02),
        "brier": _ci(0.312, 0.03),
        "n_bins": 15,
        "reliability": _bins(),
    }
    lin["operating_points"] = {"threshold_from": "val", "targets": [0.9, 0.95], "columns": {
        "a": {"sens_at_spec_0.90": {"threshold": 0.41, "sensitivity": _ci(0.72), "specificity": _ci(0.91)}},
        "c": {"too_small": True, "min_count": 3, "needed": 5},
    }}
    lin["subgroups"] = {
        "min_positives": 10,
        "metric": "accuracy",
        "columns": {
            "sex": {
                "groups": [
                    {
                        "value": "F",
                        "n": 14,
                        "n_groups": 12,
                        "n_pos": None,
                        "too_small": False,
                        "metrics": {"accuracy": _ci(0.8123)},
                    },
                    {
                        "value": "M",
                        "n": 13,
                        "n_groups": 11,
                        "n_pos": None,
                        "too_small": False,
                        "metrics": {"accuracy": _ci(0.7421)},
                    },
                    {
                        "value": "<other>",
                        "n": 3,
                        "n_groups": 3,
                        "n_pos": None,
                        "too_small": True,
                        "metrics": {},
                    },
                ],
                "missing": 2,
                "worst_gap": {
                    "metric": "accuracy",
                    "gap": 0.0702,
                    "ci_low": -0.05,
                    "ci_high": 0.2,
                    "best": "F",
                    "worst": "M",
                },
            }
        },
    }
    lin["patient_level"] = {"unit": "patient", "aggregation": "mean", "n_groups": 15,
                            "metrics": {"accuracy": _ci(0.8333), "auroc": _ci(0.9012)}}
    s["model"]["load_report"] = {"strict": True, "complete": True, "missing": [], "mismatched": []}
    (d / "summary.json").write_text(json.dumps(s))
    labels = ["a", "b", "c"] * 10
    _write_predictions(d, ["a", "b", "c"], "ham10000", "m-a", labels,
                       [("linear", None), ("fraction_0.01", 0), ("fraction_0.01", 1), ("fraction_0.01", 2)])
    plot_confusion_matrix(
        np.eye(3, dtype=int) * 8 + 1, ["a", "b", "c"], d / "confusion_matrix.png", title="cm"
    )
    plot_reliability(_bins(), d / "reliability.png", title="rel", ece=0.061)

    hs = summary(HOSTILE_MODEL, HOSTILE_TASK, "<mod>", "auroc", 0.77, 0.7, 0.84)
    hs["task"].update(label_type="binary", classes=["neg", "pos&<b>"])
    hs["protocols"]["linear"]["operating_points"] = {
        "threshold_from": "val",
        "columns": {
            "pos&<b>": {
                "sens_at_spec_0.95": {"threshold": 0.8, "sensitivity": _ci(0.55), "specificity": _ci(0.95)}
            }
        },
    }
    hs["model"]["load_report"] = {
        "strict": False,
        "complete": False,
        "missing": ["head.weight [3]"],
        "mismatched": [],
    }
    hs["provenance"]["command"] = f"midol probe --model '{HOSTILE_MODEL}'"
    hd = results / "hostile" / "task"
    hd.mkdir(parents=True)
    (hd / "summary.json").write_text(json.dumps(hs))
    _write_predictions(hd, ["neg", "pos&<b>"], HOSTILE_TASK, HOSTILE_MODEL, ["neg", "pos&<b>"] * 12,
                       [("linear", None)], seed=1)

    (results / "m-b" / "retina" / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    yy, xx = np.indices((1500, 2000))
    stripes = np.stack([(xx // 7 % 255), (yy // 5 % 255), ((xx + yy) // 11 % 255)], -1).astype(np.uint8)
    Image.fromarray(stripes).save(results / "tsne_modality.png")
    return results


class Page(HTMLParser):
    """What the tests look at: tables (rows of (cell text, classes of tags inside the cell)), images,
    every attribute, figure captions, tag counts and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict[str, Any]] = []
        self.imgs: list[dict[str, str]] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.tags: Counter[str] = Counter()
        self.captions: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._cell_classes: set[str] = set()
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        a = {k: v or "" for k, v in attrs}
        self.attrs += [(tag, k, v) for k, v in a.items()]
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell, self._cell_classes = [], set()
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "figcaption":
            self._caption = []
        if self._cell is not None and tag not in ("td", "th"):
            self._cell_classes |= set(a.get("class", "").split())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(("".join(self._cell).strip(), self._cell_classes))
            self._cell = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)

    def tables_with(self, header: str) -> list[list[list[tuple[str, set[str]]]]]:
        """The tables whose first row has a cell ``header``, in page order."""
        return [t["rows"] for t in self.tables if t["rows"] and header in [c for c, _ in t["rows"][0]]]

    def tables_starting(self, header: str) -> list[list[list[tuple[str, set[str]]]]]:
        """The tables whose first header cell is ``header``."""
        return [t["rows"] for t in self.tables if t["rows"] and t["rows"][0] and t["rows"][0][0][0] == header]

    def table_with(self, header: str) -> list[list[tuple[str, set[str]]]]:
        """The first table whose first row has a cell ``header``."""
        return self.tables_with(header)[0]


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def _row(rows: list[list[tuple[str, set[str]]]], *lead: str) -> list[tuple[str, set[str]]]:
    return next(r for r in rows if [c for c, _ in r[: len(lead)]] == list(lead))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, Page]:
    root = tmp_path_factory.mktemp("html")
    results = rich_tree(root)
    out = root / "out" / "report.html"
    res = runner.invoke(app, ["report", str(results), "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""  # the page goes to the file, never to stdout
    assert f"wrote {out}" in res.stderr
    text = out.read_text(encoding="utf-8")
    return results, text, parse(text)


def test_the_page_is_self_contained(report):
    _, text, page = report
    assert text.startswith("<!DOCTYPE html>")
    for needle in ("http://", "https://", "url(", "<link", "@import"):
        assert needle not in text
    assert page.tags["script"] == 0 and page.tags["iframe"] == 0 and page.tags["object"] == 0
    srcs = [v for _, k, v in page.attrs if k == "src"]
    assert srcs and all(v.startswith(DATA_PNG) for v in srcs)
    assert all(v.startswith("#") for _, k, v in page.attrs if k == "href")
    assert not [k for _, k, _ in page.attrs if k.startswith("on")]  # no event handler from a hostile name
    csp = [v for t, k, v in page.attrs if t == "meta" and k == "content" and "default-src 'none'" in v]
    assert csp, "the Content-Security-Policy meta is missing"


def test_every_image_is_a_decodable_png_of_bounded_size(report):
    from PIL import Image

    from midol_cli.report.html import MAX_IMAGE_PX

    _, text, page = report
    sizes = []
    for img in page.imgs:
        data = base64.b64decode(img["src"][len(DATA_PNG):], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG"
            sizes.append(im.size)
    assert max(max(s) for s in sizes) <= MAX_IMAGE_PX  # the 2000x1500 t-SNE map was downscaled
    assert (MAX_IMAGE_PX, 675) in sizes
    assert len(text.encode()) < 3_000_000


def test_figures_per_task(report):
    _, text, page = report
    kinds = Counter(c.split(" (")[0].split(":")[0] for c in page.captions)
    # m-a/ham10000: confusion matrix, reliability, ROC, subgroup bars; the hostile run: ROC; one t-SNE map
    assert kinds == {"confusion matrix": 1, "reliability diagram": 1, "ROC curve": 2, "sex": 1, "t-SNE": 1}
    assert len(page.imgs) == 6
    roc = [c for c in page.captions if c.startswith("ROC curve")]
    assert "ROC curve (one-vs-rest, linear, test)" in roc and "ROC curve (linear, test)" in roc
    # the damaged PNG is named, not embedded; runs without predictions say so
    assert "confusion_matrix.png could not be embedded (unreadable PNG" in text
    assert "No predictions.parquet: no ROC curve." in text


def test_benchmark_table_matches_the_markdown_numbers(report):
    _, _, page = report
    rows = page.table_with("modality")
    assert [c for c, _ in rows[0]] == ["modality", "task", "metric", HOSTILE_MODEL, "m-a", "m-b"]
    ham = _row(rows, "dermoscopy", "ham10000")
    assert ham[4] == ("80.00 [78.00, 82.00] n=30", {"n"})
    assert ham[5][0] == "85.00 [83.00, 87.00] n=30" and "best" in ham[5][1]
    aptos = _row(rows, "fundus", "aptos")
    assert aptos[4][0].endswith("†") and aptos[5][0].endswith("†")
    rank = _row(rows, "all", "average rank")
    assert [c for c, _ in rank[3:]] == ["–", "1.75", "1.25"] and "best" in rank[5][1]
    assert [c for c, _ in _row(rows, "fundus", "average")[4:]] == ["90.00", "90.00"]


def test_hostile_names_are_escaped_everywhere(report):
    _, text, page = report
    assert HOSTILE_MODEL not in text and HOSTILE_TASK not in text  # only their escaped forms
    assert "&lt;script&gt;alert(&quot;m&quot;)&lt;/script&gt;" in text
    visible = "".join(page.text)
    assert HOSTILE_MODEL in visible and HOSTILE_TASK in visible and "pos&<b>" in visible
    assert f"Task: {HOSTILE_TASK} (<mod>)" in visible
    assert page.tags["b"] == 0  # '<b>' in a class name stayed text


def test_analysis_tables(report):
    _, text, page = report
    sub = page.table_with("sex")
    assert [c for c, _ in _row(sub, "F")] == ["F", "14", "12", "–", "81.23 [76.23, 86.23]"]
    small = _row(sub, "<other>")
    assert small[4][0] == "too small" and "small" in small[4][1]
    assert not any(ch.isdigit() for ch in small[4][0])
    cap = next(c for c in page.captions if c.startswith("sex:"))
    assert "Worst-group gap (accuracy): 7.02 [-5.00, 20.00], best 'F', worst 'M'." in cap
    assert "Too small: fewer than 10" in cap
    assert "2 images without a value left out" in text

    (pl,) = page.tables_starting("metric")
    assert [[c for c, _ in r] for r in pl] == [
        ["metric", "m-a"],
        ["unit", "patient (mean)"],
        ["groups", "15"],
        ["accuracy [95% CI]", "83.33 [78.33, 88.33]"],
        ["auroc [95% CI]", "90.12 [85.12, 95.12]"],
    ]

    cal = page.table_with("ECE [95% CI]")
    assert [c for c, _ in cal[1]] == ["m-a", "linear", "6.10 [4.10, 8.10]", "31.20 [28.20, 34.20]", "15"]
    hostile_ops, ops = page.tables_with("threshold")  # the hostile task's modality '<mod>' sorts first
    assert [c for c, _ in ops[1]] == ["a", "sens at spec 0.90", "0.4100", "72.00 [67.00, 77.00]",
                                      "91.00 [86.00, 96.00]"]
    assert ops[2][1][0] == "too small (3 < 5 cases)"
    assert [c for c, _ in hostile_ops[1]][:3] == ["pos&<b>", "sens at spec 0.95", "0.8000"]


def test_provenance(report):
    _, _, page = report
    prov = page.table_with("weights hash")
    hostile = _row(prov, HOSTILE_MODEL, HOSTILE_TASK)
    assert hostile[2][0] == f"{HOSTILE_MODEL}.safetensors" and hostile[3][0] == "0" * 64
    assert hostile[5][0] == "h-common"
    assert hostile[6][0].startswith("lenient, incomplete; 1 missing") and "head.weight [3]" in hostile[6][0]
    assert hostile[7][0] == f"midol probe --model '{HOSTILE_MODEL}'"
    assert "midol_version: 0.1.0" in hostile[8][0]
    assert len(prov) == 1 + 7  # header + every (model, task) with a valid summary


def test_malformed_summary_is_listed_as_a_warning(report):
    _, text, _ = report
    assert 'id="warnings"' in text and "oct2017" in text and "task.data_hash" in text


def test_comparison_table_and_significance_marks(tmp_path):
    from midol_cli.report.html import render_html
    from midol_cli.report.table import build_table, collect_summaries

    results = write_tree(tmp_path)
    found, _ = collect_summaries(results)
    rows = [
        {"task": "ham10000", "metric": "accuracy", "a": 0.80, "b": 0.85, "diff": -0.05, "ci_low": -0.08,
         "ci_high": -0.02, "p_boot": 0.0004, "p_delong": None, "p_holm": 0.0008, "excludes_zero": True,
         "n_test": 30, "n_groups": 30},
        {"task": "retina", "metric": "accuracy", "a": 0.90, "b": 0.90, "diff": 0.0, "ci_low": -0.03,
         "ci_high": 0.03, "p_boot": 0.98, "p_delong": None, "p_holm": 0.98, "excludes_zero": False,
         "n_test": 30, "n_groups": 30},
        {"task": "mean", "metric": "accuracy", "a": 0.85, "b": 0.875, "diff": -0.025, "ci_low": -0.05,
         "ci_high": 0.001, "p_boot": 0.07, "p_delong": None, "p_holm": None, "excludes_zero": False,
         "n_test": None, "n_groups": None},
    ]
    text = render_html(build_table(found), found, results, comparison=rows, compare_models=("m-a", "m-b"))
    page = parse(text)
    comp = page.table_with("p (bootstrap)")
    assert [c for c, _ in comp[0]][:5] == ["task", "metric", "m-a", "m-b", "difference (m-a − m-b) [95% CI]"]
    ham, retina, mean = comp[1:]
    assert [c for c, _ in ham] == [
        "ham10000",
        "accuracy",
        "80.00",
        "85.00",
        "-5.00 [-8.00, -2.00]",
        "<0.001",
        "–",
        "<0.001",
        "30",
        "30",
        "*",
    ]
    assert "sig" in ham[-1][1] and retina[-1][0] == "" and mean[-1][0] == ""
    assert mean[0][0] == "mean"
    bench = page.table_with("modality")
    cells = _row(bench, "dermoscopy", "ham10000")
    # m-b is the better one
    assert cells[4][0] == "85.00 [83.00, 87.00] n=30 *" and {"best", "sig"} <= cells[4][1]
    assert cells[3][0] == "80.00 [78.00, 82.00] n=30"
    assert not any("sig" in c for c, cls in _row(bench, "fundus", "retina") for c in cls)
    assert "the 95% bootstrap CI of the difference excludes 0" in text
    assert "Paired comparison: m-a vs m-b" in text
    # without a comparison there is no comparison section and no mark
    plain = render_html(build_table(found), found, results)
    assert 'id="comparison"' not in plain and 'class="sig"' not in plain


def test_roc_points_match_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score, roc_curve

    from midol_cli.report.html import roc_points

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200).astype(bool)
    s = np.round(rng.random(200) + 0.4 * y, 1)  # coarse scores: many ties
    fpr, tpr, auc = roc_points(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert roc_points(np.ones(5, bool), np.arange(5)) is None


def test_fraction_protocol_draws_the_first_seed(tmp_path):
    results = rich_tree(tmp_path)
    out = tmp_path / "f.html"
    res = runner.invoke(app, ["report", str(results), "-f", "html", "-o", str(out), "-p", "fraction_0.01"])
    assert res.exit_code == 0, res.output
    page = parse(out.read_text())
    assert "ROC curve (one-vs-rest, fraction_0.01, test); seed 0 of fraction_0.01" in page.captions
    assert "mean ± std over seeds" in "".join(page.text)


def test_tsne_folder_option(tmp_path):
    from PIL import Image

    results = write_tree(tmp_path / "r")
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.new("RGB", (40, 30), "white").save(maps / "tsne_fundus.png")
    out = tmp_path / "t.html"
    res = runner.invoke(app, ["report", str(results), "-f", "html", "-o", str(out), "--tsne", str(maps)])
    assert res.exit_code == 0, res.output
    page = parse(out.read_text())
    assert [c for c in page.captions if c.startswith("t-SNE")] == ["t-SNE: tsne_fundus.png"]


def test_out_for_text_formats_equals_stdout(tmp_path):
    results = write_tree(tmp_path)
    shown = runner.invoke(app, ["report", str(results)])
    out = tmp_path / "sub" / "table.md"
    written = runner.invoke(app, ["report", str(results), "--out", str(out)])
    assert shown.exit_code == written.exit_code == 0
    assert written.stdout == "" and out.read_text() == shown.stdout


@pytest.mark.parametrize("args,message", [
    (["-f", "html"], "--format html writes a file: add --out FILE"),
    (["-f", "html", "--out", "{folder}"], "is a folder; it must be a file path"),
    (["-f", "html", "--out", "{blocker}/x.html"], "which is a file"),
    (["-f", "html", "--out", "{tmp}/x.html", "--tsne", "{tmp}/nope"], "--tsne folder"),
])
def test_bad_out_is_one_usage_line(tmp_path, monkeypatch, capsys, args, message):
    import sys

    from midol_cli.cli import main

    results = write_tree(tmp_path)
    (tmp_path / "blocker").write_text("")
    paths = {"folder": tmp_path, "blocker": tmp_path / "blocker", "tmp": tmp_path}
    # the console-script entry, which turns a UsageError into one line and exit code 2
    monkeypatch.setattr(sys, "argv", ["midol", "report", str(results), *[a.format(**paths) for a in args]])
    with pytest.raises(SystemExit) as ex:
        main.run()
    err = capsys.readouterr().err
    assert ex.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "x.html").exists()


def test_real_probe_results_render_every_section(tmp_path):
    """Summaries, predictions and figures as ``run_probe_suite`` writes them (not hand-built)."""
    import pandas as pd

    from midol_cli.eval.results import Task, run_probe_suite

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    sex = np.where(rng.random(n) < 0.5, "female", "male")
    g = np.arange(n) // 2  # two images per patient, a patient in one split
    split = np.where(g % 5 == 0, "test", np.where(g % 5 == 1, "val", "train"))
    task = Task("bin<&>", "xray", "binary", ("neg", "pos"), "auroc")
    results = tmp_path / "results"
    for model, signal in (("weak", 0.5), ("strong", 2.0)):
        X = rng.normal(size=(n, 8)).astype(np.float32)
        X[:, 0] += signal * (2 * y - 1)
        df = pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(n)],
                "modality": "xray",
                "label": np.where(y == 1, "pos", "neg"),
                "group": [f"p{i // 2}" for i in range(n)],
                "split": split,
                "embedding": list(X),
                "dataset": "d",
                "meta": [json.dumps({"sex": s}) for s in sex],
            }
        )
        info = {"id": model, "weights": f"{model}.safetensors", "weights_hash": "f" * 64, "arch": "vit"}
        run_probe_suite(df, task, results / model / "bin", model_info=info, data_hash="dh", fractions=(),
                        seeds=(0,), n_boot=50, knn_ks=(), subgroups=("sex",), group_unit="patient")
    out = tmp_path / "real.html"
    res = runner.invoke(app, ["report", str(results), "-f", "html", "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = parse(out.read_text())
    kinds = Counter(c.split(" (")[0].split(":")[0] for c in page.captions)
    assert kinds == {"confusion matrix": 2, "reliability diagram": 2, "ROC curve": 2, "sex": 2}
    assert [c for c, _ in page.table_with("ECE [95% CI]")[0]][:3] == ["model", "protocol", "ECE [95% CI]"]
    assert len(page.tables_with("threshold")) == 2
    (patient,) = ([[c for c, _ in r] for r in t] for t in page.tables_starting("metric"))
    assert patient[0] == ["metric", "strong", "weak"] and patient[1] == [
        "unit",
        "patient (mean)",
        "patient (mean)",
    ]
    assert patient[2] == ["groups", "40", "40"] and "auroc [95% CI]" in [r[0] for r in patient]
    bench = page.table_with("modality")
    row = _row(bench, "xray", "bin<&>")
    assert [c for c, _ in bench[0]] == ["modality", "task", "metric", "chance", "strong", "weak"]
    assert row[3][0] == "50.00" and "best" in row[4][1] and "best" not in row[5][1]


def test_a_case_level_runs_heatmaps_are_embedded_as_data_uris(tmp_path):
    """``probe --protocol abmil --heatmaps N`` lists its PNGs in summary.json; the task section embeds each
    (a data URI, no file path), shows abmil when the table's protocol is absent, and a run without
    heatmaps adds nothing."""
    from PIL import Image

    from midol_cli.report.html_figures import _Images, _Run, heatmap_section

    (tmp_path / "heatmaps").mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(buf, format="PNG")
    (tmp_path / "heatmaps" / "heatmap_t1.svs.png").write_bytes(buf.getvalue())
    listed = [{"case": "t1.svs", "why": "true positive", "png": "heatmaps/heatmap_t1.svs.png"}]
    run = _Run("m", "t", tmp_path, {"protocols": {"abmil": {}, "mean": {}, "max": {}}, "heatmaps": listed})
    images = _Images()
    html = heatmap_section(images, run)
    assert "Attention heatmaps: m" in html and "t1.svs (true positive)" in html
    assert "not a segmentation" in html
    assert html.count('src="data:image/png;base64,') == 1 and images.count == 1 and "heatmaps/" not in html
    assert run.protocol("linear") == "abmil"
    assert heatmap_section(_Images(), _Run("m", "t", tmp_path / "none", {"protocols": {}})) == ""

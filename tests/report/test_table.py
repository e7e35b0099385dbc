from __future__ import annotations

from pathlib import Path

import pytest

from midol_cli.report.table import _average_ranks, build_table, collect_summaries, render_markdown
from tests.report._tree import summary, write_tree


def test_average_ranks_share_ties():
    assert _average_ranks({"a": 0.9, "b": 0.8, "c": 0.9, "d": 0.1}) == {
        "a": 1.5,
        "c": 1.5,
        "b": 3.0,
        "d": 4.0,
    }


def test_collect_skips_malformed_and_names_them(tmp_path):
    results = write_tree(tmp_path)
    (results / "m-a" / "junk").mkdir()
    (results / "m-a" / "junk" / "summary.json").write_text("{")
    found, warnings = collect_summaries(results)
    assert len(found) == 6
    assert len(warnings) == 2
    assert any("junk" in w and "not valid JSON" in w for w in warnings)
    assert any("oct2017" in w and "task.data_hash" in w for w in warnings)


def _entries(*specs):
    return [(Path(f"{m}/{t}/summary.json"), summary(m, t, mod, "accuracy", v, v - 0.01, v + 0.01))
            for m, t, mod, v in specs]


def test_partial_coverage_average_and_single_model_rows_not_ranked():
    t = build_table(_entries(
        ("a", "t1", "xray", 0.8), ("b", "t1", "xray", 0.7),
        ("a", "t2", "xray", 0.6),  # only model a has t2
    ))
    assert t.modality_average["xray"]["a"] == (pytest.approx(0.7), 2, 2)
    assert t.modality_average["xray"]["b"] == (pytest.approx(0.7), 1, 2)
    assert t.average_rank == {"a": (1.0, 1), "b": (2.0, 1)}
    md = render_markdown(t)
    # a covers both tasks, so only its average can be bold; b's partial average says so
    assert "| xray | *average* |  | **70.00** | 70.00 (1/2) |" in md
    assert "| xray | t2 | accuracy | **60.00 [59.00, 61.00]** n=30 | – |" in md


def test_duplicate_and_disagreeing_primary_metric_are_warned():
    entries = _entries(("a", "t1", "xray", 0.8), ("a", "t1", "xray", 0.9), ("b", "t1", "xray", 0.7))
    entries[2][1]["primary_metric"] = "auroc"
    t = build_table(entries)
    assert any("appears twice" in w for w in t.warnings)
    assert any("disagree on the primary metric" in w for w in t.warnings)
    assert t.rows[0].cells["a"].value == 0.8  # the first one is kept


def test_reference_only_where_metric_matches(tmp_path):
    results = write_tree(tmp_path)
    found, _ = collect_summaries(results)
    t = build_table(found, reference="paper")
    refs = {r.task: r.reference for r in t.rows}
    assert refs == {"ham10000": pytest.approx(0.971), "aptos": None, "retina": pytest.approx(0.884)}
    t = build_table(found, metric="auroc", reference="paper")
    assert all(r.reference is None for r in t.rows)


def test_chance_column_and_degenerate_marks():
    entries = _entries(("a", "t1", "dermoscopy", 0.25), ("b", "t1", "dermoscopy", 0.7))
    for _, s in entries:
        s["chance"] = {"accuracy": 0.25}
    entries[0][1]["protocols"]["linear"]["degenerate"] = {"flag": True, "top": "nv", "share": 1.0}
    md = render_markdown(build_table(entries))
    assert "| modality | task | metric | chance | a | b |" in md
    assert (
        "| dermoscopy | t1 | accuracy | 25.00 | 25.00 [24.00, 26.00] n=30 ‡ | **70.00 [69.00, 71.00]** n=30 |"
        in md
    )
    assert "‡ degenerate probe" in md and "a on t1" in md


def test_a_lenient_weights_load_is_marked_and_a_strict_one_is_not():
    entries = _entries(("a", "t1", "dermoscopy", 0.6), ("b", "t1", "dermoscopy", 0.7))
    entries[0][1]["model"]["load_report"] = {
        "strict": False,
        "complete": False,
        "missing": ["x [3]", "y [3]"],
        "mismatched": ["z: file [2], model [3]"],
    }
    entries[1][1]["model"]["load_report"] = {
        "strict": True,
        "complete": True,
        "missing": [],
        "mismatched": [],
    }
    md = render_markdown(build_table(entries))
    row = next(line for line in md.splitlines() if line.startswith("| dermoscopy | t1 |"))
    assert row.count("§") == 1 and row.index("§") < row.index("**70.00")
    assert "§ lenient weights load" in md and "a (3 tensors)" in md


def test_models_pre_trained_from_released_weights_are_named_with_their_hash():
    entries = _entries(("a", "t1", "dermoscopy", 0.6), ("b", "t1", "dermoscopy", 0.7))
    entries[0][1]["model"]["init"] = {"weights": "imagenet-swinb=w/swinb.safetensors", "sha256": "ab12" * 16}
    md = render_markdown(build_table(entries))
    assert (
        "Pre-trained from released weights: a from imagenet-swinb=w/swinb.safetensors (sha256 ab12ab12ab12)."
        in md
    )
    assert "b from" not in md


# --------------------------------------------------------------------------- issue 25.23


def _row_line(md: str, lead: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(lead))


def test_each_cell_shows_its_test_images_in_every_format():
    import csv
    import io
    import json

    from midol_cli.report.table import render_csv, render_json

    entries = _entries(("a", "t1", "xray", 0.8), ("b", "t1", "xray", 0.7))
    entries[1][1]["n"]["test"] = 28  # b was scored on fewer test images
    t = build_table(entries)
    assert _row_line(render_markdown(t), "| xray | t1 |") == (
        "| xray | t1 | accuracy | **80.00 [79.00, 81.00]** n=30 | 70.00 [69.00, 71.00] n=28 |")
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(render_csv(t))) if r["row"] == "task"}
    assert (rows["a"]["n_test"], rows["b"]["n_test"]) == ("30", "28")
    cells = json.loads(render_json(t))["rows"][0]["cells"]
    assert (cells["a"]["n_test"], cells["b"]["n_test"]) == (30, 28)


def test_no_bold_for_a_tie_at_the_random_init_floor_or_when_all_tie():
    values = {"t1": (0.8, 0.8, 0.6), "t2": (0.9, 0.8, 0.6), "t3": (0.7, 0.7, 0.7)}  # midol, random-x, other
    entries = _entries(*((m, t, "xray", v[i]) for t, v in values.items()
                         for i, m in enumerate(("midol", "random-x", "other"))))
    for _, s in entries:
        if s["model"]["id"] == "random-x":
            s["model"].update(weights="random:runs/base", weights_hash="random-seed0")
    md = render_markdown(build_table(entries))
    assert "**" not in _row_line(md, "| xray | t1 |")  # the best ties the random-init floor
    assert "**90.00 [89.00, 91.00]**" in _row_line(md, "| xray | t2 |")  # above the floor: bold
    assert "**" not in _row_line(md, "| xray | t3 |")  # all tied
    assert "Random-init baseline (random-x): the floor" in md


def test_no_bold_when_every_model_ties_or_the_top_ties_chance():
    tied = build_table(_entries(("a", "t1", "xray", 0.8), ("b", "t1", "xray", 0.8)))
    assert "**" not in render_markdown(tied)
    entries = _entries(("a", "t1", "xray", 0.5), ("b", "t1", "xray", 0.4))
    for _, s in entries:
        s["chance"] = {"accuracy": 0.5}
    assert "**" not in _row_line(render_markdown(build_table(entries)), "| xray | t1 |")


@pytest.mark.parametrize("classes,chance", [(["neg", "pos"], "50.00"), (["a", "b", "c", "d"], "25.00")])
def test_balanced_accuracy_chance_is_one_over_k(classes, chance):
    entries = [(Path(f"{m}/t1/summary.json"),
                summary(m, "t1", "xray", "balanced_accuracy", v, v - 0.01, v + 0.01))
               for m, v in (("a", 0.8), ("b", 0.7))]
    for _, s in entries:
        s["task"]["classes"] = classes
        # what the probe records when the training majority class is absent from the test split
        s["chance"] = {"balanced_accuracy": 0.0, "accuracy": 0.0}
    t = build_table(entries)
    line = _row_line(render_markdown(t), "| xray | t1 |")
    assert line.startswith(f"| xray | t1 | balanced_accuracy | {chance} |")
    assert "balanced accuracy 100/K for K classes" in render_markdown(t)


def test_degenerate_note_names_model_task_and_prediction_but_not_on_multilabel_auroc():
    entries = _entries(("a", "t1", "dermoscopy", 0.6), ("b", "t1", "dermoscopy", 0.7))
    entries[0][1]["protocols"]["linear"]["degenerate"] = {"flag": True, "top": "nv", "share": 0.97}
    md = render_markdown(build_table(entries))
    assert "a on t1 predicts 'nv' for 97%" in md
    multi = [(Path(f"{m}/cxr/summary.json"), summary(m, "cxr", "xray", "auroc", v, v - 0.01, v + 0.01))
             for m, v in (("a", 0.6), ("b", 0.7))]
    for _, s in multi:
        s["task"]["label_type"] = "multilabel"
        s["protocols"]["linear"]["degenerate"] = {"flag": True, "top": "", "share": 1.0}
        s["protocols"]["linear"]["metrics"]["accuracy"] = {"value": 0.1, "ci_low": 0.05, "ci_high": 0.15}
    md = render_markdown(build_table(multi))
    assert "‡" not in md and "predicts" not in md
    # the same flag still counts for a threshold metric of that multi-label task
    md = render_markdown(build_table(multi, metric="accuracy"))
    assert "‡" in _row_line(md, "| xray | cxr |") and "predicts no label (the empty set) for 100%" in md


# --------------------------------------------------------------------------- issue 28.4


def test_average_rows_never_mix_metrics():
    """A modality with two accuracy tasks and two AUROC tasks gets one average row per metric, each over
    its own tasks; the old single row (the mean of all four) is gone. A one-metric modality is unchanged."""
    import csv
    import io
    import json

    from midol_cli.report.table import render_csv, render_json

    spec = [("t1", "accuracy", 0.8, 0.6), ("t2", "accuracy", 0.6, 0.7),
            ("t3", "auroc", 0.9, 0.95), ("t4", "auroc", 0.7, 0.75), ("t5", "qwk", 0.5, 0.4)]
    entries = []
    for t, metric, va, vb in spec:
        for m, v in (("a", va), ("b", vb)):
            s = summary(m, t, "xray", metric, v, v - 0.01, v + 0.01)
            # the fixture's extra "auroc" entry (value + 0.05) would overwrite an AUROC primary metric
            s["protocols"]["linear"]["metrics"][metric] = {"value": v, "ci_low": v - 0.01,
                                                           "ci_high": v + 0.01}
            entries.append((Path(f"{m}/{t}/summary.json"), s))
    entries += _entries(("a", "u1", "oct", 0.8), ("b", "u1", "oct", 0.7), ("a", "u2", "oct", 0.6),
                        ("b", "u2", "oct", 0.5))
    t = build_table(entries)
    assert t.modality_average["xray (accuracy)"]["a"] == (pytest.approx(0.7), 2, 2)
    assert t.modality_average["xray (accuracy)"]["b"] == (pytest.approx(0.65), 2, 2)
    assert t.modality_average["xray (auroc)"]["a"] == (pytest.approx(0.8), 2, 2)
    assert t.modality_average["xray (auroc)"]["b"] == (pytest.approx(0.85), 2, 2)
    assert "xray" not in t.modality_average and "xray (qwk)" not in t.modality_average  # qwk: one task
    assert t.modality_average["oct"]["a"] == (pytest.approx(0.7), 2, 2)
    md = render_markdown(t)
    assert "| xray | *average (accuracy)* | accuracy | **70.00** | 65.00 |" in md
    assert "| xray | *average (auroc)* | auroc | 80.00 | **85.00** |" in md
    assert "| oct | *average* |  | **70.00** | 60.00 |" in md
    assert "never across metrics: xray: accuracy, auroc." in md
    rows = [r for r in csv.DictReader(io.StringIO(render_csv(t))) if r["row"] == "modality_average"]
    xray = {(r["modality"], r["metric"], r["model"], r["value"]) for r in rows if r["modality"] == "xray"}
    assert xray == {
        ("xray", "accuracy", "a", "70.0"), ("xray", "accuracy", "b", "65.0"),
        ("xray", "auroc", "a", "80.0"), ("xray", "auroc", "b", "85.0")}
    from midol_cli.report.html import _benchmark_table

    page = _benchmark_table(t, None, None)  # the HTML report's table has the same rows
    assert "average (accuracy)" in page and "average (auroc)" in page and ">65.00<" in page
    obj = json.loads(render_json(t))
    assert obj["modality_average"]["xray (auroc)"]["b"]["value"] == 85.0
    assert obj["average_rows"] == {"xray": [{"key": "xray (accuracy)", "metric": "accuracy"},
                                            {"key": "xray (auroc)", "metric": "auroc"}]}

"""The study report's degenerate-probe lines (report/study.py): they name model and task, and leave out
multi-label AUROC tasks, where "predicts ''" (the empty label set) means nothing (issue 25.23)."""

from __future__ import annotations

from midol_cli.report.study import _degenerate_lines


def test_degenerate_lines_name_model_and_task_but_skip_multilabel_auroc():
    rec = {"tasks": {"cxr": {"metric": "auroc"}, "derm": {"metric": "accuracy"}},
           "degenerate": [{"model": "midol-s0", "task": "cxr", "top": "", "share": 1.0},
                          {"model": "random-s1", "task": "derm", "top": "nv", "share": 0.97}]}
    assert _degenerate_lines(rec) == ["- random-s1 on derm: predicts 'nv' for 97% of test images"]
    rec["degenerate"] = rec["degenerate"][:1]
    assert _degenerate_lines(rec)[0].startswith("None: no probe predicts one class")

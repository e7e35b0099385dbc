from pathlib import Path

import pytest

from midol_cli.errors import UsageError
from midol_cli.tasks import TASKS, get_task, task_options

ROOT = Path(__file__).resolve().parents[2]


def test_every_task_is_consistent():
    from midol_cli.data.layouts import get_layout
    from midol_cli.eval.metrics import metric_names

    for spec in TASKS.values():
        get_layout(spec.layout)  # the layout exists
        if spec.label_type != "segmentation":
            assert spec.metric in metric_names(spec.label_type), spec.name
            spec.eval_task()  # validates classes
        for k in spec.user_options:
            assert k in dict(spec.layout_options), f"{spec.name}: option {k} has no default"


def test_unknown_task_suggests():
    with pytest.raises(UsageError, match="did you mean 'ham10000'"):
        get_task("ham1000")


def test_task_options_only_declared_keys():
    spec = next((s for s in TASKS.values() if s.user_options), None)
    if spec is None:
        pytest.skip("no task with options")
    k = spec.user_options[0]
    assert task_options(spec, [f"{k}=x"])[k] == "x"
    with pytest.raises(UsageError, match="has no option"):
        task_options(spec, ["nonsense=1"])


def test_docs_tasks_md_is_up_to_date():
    from midol_cli.tasks.doc import tasks_markdown

    assert (ROOT / "docs" / "tasks.md").read_text() == tasks_markdown(), (
        "docs/tasks.md is stale: run `midol tasks --format md > docs/tasks.md`"
    )


def test_the_task_list_at_80_columns_shows_every_name_whole():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from midol_cli.tasks import TASKS

    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-m", "midol_cli", "tasks"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(root)},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    cells = {c.strip() for line in res.stdout.splitlines() for c in line.split("│")}
    missing = [n for n in TASKS if n not in cells]
    assert not missing, missing
    assert max(len(x) for x in res.stdout.splitlines()) <= 80


def test_docs_tasks_md_table_rows_follow_its_header():
    """A Markdown table ends at its first non-row line: every task's row must come right after the
    header's separator, or the page renders an empty table (issue 25.24)."""
    from midol_cli.tasks.doc import tasks_markdown

    lines = tasks_markdown().splitlines()
    head = lines.index("| task | modality | classes | label type | metric | split |")
    assert lines[head + 1] == "|---|---|---|---|---|---|"
    rows = lines[head + 2 : head + 2 + len(TASKS)]
    assert [r.split("|")[1].strip().strip("`") for r in rows] == list(TASKS), rows[:3]
    assert not lines[head + 2 + len(TASKS)].startswith("|")


def test_tasks_show_states_a_case_level(tmp_path, monkeypatch):
    """Issue 27: `midol tasks show` names a task's case level (a task file's `case:`), and docs/tasks.md a
    built-in's; an image-level task shows none."""
    import dataclasses
    import os
    import subprocess
    import sys

    from midol_cli.tasks.doc import tasks_markdown

    task = tmp_path / "slides.yaml"
    task.write_text("name: slides-mine\nmodality: pathology\nlabel_type: binary\nclasses: [normal, tumor]\n"
                    "case: slide\n")

    def show(name: str) -> str:
        res = subprocess.run([sys.executable, "-m", "midol_cli", "tasks", "show", name], cwd=ROOT,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = show(str(task))
    assert "case:    slide (the label belongs to each slide: probe --protocol abmil)" in out
    assert f"run: midol probe --protocol abmil --task {task} " in out
    assert "case:" not in show("ham10000")
    assert "**Case:**" not in tasks_markdown()
    monkeypatch.setitem(TASKS, "pcam", dataclasses.replace(TASKS["pcam"], case="slide"))
    assert "- **Case:** `slide` (`midol probe --protocol abmil`)" in tasks_markdown()

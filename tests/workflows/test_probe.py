"""The probe's log lines (workflows/probe.probe_log): a degenerate-probe warning names the model and the
task, and is not raised for a multi-label AUROC task, where "predicts ''" means nothing (issue 25.23)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from midol_cli.eval.results import Task, run_probe_suite
from midol_cli.progress import Reporter
from midol_cli.tasks import TaskSpec
from midol_cli.workflows.probe import probe_log


def _table(labels: list[str], dim: int = 6) -> pd.DataFrame:
    n = len(labels)
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "modality": "xray", "label": labels,
        "group": [f"p{i}" for i in range(n)],
        "split": [("train", "train", "val", "test")[i % 4] for i in range(n)],
        "embedding": list(rng.normal(size=(n, dim)).astype(np.float32)), "dataset": "d",
        "meta": [json.dumps({}) for _ in range(n)],
    })


def _probe(tmp_path, task: Task, labels: list[str], capsys) -> tuple[dict, str]:
    spec = TaskSpec(task.name, "xray", "", task.label_type, task.classes, task.metric, "test", "split")
    info = {"id": "model-x", "weights": "w", "weights_hash": "0" * 16, "arch": "vit"}
    summary = run_probe_suite(_table(labels), task, tmp_path / task.name, model_info=info, data_hash="h",
                              fractions=(), seeds=(0,), n_boot=20, knn_ks=(),
                              log=probe_log("model-x", spec, Reporter()))  # plain lines on stderr
    return summary, capsys.readouterr().err


def test_a_degenerate_probe_warning_names_model_and_task(tmp_path, capsys):
    labels = ["a"] * 190 + ["b"] * 10  # noise features, 5% 'b': the probe predicts 'a' for (nearly) all
    summary, err = _probe(tmp_path, Task("t1", "xray", "binary", ("a", "b"), "auroc"), labels, capsys)
    assert summary["protocols"]["linear"]["degenerate"]["flag"]
    line = next(x for x in err.splitlines() if "(degenerate)" in x)
    assert line.strip().startswith("model-x on t1: warning: the linear probe predicts 'a'")


def test_no_degenerate_warning_on_a_multilabel_auroc_task(tmp_path, capsys):
    labels = ["x" if i % 10 == 0 else "y" if i % 10 == 1 else "x|y" if i == 5 else "z" for i in range(200)]
    task = Task("cxr", "xray", "multilabel", ("x", "y"), "auroc")
    summary, err = _probe(tmp_path, task, labels, capsys)
    assert summary["protocols"]["linear"]["degenerate"] == {"flag": True, "top": "", "share": 1.0}
    assert "(degenerate)" not in err and "predicts ''" not in err, err

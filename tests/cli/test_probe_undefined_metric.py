"""`midol probe` prints an undefined metric (None: AUROC on a test split without both classes) as 'n/a',
never a `TypeError: unsupported format string passed to NoneType.__format__` traceback (issue 25.7)."""

from __future__ import annotations

import sys

import pytest

from midol_cli.cli import main


def test_a_none_metric_prints_as_n_a(tmp_path, monkeypatch, capsys):
    from midol_cli.workflows import probe

    none = {"value": None, "ci_low": None, "ci_high": None}
    summary = {"task": {"name": "t1"}, "model": {"id": "m"}, "primary_metric": "auroc", "n": {"test": 4},
               "protocols": {"linear": {"metrics": {"auroc": none}}, "knn_k10": {"metrics": {"auroc": none}}},
               "out_dir": str(tmp_path / "m" / "t1")}
    monkeypatch.setattr(probe, "run", lambda *a, **k: summary)
    monkeypatch.setattr(sys, "argv", ["midol", "probe", "--task", "synth-oct", "--weights", str(tmp_path),
                                      "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    assert ex.value.code in (0, None), out.err
    assert "t1 / m: linear auroc n/a [n/a, n/a]  (n test 4)" in out.err  # the console writes to stderr
    assert "knn_k10: auroc n/a" in out.err


def test_quickstart_logs_a_none_metric_as_n_a():
    from midol_cli.workflows.quickstart import _num

    assert (_num(None), _num(0.81234)) == ("n/a", "0.8123")

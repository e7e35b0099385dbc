"""issue 25.21: without --recipe, quickstart ran the paper-scale Swin-B recipe on a CPU-only machine with
no warning. Without a GPU it now takes the CPU-sized smoke recipe and says so in one line."""

from __future__ import annotations

from midol_cli.progress import Reporter
from midol_cli.workflows import quickstart
from midol_cli.workflows.settings import QuickstartSettings


def _plan(tmp_path, gpu: bool, monkeypatch, **kw):
    (tmp_path / "raw" / "oct").mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(quickstart, "gpu_present", lambda: gpu)
    s = QuickstartSettings(raw_root=tmp_path / "raw", out=tmp_path / "qs", **kw)
    return quickstart.plan_quickstart(s)


def test_no_gpu_and_no_recipe_takes_smoke_and_says_so(tmp_path, monkeypatch):
    plan = _plan(tmp_path, False, monkeypatch)
    assert plan["recipe"].name == "smoke" and plan["recipe"].data.modalities == ["oct"]
    assert "no GPU here, so the CPU-sized recipe smoke is used" in plan["note"]
    assert "\n" not in plan["note"]


def test_a_gpu_or_a_recipe_keeps_the_choice(tmp_path, monkeypatch):
    from midol_cli.recipes import PretrainRecipe

    gpu = _plan(tmp_path, True, monkeypatch)
    assert gpu["recipe"].model.arch == PretrainRecipe().model.arch != "" and gpu["note"] == ""
    given = _plan(tmp_path, False, monkeypatch, recipe="recipes/smoke.yaml", pretrain={"name": "mine"})
    assert given["recipe"].name == "mine" and given["note"] == ""


def test_the_line_is_printed(tmp_path, monkeypatch, capsys):
    def stop(*_a, **_k):
        raise SystemExit(0)  # after the settings and the line: nothing else needs to run

    _plan(tmp_path, False, monkeypatch)
    monkeypatch.setattr("midol_cli.workflows.ingest.run", stop)
    try:
        quickstart.run(QuickstartSettings(raw_root=tmp_path / "raw", out=tmp_path / "qs"), Reporter())
    except SystemExit:
        pass
    assert "no GPU here, so the CPU-sized recipe smoke is used" in capsys.readouterr().err

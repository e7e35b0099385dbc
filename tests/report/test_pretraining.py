"""The report's "Pre-training" section (issue 25.23): a result whose model came from a midol run dir shows
the run's steps, wall time and final losses, and the HTML page embeds a PNG of its loss curves."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from midol_cli.cli.main import app
from midol_cli.report.pretraining import collect_pretraining, read_pretraining, run_dir_of
from midol_cli.report.table import build_table, render_json, render_markdown
from tests.report._tree import summary
from tests.report.test_html import DATA_PNG, parse

TERMS = ("loss_inter", "loss_intra", "loss_route")


def make_run(root: Path, steps: int = 20, total: int = 20) -> Path:
    """A pre-training run dir as ``midol pretrain`` leaves it: run.json, metrics.jsonl, export/."""
    run = root / "runs" / "base"
    (run / "export").mkdir(parents=True)
    (run / "export" / "encoder.safetensors").write_bytes(b"x")
    run_json = {"steps_done": steps, "wall_seconds": 754.0, "recipe_hash": "r"}
    (run / "run.json").write_text(json.dumps(run_json))
    with (run / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "total_steps": total, "lr": 1e-4, "loss_intra": 3.0 - 0.1 * s,
                   "loss_inter": -0.01 * s, "loss_route": 0.7 - 0.01 * s, "images_per_s": 100.0}
            rec["loss"] = rec["loss_intra"] + rec["loss_inter"] + rec["loss_route"]
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 21, "loss": 1.')  # a line cut short by a killed run
    return run


def results_with(root: Path, run: Path, weights: str | None = None,
                 random_weights: str | None = None) -> Path:
    results = root / "results"
    models = (("midol-s0", weights or str(run), 0.8), ("random-s0", random_weights or f"random:{run}", 0.6))
    for model, w, v in models:
        s = summary(model, "retina", "fundus", "accuracy", v, v - 0.02, v + 0.02)
        s["model"]["weights"] = w
        if model.startswith("random") and random_weights is None:
            s["model"]["weights_hash"] = "random-seed0"
        path = results / model / "retina" / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(s))
    return results


def test_the_run_dir_is_found_from_the_weights_and_random_init_has_none(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    assert run_dir_of({"weights": str(run)}) == run
    assert run_dir_of({"weights": str(run / "export" / "encoder.safetensors")}) == run
    assert run_dir_of({"weights": f"midol={run / 'export'}"}) == run
    assert run_dir_of({"weights": f"random:{run}", "weights_hash": "random-seed0"}) is None
    assert run_dir_of({"weights": "timm:vit=w.safetensors"}) is None
    monkeypatch.chdir(tmp_path / "runs")  # a relative path that only resolves from the results' ancestors
    assert run_dir_of({"weights": "runs/base"}, [tmp_path]) == tmp_path / "runs" / "base"


def test_steps_wall_time_and_final_losses_come_from_the_run(tmp_path):
    p = read_pretraining("m", make_run(tmp_path, steps=20, total=40))
    assert p is not None and (p.steps, p.total_steps, p.wall_seconds) == (20, 40, 754.0)
    assert p.terms == ["loss", *TERMS]
    assert p.final["loss_intra"] == pytest.approx(1.0) and p.final["loss_inter"] == pytest.approx(-0.2)
    assert p.curves["loss"][0] == list(range(1, 21)) and p.skipped == 1
    ft = make_run(tmp_path / "ft")
    (ft / "run.json").write_text(json.dumps({"stage": "finetune", "protocol": "finetune"}))
    assert read_pretraining("m", ft) is None  # a fine-tuning run is not a pre-training


def test_markdown_has_a_pretraining_section_for_the_pretrained_model_only(tmp_path):
    run = make_run(tmp_path)
    results = results_with(tmp_path, run)
    res = CliRunner().invoke(app, ["report", str(results)])
    assert res.exit_code == 0, res.output
    md = res.stdout
    section = md[md.index("## Pre-training"):]
    head = ("| model | run | steps | wall time | final loss | final loss_inter | final loss_intra "
            "| final loss_route |")
    assert head in section
    line = next(x for x in section.splitlines() if x.startswith("| midol-s0 |"))
    assert f"| midol-s0 | {run} | 20/20 | 12.6 min | 1.3 | -0.2 | 1 | 0.5 |" == line
    assert "random-s0" not in section  # a random-init baseline was never pre-trained
    assert "in the HTML report" in section
    assert "Unreadable metrics.jsonl lines left out: midol-s0 (1)." in section
    obj = json.loads(CliRunner().invoke(app, ["report", str(results), "-f", "json"]).stdout)
    assert obj["pretraining"]["midol-s0"]["steps"] == 20 and obj["random_init"] == ["random-s0"]


def test_html_embeds_the_loss_curves_as_a_png(tmp_path):
    from PIL import Image

    results = results_with(tmp_path, make_run(tmp_path))
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(results), "-f", "html", "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = parse(out.read_text())
    caps = [c for c in page.captions if c.startswith("pre-training losses of")]
    assert caps == ["pre-training losses of midol-s0: total and each term against step"]
    img = next(i for i in page.imgs if i.get("alt", "").startswith("pre-training losses"))
    assert img["src"].startswith(DATA_PNG)
    with Image.open(io.BytesIO(base64.b64decode(img["src"][len(DATA_PNG):]))) as im:
        assert im.format == "PNG" and min(im.size) > 100
    steps = page.table_with("steps")
    assert [c for c, _ in steps[1][:3]] == ["midol-s0", str(tmp_path / "runs" / "base"), "20/20"]


def test_without_matplotlib_the_report_says_the_plot_needs_the_plots_extra(tmp_path, monkeypatch):
    from midol_cli.report import pretraining
    from midol_cli.report.html import render_html
    from midol_cli.report.table import collect_summaries

    monkeypatch.setattr(pretraining, "plots_available", lambda: False)
    results = results_with(tmp_path, make_run(tmp_path))
    found, _ = collect_summaries(results)
    table = build_table(found)
    hint = "Loss curves: the plot needs the plots extra (matplotlib): pip install 'midol[plots]'."
    assert hint in render_markdown(table)
    page = render_html(table, found, results)
    assert "pip install &#x27;midol[plots]&#x27;" in page and "pre-training losses of" not in page


def test_no_section_without_a_run_dir(tmp_path):
    entries = [(Path("m/t/summary.json"), summary("m", "t", "xray", "accuracy", 0.8, 0.7, 0.9))]
    assert collect_pretraining(entries) == {}
    assert "Pre-training" not in render_markdown(build_table(entries))
    assert json.loads(render_json(build_table(entries)))["pretraining"] == {}


def test_a_study_random_variant_export_is_the_floor_and_has_no_pretraining(tmp_path):
    """`midol study`'s ``random`` variant is a run dir whose run.json says stage 'init' (no metrics.jsonl)."""
    from midol_cli.report.pretraining import is_random_init

    run = make_run(tmp_path)
    init = tmp_path / "runs" / "random-s0"
    (init / "export").mkdir(parents=True)
    (init / "run.json").write_text(json.dumps({"stage": "init", "steps": 0, "seed": 0}))
    assert is_random_init({"weights": str(init), "weights_hash": "d7b1e26ed6db3385"})
    assert not is_random_init({"weights": str(run), "weights_hash": "d7b1e26ed6db3385"})
    results = results_with(tmp_path, run, random_weights=str(init))
    found = [(p, json.loads(p.read_text())) for p in sorted(results.rglob("summary.json"))]
    t = build_table(found)
    assert t.rows[0].floor_models == {"random-s0"} and set(t.pretraining) == {"midol-s0"}

"""`midol explain` through the real entry point (issue 29.5): a fine-tuned tiny Swin's Grad-CAM overlays
for the most confident correct and wrong test images, listed in explain.json and shown by the HTML
report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.train.test_finetune import synth_manifest, tiny_export

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "finetune_smoke.yaml"


def _midol(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from midol_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["midol", *map(str, args)])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    return (0 if ex.value.code is None else int(ex.value.code)), out.out, out.err


def _finetuned(tmp_path, monkeypatch, capsys, *extra: str):
    """A tiny fine-tuning run of synth-pathology (1 epoch); its results folder."""
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    export = tiny_export(tmp_path / "tiny")
    data = synth_manifest(tmp_path / "data", per_class=6)
    results = tmp_path / "results"
    code, _, err = _midol(monkeypatch, capsys, "finetune", "--task", "synth-pathology", "--weights",
                          f"random:{export}", "--data", data, "--out", results, "--name", "tiny", SMOKE,
                          "epochs=1", *extra)
    assert code == 0, err
    return results / "tiny" / "synth-pathology"


def test_explain_a_finetuned_model_and_show_it_in_the_html_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    folder = _finetuned(tmp_path, monkeypatch, capsys)
    code, out, err = _midol(monkeypatch, capsys, "explain", folder, "--n", "2")
    assert code == 0, err
    index = json.loads((folder / "explain" / "explain.json").read_text())
    assert index["protocol"] == "finetune" and index["method"] == "gradcam"  # a Swin: Grad-CAM
    items = index["items"]
    assert 1 <= len(items) <= 4 and {it["why"] for it in items} <= {"correct", "wrong"}
    for it in items:
        assert (folder / it["png"]).read_bytes()[:4] == b"\x89PNG"
        assert (it["label"] == it["predicted"]) == (it["why"] == "correct")
    conf = [it["confidence"] for it in items if it["why"] == "correct"]
    assert conf == sorted(conf, reverse=True)
    assert "explained (gradcam)" in out + err
    _reproduces(folder, "finetune", items)
    html = tmp_path / "report.html"
    code, _, err = _midol(monkeypatch, capsys, "report", folder.parents[1], "-p", "finetune", "-f", "html",
                          "-o", html)
    assert code == 0, err
    page = html.read_text()
    assert "Explanation maps: tiny (finetune, Grad-CAM)" in page
    assert page.count("data:image/png;base64,") >= len(items)


def test_explain_errors_are_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    code, _, err = _midol(monkeypatch, capsys, "explain", tmp_path)
    assert code == 2 and "no summary.json" in err and "Traceback" not in err


def _reproduces(folder: Path, protocol: str, items: list[dict]) -> None:
    """The model explain rebuilt from best.pt gives the confidence the run recorded for each image."""
    import torch

    from midol_cli.eval.explain import load_finetuned
    from midol_cli.report.explain_maps import _images, _load

    run = folder / f"run_{protocol}"
    enc, head, spec, _ = load_finetuned(run)
    paths = _images(json.loads((run / "run.json").read_text())["manifest"], [it["sample_id"] for it in items])
    for it in items:
        _, x = _load(paths[it["sample_id"]], spec)
        with torch.no_grad():
            p = head(enc(x[None])).softmax(1)[0]
        assert float(p.max()) == pytest.approx(it["confidence"], abs=2e-4)


def test_explain_a_lora_run_through_its_merged_adapters(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("peft")
    folder = _finetuned(tmp_path, monkeypatch, capsys, "--method", "lora", "optim.lr=2.0")
    code, _, err = _midol(monkeypatch, capsys, "explain", folder, "--n", "1")
    assert code == 0, err
    index = json.loads((folder / "explain" / "explain.json").read_text())
    assert index["protocol"] == "lora_ft" and index["items"]
    _reproduces(folder, "lora_ft", index["items"])

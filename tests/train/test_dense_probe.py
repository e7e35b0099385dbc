"""The frozen-backbone dense probe (issue 29.4): ``DenseProbeModel`` and ``midol finetune --linear`` on a
segmentation task, through the real entry point, beside full segmentation fine-tuning, and in ``midol
report -p dense_probe``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from midol_cli.losses.segmentation import segmentation_loss
from midol_cli.models.segmentation import DenseProbeModel
from tests.conftest import TINY_SWIN
from tests.train.test_segment import SWIN, make_isic_discs, tiny_swin_export


def _features(arch: str, **kw):
    import timm

    return timm.create_model(arch, pretrained=False, features_only=True, **kw)


@pytest.mark.parametrize(("arch", "kw"), [(SWIN, dict(img_size=64, **TINY_SWIN)), ("test_resnet", {}),
                                          ("test_vit", {"img_size": 64})])
def test_only_the_head_learns_and_the_encoder_stays_frozen(arch, kw):
    torch.manual_seed(0)
    model = DenseProbeModel(_features(arch, **kw), n_classes=2)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # BN running stats included
    model.train()
    assert not model.encoder.training and model.head.training
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 2, 64, 64) and torch.isfinite(out).all()
    segmentation_loss(out, (torch.rand(2, 64, 64) > 0.5).long())["loss"].backward()
    assert [n for n, _ in model.decoder_parameters()] == ["head.weight", "head.bias"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in model.decoder_parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def _midol(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from midol_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["midol", *args])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    return (0 if ex.value.code is None else int(ex.value.code)), out.out, out.err


RECIPE = ["optim.batch_size=8", "optim.lr=0.5", "optim.warmup_frac=0.1", "img_size=64", "drop_path_rate=0.0",
          "early_stopping=0", "num_workers=0", "precision=fp32", "n_boot=200", "decoder_dim=16", "seed=0"]


def test_dense_probe_beside_finetune_through_the_cli(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from midol_cli.eval.results import load_summary

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    raw = make_isic_discs(tmp_path / "raw", 16, 4, 6)
    export = tiny_swin_export(tmp_path / "tiny" / "encoder.safetensors")
    results = tmp_path / "results"
    common = ["finetune", "--task", "isic2018-seg", "--weights", f"random:{export}", "--data", str(raw),
              "--out", str(results), "--name", "tiny"]
    code, _, err = _midol(monkeypatch, capsys, *common, "epochs=1", *RECIPE)
    assert code == 0, err
    code, out, err = _midol(monkeypatch, capsys, *common, "--linear", "epochs=4", *RECIPE)
    assert code == 0, err
    assert "dense_probe dice" in out + err
    folder = results / "tiny" / "isic2018-seg"
    s = load_summary(folder / "summary.json")
    assert set(s["protocols"]) == {"finetune", "dense_probe"}  # beside full fine-tuning, not over it
    block = s["protocols"]["dense_probe"]
    assert block["train_mode"] == "frozen" and block["decoder"] == "conv1x1" and "layer_decay" not in block
    for m in ("dice", "jaccard"):
        v = block["metrics"][m]
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
    preds = pd.read_parquet(folder / "predictions_dense_probe.parquet")
    assert len(preds) == 6 and preds["dice"].mean() == pytest.approx(block["metrics"]["dice"]["value"])
    assert len(pd.read_parquet(folder / "predictions.parquet")) == 6  # full fine-tuning's, kept
    assert (folder / "panel_dense_probe.png").read_bytes()[:4] == b"\x89PNG"
    run = folder / "run_dense_probe"
    assert block["run_dir"] == str(run) and (folder / "run_finetune" / "best.pt").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # the head learns
    # The encoder in the probe's best.pt is bit-identical to the one it started from.
    from midol_cli.eval.models import load_eval_model
    from midol_cli.train.segment import build_segmentation_model

    start, _, _ = build_segmentation_model(load_eval_model(f"random:{export}"), 64, 16, 0.0, 0, probe=True)
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    enc = {k: v for k, v in best["model"].items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(v, start.state_dict()[k]) for k, v in enc.items())
    assert not np.allclose(best["model"]["head.weight"].numpy(), start.head.weight.detach().numpy())
    # `midol report` tabulates the protocol by its name
    code, out, err = _midol(monkeypatch, capsys, "report", str(results), "-p", "dense_probe", "-f", "json")
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    assert row["task"] == "isic2018-seg" and row["protocol"] == "dense_probe"
    code, _, err = _midol(monkeypatch, capsys, "report", str(results), "-p", "dense_probe", "-f", "html",
                          "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "Protocol dense_probe" in page and "test cases (dense_probe)" in page  # its panel, embedded

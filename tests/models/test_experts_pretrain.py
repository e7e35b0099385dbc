"""Issue 28.7 end to end: ``projector.experts_per_modality: 2`` pre-trains, resumes, exports and routes."""

import json
from pathlib import Path

import pytest
import torch

from tests.pipeline import build_pipeline

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return build_pipeline(root, per_class=2, modalities=("xray", "fundus"), min_shards=2)["shards"]


def _recipe(shards, *extra):
    from midol_cli.recipes import PretrainRecipe, load_recipe

    return load_recipe(PretrainRecipe, SMOKE, [
        f"data.shards={shards}", "data.modalities=[xray, fundus]", "train.steps=4", "train.ckpt_every=2",
        "train.log_every=1", "optim.global_batch_size=8", "data.num_workers=0", "data.shuffle_buffer=10",
        "projector.hidden_dim=16", "projector.n_prototypes=8", "projector.bottleneck_dim=8",
        "loss.queue_size=8", "projector.experts_per_modality=2", *extra])


def test_two_experts_per_modality_train_resume_export_and_route(shards, tmp_path):
    from midol_cli.eval.models import load_eval_model
    from midol_cli.train.pretrain import run_pretrain

    run = tmp_path / "run"
    first = run_pretrain(_recipe(shards), run, max_steps=2)
    assert first["steps"] == 2 and "export" not in first
    summary = run_pretrain(_recipe(shards), run, resume="auto")
    assert summary["steps"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the resumed run went on from step 2
    assert all(1.0 <= r["loss_balance"] <= 2.0 for r in rows)
    model = load_eval_model(str(run))
    proj = model.projector
    assert proj.experts_per_modality == 2 and proj.gate.weight.shape[0] == 4
    out = proj(model.encoder(torch.zeros(3, 3, model.spec.img_size, model.spec.img_size)))
    assert out.router_logits.shape == (3, 2) and out.gate_logits.shape == (3, 2, 2)
    assert "routing" in summary  # the router's calibration ran on the export

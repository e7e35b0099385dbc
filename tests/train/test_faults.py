"""Non-finite steps are skipped and counted; a run of them stops with a message naming step and term."""

import json
from pathlib import Path

import pytest
import torch

from midol_cli.errors import RunFailed
from midol_cli.recipes import PretrainRecipe, load_recipe
from midol_cli.train import pretrain as pt
from tests.pipeline import build_pipeline


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("faults"), per_class=3)["shards"]


def _recipe(shards, *extra):
    return load_recipe(PretrainRecipe, "recipes/smoke.yaml", [
        f"data.shards={shards}", "optim.global_batch_size=8", "data.num_workers=0", "train.log_every=2",
        "projector.hidden_dim=32", "projector.n_prototypes=16", "loss.queue_size=16", *extra])


def _poison_inter(monkeypatch, bad_steps):
    """Make L_inter non-finite on the listed (0-based) calls of forward_train."""
    from midol_cli.models import midol as midol_mod

    real = midol_mod.inter_modality_loss
    calls = {"n": -1, "view": 0}
    orig_forward = midol_mod.MIDoL.forward_train

    def counting_forward(self, *a, **k):
        calls["n"] += 1
        return orig_forward(self, *a, **k)

    def inter(scores, expert, temp):
        out = real(scores, expert, temp)
        if calls["n"] in bad_steps:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    monkeypatch.setattr(midol_mod, "inter_modality_loss", inter)
    monkeypatch.setattr(midol_mod.MIDoL, "forward_train", counting_forward)


def test_isolated_bad_steps_are_skipped_and_counted(shards, tmp_path, monkeypatch):
    _poison_inter(monkeypatch, {1, 3})
    r = _recipe(shards, "train.steps=6", "train.ckpt_every=100")
    summary = pt.run_pretrain(r, tmp_path / "run")
    assert summary["steps"] == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_steps"] == 2
    ck = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.dtype.is_floating_point)
    assert all(torch.isfinite(v).all() for v in ck["teacher"].values() if v.dtype.is_floating_point)


def test_consecutive_bad_steps_stop_the_run_keeping_last_good_checkpoint(shards, tmp_path, monkeypatch):
    _poison_inter(monkeypatch, set(range(4, 100)))
    r = _recipe(shards, "train.steps=20", "train.ckpt_every=4", "train.max_bad_steps=3")
    with pytest.raises(RunFailed) as e:
        pt.run_pretrain(r, tmp_path / "run")
    msg = str(e.value)
    assert "non-finite" in msg and "loss_inter" in msg and "step" in msg
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert names == ["ckpt-00000004.pt"]  # written before the bad steps; nothing after them
    named = msg.split("the last good checkpoint is ", 1)[1].split(";")[0].split(" ")[0]
    assert Path(named).is_file()  # the message names a checkpoint that exists


def test_diverged_parameters_are_never_checkpointed_or_exported(shards, tmp_path):
    # A huge (finite) LR: the first step's update overflows the weights, while the loss of that step
    # was finite and the weights stay finite numbers, so neither the step guard nor a parameter check
    # alone sees it; the features they give are NaN.
    r = _recipe(shards, "optim.lr=1e38", "optim.clip_grad=null", "train.steps=4", "train.ckpt_every=100",
                "train.max_bad_steps=100")
    with pytest.raises(RunFailed, match="parameters or features are not finite") as e:
        pt.run_pretrain(r, tmp_path / "run")
    assert "no checkpoint was written" in str(e.value)
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))
    assert not list((tmp_path / "run").glob("export/*"))


def test_a_non_finite_hyper_parameter_is_refused_before_training(shards):
    from midol_cli.errors import UsageError

    with pytest.raises(UsageError, match="optim.lr: Input should be a finite number"):
        _recipe(shards, "optim.lr=.inf")


def _corrupt_one_image(shards, dst):
    import shutil

    from tests.pipeline import zero_first_image

    shutil.copytree(shards, dst)
    for tar in sorted(dst.glob("*.tar")):
        zero_first_image(tar)
    return dst


@pytest.mark.parametrize("workers", [0, 2])
def test_damaged_samples_are_totalled_in_metrics_run_json_and_summary(shards, tmp_path, workers):
    bad = _corrupt_one_image(shards, tmp_path / "bad")
    r = _recipe(bad, "train.steps=6", "train.ckpt_every=100", f"data.num_workers={workers}")
    summary = pt.run_pretrain(r, tmp_path / "run")
    assert summary["damaged"]["bad_samples"] >= 1, summary["damaged"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["damaged"] == summary["damaged"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["damaged"] == summary["damaged"]

"""A pre-training run dir holds one run (issue 25.1), its recipe is the one every step ran with (25.2),
a foreign checkpoint is a one-line error (25.7) and Ctrl-C leaves a checkpoint (25.18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from midol_cli.errors import UsageError
from tests.pipeline import build_pipeline

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    return build_pipeline(root, per_class=2, modalities=("xray", "fundus"), min_shards=2)["shards"]


def _recipe(shards, *extra):
    from midol_cli.recipes import PretrainRecipe, load_recipe

    return load_recipe(
        PretrainRecipe,
        SMOKE,
        [
            f"data.shards={shards}",
            "data.modalities=[xray, fundus]",
            "train.steps=4",
            "train.ckpt_every=2",
            "train.log_every=1",
            "optim.global_batch_size=4",
            "data.num_workers=0",
            "data.shuffle_buffer=10",
            "projector.hidden_dim=16",
            "projector.n_prototypes=8",
            "projector.bottleneck_dim=8",
            "loss.queue_size=8",
            *extra,
        ],
    )


def _pretrain(shards, run, *extra, **kw):
    from midol_cli.train.pretrain import run_pretrain

    return run_pretrain(_recipe(shards, *extra), run, **kw)


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_over_a_run_is_refused_and_overwrite_moves_the_old_one_aside(shards, tmp_path):
    run = tmp_path / "run"
    _pretrain(shards, run, max_steps=3)  # a run that stopped at step 3 (a kill, --max-steps)
    old = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(
        UsageError, match="already holds a pre-training run; continue it with --resume auto"
    ) as e:
        _pretrain(shards, run)
    assert "\n" not in str(e.value) and sorted(p.name for p in (run / "checkpoints").iterdir()) == old
    summary = _pretrain(shards, run, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == old
    assert _steps(aside[0]) == [1, 2, 3]
    assert _steps(run) == [1, 2, 3, 4]  # never mixed with the old run's rows
    assert summary["steps"] == 4 and "export" in summary
    with pytest.raises(UsageError, match="--overwrite starts a new run"):
        _pretrain(shards, run, resume="auto", overwrite=True)


def test_a_resume_with_another_recipe_is_refused_unless_recorded_as_a_segment(shards, tmp_path):
    run = tmp_path / "run"
    _pretrain(shards, run, max_steps=2)
    first = json.loads((run / "run.json").read_text())
    recipe_yaml = (run / "recipe.yaml").read_text()
    with pytest.raises(UsageError, match=r"optim\.lr, optim\.weight_decay differ") as e:
        _pretrain(shards, run, "optim.lr=1e-2", "optim.weight_decay=0.01", resume="auto")
    assert "--allow-recipe-change" in str(e.value)
    assert (run / "recipe.yaml").read_text() == recipe_yaml
    # the step budget and logging may change: no new segment
    _pretrain(shards, run, "train.steps=6", "train.log_every=2", resume="auto", max_steps=3)
    before = json.loads((run / "run.json").read_text())
    assert len(before["segments"]) == 1
    _pretrain(shards, run, "train.steps=6", "optim.lr=1e-2", resume="auto", allow_recipe_change=True)
    after = json.loads((run / "run.json").read_text())
    assert after["recipe_hash"] == before["recipe_hash"]  # not overwritten by the new segment's
    segs = after["segments"]
    assert [s["from_step"] for s in segs] == [0, 3] and segs[1]["changed_keys"] == ["optim.lr"]
    assert segs[0]["recipe_hash"] == first["recipe_hash"] != segs[1]["recipe_hash"]
    assert "lr: 0.01" in (run / segs[1]["recipe"]).read_text()
    assert (run / "recipe.yaml").read_text() != (run / segs[1]["recipe"]).read_text()


def test_a_checkpoint_of_another_architecture_is_a_one_line_error(shards, tmp_path):
    run = tmp_path / "run"
    _pretrain(shards, run, max_steps=2)
    with pytest.raises(UsageError, match="does not fit this model") as e:
        _pretrain(shards, run, "projector.hidden_dim=24", resume="auto", allow_recipe_change=True)
    assert "\n" not in str(e.value) and "hidden_dim" not in str(e.value).split("(")[0]


def test_ctrl_c_saves_a_checkpoint_at_the_current_step(shards, tmp_path, monkeypatch, capsys):
    from midol_cli.models import midol as midol_mod

    real, calls = midol_mod.MIDoL.forward_train, {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: steps 1-3 are done, the last checkpoint was at step 2
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(midol_mod.MIDoL, "forward_train", interrupted)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _pretrain(shards, run, "train.steps=8", "train.ckpt_every=2")
    saved = run / "checkpoints" / "ckpt-00000003.pt"
    assert saved.is_file()
    assert f"checkpoint at step 3 in {saved}" in capsys.readouterr().err
    assert torch.load(saved, weights_only=True)["step"] == 3
    monkeypatch.setattr(midol_mod.MIDoL, "forward_train", real)
    summary = _pretrain(shards, run, "train.steps=8", "train.ckpt_every=2", resume="auto")
    assert summary["steps"] == 8 and _steps(run) == list(range(1, 9))


def test_the_cli_refuses_in_one_line_and_overwrite_goes_through(shards, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    args = [
        f"data.shards={shards}",
        "data.modalities=[xray, fundus]",
        "train.steps=2",
        "train.ckpt_every=2",
        "optim.global_batch_size=4",
        "data.num_workers=0",
        "projector.hidden_dim=16",
        "projector.n_prototypes=8",
        "projector.bottleneck_dim=8",
        "loss.queue_size=8",
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "1",
    ]

    def midol(*extra):
        return subprocess.run(
            [sys.executable, "-m", "midol_cli", "pretrain", str(SMOKE), *args, *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert midol().returncode == 0
    res = midol()
    assert res.returncode == 2 and "already holds a pre-training run" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = midol("--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]) == 1

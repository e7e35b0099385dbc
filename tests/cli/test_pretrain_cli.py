"""Bad input to `midol pretrain` / `midol export`: one line on stderr, non-zero exit, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import one_line_error, run_midol
from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("cli"), per_class=2, modalities=("xray", "oct"))["shards"]


def _midol(*args, cwd=None):
    return run_midol(*args, cwd=cwd, timeout=120)


def test_unknown_recipe_key():
    line = one_line_error(_midol("pretrain", "recipes/smoke.yaml", "optim.lrr=1"))
    assert "optim.lrr: unknown key (did you mean 'lr'?)" in line  # issue 25.25


def test_wrong_type_reports_every_problem_at_once():
    line = one_line_error(_midol("pretrain", "recipes/smoke.yaml", "optim.lr=fast", "train.steps=-3"))
    assert "2 problems" in line and "optim.lr" in line and "train.steps" in line and '"fast"' in line


def test_missing_recipe_file():
    assert "does not exist" in one_line_error(_midol("pretrain", "recipes/nope.yaml"))


def test_missing_shard_dir(tmp_path):
    line = one_line_error(_midol("pretrain", "recipes/smoke.yaml", f"data.shards={tmp_path / 'none'}"))
    assert "none" in line


def test_modality_mismatch(shards, tmp_path):
    line = one_line_error(
        _midol("pretrain", "recipes/smoke.yaml", f"data.shards={shards}", "--out", tmp_path / "r")
    )
    assert "modality mismatch" in line and "fundus" in line
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing computed


def test_zero_sample_shards(shards, tmp_path):
    from midol_cli.data.shards import ShardParams, write_shards

    val_only = tmp_path / "test_only"
    mans = sorted((shards.parent / "manifests").glob("*.parquet"))
    write_shards(mans, val_only, ShardParams(split="test", max_side=64, min_shards=1))
    line = one_line_error(_midol("pretrain", "recipes/smoke.yaml", f"data.shards={val_only}",
                                  "data.modalities=[xray,oct]", "data.split=train"))
    assert "no samples" in line and "train" in line


def test_bad_global_batch(shards, tmp_path):
    line = one_line_error(
        _midol(
            "pretrain",
            "recipes/smoke.yaml",
            f"data.shards={shards}",
            "data.modalities=[xray,oct]",
            "optim.accum_steps=3",
            "--out",
            tmp_path / "r",
        )
    )
    assert "divisible" in line


def test_export_without_checkpoint(tmp_path):
    assert "no checkpoint" in one_line_error(_midol("export", tmp_path))


def test_help_lists_commands_fast():
    import time

    t = time.perf_counter()
    res = _midol("--help")
    assert res.returncode == 0
    for cmd in ("pretrain", "export"):
        assert cmd in res.stdout
    assert time.perf_counter() - t < 5  # the process incl. interpreter start; torch is never imported
    res = subprocess.run([sys.executable, "-c", "import midol_cli.cli.main, sys; print('torch' in "
                                                "sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "False"


def test_local_views_with_fixed_size_swin_is_a_clear_error(shards, tmp_path):
    line = one_line_error(
        _midol(
            "pretrain",
            "recipes/smoke.yaml",
            f"data.shards={shards}",
            "data.modalities=[xray,oct]",
            "data.local_views=2",
            "data.local_size=32",
            "model.arch=swin_base_patch4_window7_224",
            "model.arch_kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], "
            "window_size: 4}",
            "--out",
            tmp_path / "r",
        )
    )
    assert "local views" in line and "32 px" in line

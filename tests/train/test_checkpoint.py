"""Checkpoint files: resume past a damaged newest checkpoint, no stale temporaries, normal file modes."""

import stat

import pytest
import torch

from midol_cli import checkpoint as ckpt
from midol_cli.artifacts import atomic_path
from midol_cli.errors import UsageError


def _two(run_dir):
    a = ckpt.save_checkpoint(run_dir, 1, {"w": torch.ones(3)}, keep_last=3)
    b = ckpt.save_checkpoint(run_dir, 2, {"w": torch.full((3,), 2.0)}, keep_last=3)
    return a, b


def test_resume_auto_falls_back_past_a_truncated_newest_checkpoint(tmp_path, capsys):
    a, b = _two(tmp_path)
    data = b.read_bytes()
    b.write_bytes(data[: len(data) // 2])  # cut short, as by a full disk
    assert ckpt.resolve_resume(tmp_path, "auto") == a
    assert "truncated or damaged" in capsys.readouterr().err
    assert float(ckpt.load_checkpoint(a)["w"][0]) == 1.0


def test_resume_auto_takes_the_newest_intact_checkpoint(tmp_path):
    _, b = _two(tmp_path)
    assert ckpt.resolve_resume(tmp_path, "auto") == b


def test_a_killed_write_leaves_no_temporary_behind_after_resume(tmp_path):
    _two(tmp_path)
    stale = ckpt.ckpt_dir(tmp_path) / ".ckpt-00000003.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    ckpt.resolve_resume(tmp_path, "auto")
    assert not stale.exists()
    stale.write_bytes(b"half a checkpoint")
    ckpt.save_checkpoint(tmp_path, 3, {"w": torch.zeros(1)}, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_atomic_writes_get_the_usual_mode_not_0600(tmp_path, monkeypatch):
    import os

    old = os.umask(0o022)  # the umask applies when the file is created (artifacts.new_temp_file)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
        ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, keep_last=1)
        assert stat.S_IMODE(ckpt.list_checkpoints(tmp_path)[0].stat().st_mode) == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("steps", [0, -1])
def test_max_steps_below_one_is_refused(tmp_path, steps):
    from midol_cli.recipes import PretrainRecipe
    from midol_cli.train.pretrain import run_pretrain

    with pytest.raises(UsageError, match="--max-steps must be at least 1"):
        run_pretrain(PretrainRecipe(), tmp_path / "run", max_steps=steps)

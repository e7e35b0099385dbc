"""`midol study --finetune RECIPE --finetune-methods full,linear,lora` (issue 29): the study's fine-tuning arm
runs every method, writes each under its own protocol (finetune, linear_ft, lora_ft; finetune and dense_probe
on a segmentation task, which the study fine-tunes but never probes), tabulates them in study.md and reuses
them on a second run; bad combinations are refused before any pre-training."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from midol_cli.errors import UsageError
from midol_cli.workflows.study_protocols import check_finetune_methods, finetune_protocol
from tests.conftest import run_midol
from tests.pipeline import build_pipeline
from tests.train.test_segment import make_isic_discs
from tests.workflows.test_study import TINY

FT_RECIPE = """\
epochs: 1
img_size: 64
optim: {batch_size: 8, lr: 0.05, warmup_frac: 0.0}
drop_path_rate: 0.0
early_stopping: 0
num_workers: 0
precision: fp32
n_boot: 200
lora: {rank: 2, alpha: 4, target_modules: [conv2]}   # a CNN: its layers named (models/lora.py)
"""


def test_each_method_names_its_protocol_and_lora_skips_segmentation():
    assert [finetune_protocol(m, "single") for m in ("full", "linear", "lora")] == \
        ["finetune", "linear_ft", "lora_ft"]
    assert [finetune_protocol(m, "segmentation") for m in ("full", "linear", "lora")] == \
        ["finetune", "dense_probe", None]
    seg = SimpleNamespace(pooled=False, spec=SimpleNamespace(name="isic2018-seg", label_type="segmentation"))
    check_finetune_methods(["lora", "linear"], [seg])
    with pytest.raises(UsageError, match="none applies to isic2018-seg"):
        check_finetune_methods(["lora"], [seg])


def _args(tmp_path: Path, p: dict, seg: Path, *extra: str) -> list:
    ft = tmp_path / "ft.yaml"
    ft.write_text(FT_RECIPE)
    return ["study", "recipes/smoke.yaml", *TINY, "data.modalities=[oct]", "--data", p["shards"],
            "--tasks", "synth-oct,isic2018-seg", "--task-data", f"synth-oct={p['manifests'] / 'oct.parquet'}",
            "--task-data", f"isic2018-seg={seg}", "--variants", "midol,random", "--seeds", "1",
            "--n-boot", "200", "--finetune", ft, "--out", tmp_path / "study", *extra]


@pytest.mark.slow
def test_the_study_fine_tunes_with_every_method_and_reuses_them(tmp_path):
    pytest.importorskip("peft")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=6, modalities=("oct",))
    seg = make_isic_discs(tmp_path / "isic", 8, 2, 4)
    out = tmp_path / "study"
    # lora alone cannot fine-tune a segmentation task: refused in one line before any pre-training
    bad = run_midol(*_args(tmp_path, p, seg, "--finetune-methods", "lora"), env=env)
    assert bad.returncode == 2 and "none applies to isic2018-seg" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (out / "runs").exists()

    args = _args(tmp_path, p, seg, "--finetune-methods", "full,linear,lora")
    res = run_midol(*args, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((out / "study.json").read_text())
    assert rec["finetune_methods"] == ["full", "linear", "lora"]
    assert set(rec["tasks"]) == {"synth-oct"}  # the segmentation task is fine-tuned, never probed
    ft = rec["finetune"]
    assert set(ft["synth-oct"]) == {"finetune", "linear_ft", "lora_ft"}
    assert set(ft["isic2018-seg"]) == {"finetune", "dense_probe"}  # lora skips segmentation
    for blocks in ft.values():
        for by_variant in blocks.values():
            assert set(by_variant) == {"midol", "random"}
            assert all(0.0 <= v["0"] <= 1.0 for v in by_variant.values())
    summary = json.loads((out / "results" / "midol-s0" / "synth-oct" / "summary.json").read_text())
    lora = summary["protocols"]["lora_ft"]
    assert 0 < lora["trainable_params"] < summary["protocols"]["finetune"]["trainable_params"]
    md = (out / "study.md").read_text()
    table = md.split("## Fine-tuning")[1]
    assert "| task | midol · finetune | random · finetune |" in table and "midol · lora_ft" in table
    assert "| isic2018-seg |" in table and "random · dense_probe" in table
    # A second run fine-tunes nothing again: every protocol is read back from summary.json.
    again = run_midol(*args, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch" not in again.stderr.lower()
    assert json.loads((out / "study.json").read_text())["finetune"] == ft


def test_a_segmentation_task_needs_the_fine_tuning_arm(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=2, modalities=("oct",))
    seg = make_isic_discs(tmp_path / "isic", 2, 0, 2)
    args = [a for a in _args(tmp_path, p, seg) if a not in ("--finetune",) and not str(a).endswith("ft.yaml")]
    res = run_midol(*args, env=env)
    assert res.returncode == 2 and "isic2018-seg is a segmentation task" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "study" / "runs").exists()

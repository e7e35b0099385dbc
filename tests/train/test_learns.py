"""The smoke recipe demonstrably learns (issue: pre-training must beat random init).

Pre-trains recipes/smoke.yaml exactly as `make demo` does, on synth data of the demo's
size, then runs the real linear probe (`midol probe`'s code path) on the five synth tasks
for the pre-trained encoder and for the same architecture at random init. The mean
linear-probe accuracy of the pre-trained encoder must be higher, with no collapse warning.
This is the slowest test of the suite (a few minutes on 2 cores) and the one that matters most.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from midol_cli.recipes import PretrainRecipe, load_recipe
from midol_cli.tasks import SYNTH_TASKS, get_task
from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_pretraining_beats_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    from midol_cli.eval.probe import run_task
    from midol_cli.train.pretrain import run_pretrain

    p = build_pipeline(tmp_path / "data", per_class=100, size=128, max_side=96, min_shards=16)
    recipe = load_recipe(PretrainRecipe, ROOT / "recipes" / "smoke.yaml", [f"data.shards={p['shards']}"])
    run = tmp_path / "run"
    summary = run_pretrain(recipe, run)
    assert summary["steps"] == recipe.train.steps
    assert not summary["collapse_warning"]
    last = summary["last"]
    assert last["router_acc"] > 0.9  # the router places modalities
    for m in recipe.data.modalities:  # no expert collapsed to a point
        assert last[f"emb_std/{m}"] > 0.01

    acc: dict[str, dict[str, float]] = {"pretrained": {}, "random": {}}
    for task in SYNTH_TASKS:
        spec = get_task(task)
        data = p["manifests"] / f"{spec.modality}.parquet"
        for kind, weights in (("pretrained", str(run)), ("random", f"random:{run}")):
            s = run_task(spec, weights, data, tmp_path / "results", fractions=(1.0,), seeds=(0,), n_boot=50,
                         workers=1)
            acc[kind][task] = s["protocols"]["linear"]["metrics"]["accuracy"]["value"]
    pre, rnd = statistics.mean(acc["pretrained"].values()), statistics.mean(acc["random"].values())
    print(f"mean linear-probe accuracy: pretrained {pre:.4f} vs random {rnd:.4f}; {acc}")
    assert pre > rnd, acc

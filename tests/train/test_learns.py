"""The smoke recipe demonstrably learns (issue: pre-training must beat random init, beyond chance).

Pre-trains recipes/smoke.yaml exactly as `make demo` does, on synth data of the demo's size (fixed
seed 0), then runs the real linear probe (`midol probe`'s code path) on the five synth tasks for the
pre-trained encoder and for the same architecture at random init (the run's own starting point):

- the random-init floor stays low (mean accuracy <= 0.55): the tasks are not linearly solvable by
  random features, so what the probe reads after pre-training was learned;
- the paired difference of the primary metrics, pre-trained - random, averaged over the tasks, has a
  95% CI (test patients resampled) above 0;
- no collapse warning, the router places modalities, the encoder's features stay spread.

This is the slowest test of the suite (about 7 minutes on 2 cores) and the one that matters most.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from midol_cli.data.shards import DEFAULT_MIN_SHARDS
from midol_cli.recipes import PretrainRecipe, load_recipe
from midol_cli.tasks import SYNTH_TASKS, get_task
from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_pretraining_beats_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    from midol_cli.eval.paired import compare_models
    from midol_cli.progress import Reporter
    from midol_cli.train.pretrain import run_pretrain
    from midol_cli.workflows.probe import probe_task
    from midol_cli.workflows.settings import ProbeSettings

    # The demo's data exactly (scripts/demo.sh: synth --seed 0 --per-class 200 --corrupt 5, shards at 96 px),
    # so that this test guards the claim `make demo` prints.
    p = build_pipeline(tmp_path / "data", per_class=200, size=128, max_side=96, min_shards=DEFAULT_MIN_SHARDS,
                       corrupt=5)
    recipe = load_recipe(PretrainRecipe, ROOT / "recipes" / "smoke.yaml", [f"data.shards={p['shards']}"])
    run = tmp_path / "run"
    summary = run_pretrain(recipe, run)
    assert summary["steps"] == recipe.train.steps
    assert not summary["collapse_warning"]
    last = summary["last"]
    assert last["router_acc"] > 0.9  # the router places modalities
    for m in recipe.data.modalities:  # no modality's features folded onto one direction
        assert last[f"enc_spread/{m}"] > 0.1
    assert summary["routing"]["heldout_router_accuracy"] > 0.9

    acc: dict[str, dict[str, float]] = {"pretrained": {}, "random": {}}
    results = tmp_path / "results"
    for task in SYNTH_TASKS:
        spec = get_task(task)
        data = p["manifests"] / f"{spec.modality}.parquet"
        for kind, weights in (("pretrained", str(run)), ("random", f"random:{run}")):
            s = probe_task(
                spec,
                ProbeSettings(
                    task=spec.name,
                    weights=weights,
                    data=data,
                    out=results,
                    model_id=kind,
                    fractions=[1.0],
                    seeds=1,
                    n_boot=50,
                    workers=1,
                ),
                Reporter(),
            )
            assert not s["protocols"]["linear"]["degenerate"]["flag"], (kind, task)
            acc[kind][task] = s["protocols"]["linear"]["metrics"]["accuracy"]["value"]
    floor = statistics.mean(acc["random"].values())
    diff = compare_models(results, "pretrained", "random", list(SYNTH_TASKS), n_boot=1000)
    print(f"random-init floor {floor:.4f}; accuracy {acc}; paired mean difference {diff['mean']}")
    assert floor <= 0.55, acc["random"]
    assert diff["mean"].ci_low > 0, diff

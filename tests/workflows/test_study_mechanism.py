"""The tasks that test the mechanism (issue 28.6), end to end on a tiny setting: demo data with the
look-alike modality and a 10:1 mix -> ingest -> shards -> the pooled cross-modality task with its
retrieval, as `midol study --tasks pooled` runs it (here on a random encoder: no pre-training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midol_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def _shards(root: Path) -> Path:
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.shards import ShardParams, write_shards
    from midol_cli.data.synth import generate

    generate(root / "raw", seed=0, per_class=10, size=32, modalities=["fundus", "oct"], lookalike=True,
             mix={"oct": 1})
    mans = []
    for m in ("fundus", "oct", "slo"):
        mans.append(root / f"{m}.parquet")
        ingest_folder(root / "raw" / m, m, out=mans[-1], workers=1, seed=0, new_modality=m == "slo")
    write_shards(mans, root / "shards", ShardParams(max_side=32, seed=0, min_shards=1), workers=1)
    return root / "shards"


def test_pooled_task_on_lookalike_and_imbalanced_demo_data(tmp_path, monkeypatch):
    from midol_cli.eval.models import load_eval_model
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.tasks.custom import read_labels_table
    from midol_cli.tasks.pooled import pooled_spec
    from midol_cli.train.outputs import export_initial
    from midol_cli.workflows.study import probe_pooled
    from midol_cli.workflows.study_setup import study_tasks

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    shards = _shards(tmp_path)
    labels = read_labels_table(shards)
    counts = labels["modality"].value_counts().to_dict()
    assert counts["fundus"] == counts["slo"] == 10 * counts["oct"] == 40  # the 10:1 mix
    spec = pooled_spec(labels, str(shards))
    assert [t.spec.name for t in study_tasks(["pooled"], shards, {})] == ["pooled"]
    assert {c.split(":")[0] for c in spec.classes} == {"fundus", "oct", "slo"}
    assert "fundus:1" in spec.classes and "slo:1" in spec.classes  # the look-alike's twin classes
    # The smoke recipe's encoder at its initialisation (64 px), as the study's random variant exports it.
    recipe = load_recipe(PretrainRecipe, ROOT / "recipes" / "smoke.yaml",
                         [f"data.shards={shards}", "data.modalities=[fundus,oct,slo]"])
    export_initial(recipe, tmp_path / "run")
    model = load_eval_model(str(tmp_path / "run"), "random-r10")
    s = probe_pooled(model, spec, shards, tmp_path / "results" / "random-r10" / "pooled", 100, workers=0)
    assert s["task"]["name"] == "pooled" and s["n"]["test"] >= 10
    assert 0 <= s["protocols"]["linear"]["metrics"]["accuracy"]["value"] <= 1
    ret = s["protocols"]["retrieval"]
    assert ret["gallery"] == "train" and 0 <= ret["metrics"]["map_10"]["value"] <= 1
    assert 0 <= ret["metrics"]["cross_modality_10"]["value"] <= 1
    written = json.loads((tmp_path / "results" / "random-r10" / "pooled" / "summary.json").read_text())
    assert "retrieval" in written["protocols"]
    # random_bn's statistics come from the pre-training (train) images only, never val or test.
    from midol_cli.workflows.study import _train_batches

    n_train = int((labels["split"] == "train").sum())
    assert 0 < n_train < len(labels)
    assert sum(len(x) for x in _train_batches(shards, model.spec, 0, batch_size=16)) == n_train


def test_pooled_task_needs_two_labelled_modalities():
    import pandas as pd

    from midol_cli.tasks.pooled import pooled_frame, pooled_spec

    one = pd.DataFrame({"modality": ["oct"] * 3, "label": ["CNV", "DME", ""]})
    with pytest.raises(UsageError, match="single-label images of 1"):
        pooled_spec(one, "x")
    two = pd.DataFrame({"modality": ["oct", "xray", "xray"], "label": ["CNV", "Effusion|Nodule", "Nodule"]})
    rows = pooled_frame(two)  # the multi-label X-ray row is left out
    assert rows["label"].tolist() == ["oct:CNV", "xray:Nodule"] and set(rows["modality"]) == {"pooled"}
    assert rows["source_modality"].tolist() == ["oct", "xray"]

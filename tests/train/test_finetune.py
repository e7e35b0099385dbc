"""Fine-tuning: layer-wise LR decay and real runs on synth data.

The head and its losses: tests/models/test_heads.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from midol_cli.errors import UsageError
from midol_cli.models.heads import (
    Classifier,
    ClassifierHead,
)
from tests.conftest import TINY_SWIN, tiny_encoder

# Light augmentation for the learning check: a random-init tiny Swin memorises 56 synth images within a
# few epochs without it, but needs far longer under the full pathology augmentations.
NO_AUG = [
    "augment={crop_scale: [1.0, 1.0], jitter_p: 0, blur_p: 0, hflip: false, vflip: false, rot90: false}"
]
SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "finetune_smoke.yaml"


def tiny_export(root: Path) -> Path:
    """A midol export of a random tiny Swin at 64 px (checkpoint -> export_run), as `midol export` writes."""
    from midol_cli.checkpoint import save_checkpoint
    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from midol_cli.models.export import export_run
    from midol_cli.models.midol import MIDoL

    torch.manual_seed(0)
    spec = EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)
    m = MIDoL(build_encoder(spec), 1, hidden_dim=16, bottleneck_dim=8, n_prototypes=6, n_layers=2)
    proj = {"hidden_dim": 16, "bottleneck_dim": 8, "n_prototypes": 6, "n_layers": 2}
    save_checkpoint(root, 1, {"student": m.student.state_dict(), "teacher": m.teacher.state_dict(),
                              "encoder_spec": spec.to_dict(), "modalities": ["pathology"], "n_experts": 1,
                              "recipe": {"projector": proj}, "recipe_hash": "test"}, keep_last=1)
    return export_run(root)["encoder"]


def synth_manifest(root: Path, per_class: int, modality: str = "pathology", layout: str = "nct-crc") -> Path:
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.synth import generate

    generate(root / "raw", seed=0, per_class=per_class, size=64, modalities=[modality])
    out = root / f"{modality}.parquet"
    ingest_folder(root / "raw" / modality, modality, layout=layout, out=out, workers=1)
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return synth_manifest(tmp_path_factory.mktemp("path20"), per_class=20)


def recipe(*overrides: str):
    from midol_cli.recipes import FinetuneRecipe, load_recipe

    return load_recipe(FinetuneRecipe, SMOKE, list(overrides))


def finetune(export: Path, data: Path, tmp: Path, *overrides: str, linear: bool = False, resume=None,
             run_dir: Path | None = None):
    from midol_cli.tasks import get_task
    from midol_cli.train.finetune import run_finetune

    return run_finetune(get_task("synth-pathology"), f"random:{export}", data, recipe(*overrides),
                        out_root=tmp / "results", name="tiny", run_dir=run_dir or tmp / "run", resume=resume,
                        linear=linear)


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- layer decay


def test_layer_decay_scales_fall_from_last_block_to_patch_embedding():
    from midol_cli.train.finetune import param_groups

    enc = tiny_encoder()
    clf = Classifier(enc, ClassifierHead(enc.num_features, 3))
    groups = param_groups(clf, 0.05, 0.75)
    scale, wd = {}, {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in scale, "a parameter is in two groups"
            scale[id(p)], wd[id(p)] = g["lr_scale"], g["weight_decay"]
    named = dict(clf.named_parameters())
    assert set(scale) == {id(p) for p in named.values()}

    def s(name: str) -> float:
        return scale[id(named[name])]

    chain = [
        "encoder.patch_embed.proj.weight",
        "encoder.layers.0.blocks.0.attn.qkv.weight",
        "encoder.layers.1.blocks.0.attn.qkv.weight",
        "encoder.layers.2.blocks.0.attn.qkv.weight",
        "encoder.layers.2.blocks.1.attn.qkv.weight",
        "encoder.layers.3.blocks.0.attn.qkv.weight",
    ]
    values = [s(n) for n in chain]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] == pytest.approx(0.75)  # the last block is one step below the top
    assert values[0] == pytest.approx(0.75 ** 6)
    assert s("head.fc.weight") == 1.0 and s("head.fc.bias") == 1.0
    # no weight decay on biases, norms and Swin's relative position tables
    assert wd[id(named["encoder.layers.0.blocks.0.attn.relative_position_bias_table"])] == 0.0
    assert wd[id(named["head.fc.bias"])] == 0.0 and wd[id(named["head.fc.weight"])] == 0.05
    # layer_decay 1 switches it off
    assert {g["lr_scale"] for g in param_groups(clf, 0.05, 1.0)} == {1.0}


def test_frozen_classifier_optimises_only_the_head():
    from midol_cli.train.finetune import param_groups

    enc = tiny_encoder()
    clf = Classifier(enc, ClassifierHead(enc.num_features, 3), freeze_encoder=True)
    params = [p for g in param_groups(clf, 0.05, 0.75) for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in clf.head.parameters()}


# --------------------------------------------------------------------------- runs


def test_finetune_end_to_end_learns_and_writes_results(export, manifest, tmp_path):
    from midol_cli.eval.metrics import metric_names
    from midol_cli.eval.results import load_summary

    summary = finetune(export, manifest, tmp_path, "epochs=8", "optim.batch_size=8", "optim.lr=8e-3", *NO_AUG)
    rows = metrics_rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert all(r["val_accuracy"] is not None and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert all(set(metric_names("multiclass")) <= set(r["val"]) for r in rows)
    # chance is 0.25 on 4 balanced classes; this setting reaches about 0.85-0.95 by epoch 8
    assert max(r["train_acc"] for r in rows[-2:]) > 0.5
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    out = tmp_path / "results" / "tiny" / "synth-pathology"
    s = load_summary(out / "summary.json")
    block = s["protocols"]["finetune"]
    assert set(block["metrics"]) == set(metric_names("multiclass"))
    acc = block["metrics"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert block["bootstrap_unit"] == "group" and block["n_boot"] == recipe().n_boot
    best = max(rows, key=lambda r: r["val_accuracy"])
    assert block["best_val"] == pytest.approx(best["val_accuracy"])
    assert s["primary_metric"] == "accuracy" and s["n"]["test"] == summary["n"]["test"] > 0
    assert s["model"]["id"] == "tiny" and s["task"]["data_hash"]

    import pyarrow.parquet as pq

    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    assert set(pred["protocol"]) == {"finetune"} and len(pred) == s["n"]["test"]
    assert np.allclose([sum(p) for p in pred["probs"]], 1.0, atol=1e-5)
    assert (out / "confusion_matrix_finetune.png").stat().st_size > 0
    assert (out / "reliability_finetune.png").stat().st_size > 0  # calibration of the same test predictions
    from midol_cli.eval.calibration import calibration_block

    labels = pred["label"].map({c: i for i, c in enumerate(s["task"]["classes"])}).to_numpy()
    want = calibration_block(labels, np.stack(pred["probs"].to_numpy()), "multiclass", n_boot=10)
    assert block["calibration"]["brier"]["value"] == pytest.approx(want["brier"]["value"], abs=1e-6)
    assert block["operating_points"]["threshold_from"] == "val"
    best_pt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best_pt["epoch"] == block["best_epoch"] and best_pt["metric_name"] == "accuracy"
    assert (tmp_path / "run" / "recipe.yaml").is_file()


def test_resume_continues_after_the_last_epoch(export, manifest, tmp_path):
    finetune(export, manifest, tmp_path, "epochs=2")
    first = metrics_rows(tmp_path / "run")
    assert [r["epoch"] for r in first] == [1, 2]
    # without --resume an existing run is refused, not overwritten
    with pytest.raises(UsageError, match="--resume auto"):
        finetune(export, manifest, tmp_path, "epochs=3")
    finetune(export, manifest, tmp_path, "epochs=3", resume="auto")
    rows = metrics_rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == first  # epochs 1-2 were not redone
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    state = torch.load(tmp_path / "run" / "checkpoints" / ckpts[-1], weights_only=True)
    assert state["kind"] == "finetune" and state["epoch"] == 3
    s = json.loads((tmp_path / "results" / "tiny" / "synth-pathology" / "summary.json").read_text())
    assert s["protocols"]["finetune"]["epochs_run"] == 3


def test_resume_refuses_a_pretraining_checkpoint(export, manifest, tmp_path):
    from midol_cli.checkpoint import list_checkpoints

    pre = list_checkpoints(export.parent.parent)[-1]
    with pytest.raises(UsageError, match="not a fine-tuning checkpoint"):
        finetune(export, manifest, tmp_path, "epochs=1", resume=str(pre))


def test_linear_mode_keeps_encoder_fixed_skips_corrupt_files_and_adds_a_protocol(export, tmp_path):
    from midol_cli.data.manifest import read_manifest
    from midol_cli.eval.results import load_summary

    data = synth_manifest(tmp_path / "d", per_class=6)
    finetune(export, data, tmp_path, "epochs=1", run_dir=tmp_path / "ft")
    df, meta = read_manifest(data)
    train = df[df["split"] == "train"]["path"].tolist()
    (Path(meta["root"]) / train[0]).write_bytes(b"\x89PNG not really")  # changed since ingest
    finetune(export, data, tmp_path, "epochs=2", "optim.lr=0.05", linear=True, run_dir=tmp_path / "lin")
    rows = metrics_rows(tmp_path / "lin")
    assert [r["skipped_unreadable"] for r in rows] == [1, 1]
    assert rows[0]["train_n"] == len(train) - 1

    best = torch.load(tmp_path / "lin" / "best.pt", weights_only=True)
    from midol_cli.eval.models import load_eval_model

    enc = load_eval_model(f"random:{export}").encoder  # the same seeded random init the run started from
    assert all(torch.equal(v, best["model"][f"encoder.{k}"]) for k, v in enc.state_dict().items())
    assert float(best["model"]["head.fc.weight"].abs().max()) > 1e-3  # the head moved off its 2e-5 init

    out = tmp_path / "results" / "tiny" / "synth-pathology"
    s = load_summary(out / "summary.json")
    assert {"finetune", "linear_ft"} <= set(s["protocols"])
    assert s["protocols"]["linear_ft"]["train_mode"] == "linear"
    import pyarrow.parquet as pq

    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    assert set(pred["protocol"]) == {"finetune", "linear_ft"}
    assert (pred["protocol"] == "linear_ft").sum() == (pred["protocol"] == "finetune").sum()


def test_shard_dir_is_refused_with_a_clear_message(export, tmp_path):
    from midol_cli.tasks import get_task
    from midol_cli.train.finetune import prepare_data

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text("{}")
    with pytest.raises(UsageError, match="shard dir"):
        prepare_data(get_task("synth-pathology"), tmp_path / "shards", tmp_path / "cache")


def test_manifest_of_another_modality_is_refused(export, manifest, tmp_path):
    from midol_cli.tasks import get_task
    from midol_cli.train.finetune import prepare_data

    with pytest.raises(UsageError, match="not oct"):
        prepare_data(get_task("synth-oct"), manifest, tmp_path / "cache")


def test_segmentation_task_is_dispatched(monkeypatch, tmp_path):
    import sys
    import types

    from midol_cli.tasks import TASKS, get_task
    from midol_cli.train.finetune import run_finetune

    seg = [s for s in TASKS.values() if s.label_type == "segmentation"]
    if not seg:
        pytest.skip("no segmentation task registered")
    calls = []
    fake = types.ModuleType("midol_cli.train.segment")
    fake.run_segmentation = lambda *a, **kw: calls.append(a) or {"ok": True}
    monkeypatch.setitem(sys.modules, "midol_cli.train.segment", fake)
    r = recipe("epochs=1")
    assert run_finetune(get_task(seg[0].name), "random:x", tmp_path, r, out_root=tmp_path) == {"ok": True}
    assert calls and calls[0][0].name == seg[0].name and calls[0][3] is r


def test_segmentation_without_its_module_is_a_usage_error(monkeypatch, tmp_path):
    import sys

    from midol_cli.tasks import TASKS
    from midol_cli.train.finetune import run_finetune

    seg = [s for s in TASKS.values() if s.label_type == "segmentation"]
    if not seg:
        pytest.skip("no segmentation task registered")
    monkeypatch.setitem(sys.modules, "midol_cli.train.segment", None)  # as if the module were absent
    with pytest.raises(UsageError, match="segmentation fine-tuning is not available"):
        run_finetune(seg[0], "random:x", tmp_path, recipe("epochs=1"), out_root=tmp_path)


def test_multilabel_task_from_a_raw_folder(export, tmp_path, monkeypatch):
    """synth-xray: BCE path, class-balanced pos_weight, raw folder ingested into the cache on the fly."""
    from midol_cli.data.synth import generate
    from midol_cli.eval.metrics import metric_names
    from midol_cli.eval.results import load_summary
    from midol_cli.tasks import get_task
    from midol_cli.train.finetune import run_finetune

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    generate(tmp_path / "raw", seed=0, per_class=4, size=64, modalities=["xray"])
    run_finetune(get_task("synth-xray"), f"random:{export}", tmp_path / "raw" / "xray",
                 recipe("epochs=1", "class_balanced=true"), out_root=tmp_path / "results", name="tiny",
                 run_dir=tmp_path / "run")
    assert list((tmp_path / "cache" / "manifests").glob("synth-xray-*.parquet"))
    out = tmp_path / "results" / "tiny" / "synth-xray"
    s = load_summary(out / "summary.json")
    assert set(s["protocols"]["finetune"]["metrics"]) == set(metric_names("multilabel"))
    assert s["primary_metric"] == "auroc" and s["task"]["label_type"] == "multilabel"
    assert not (out / "confusion_matrix_finetune.png").exists()  # single-label tasks only
    # The task's subgroup columns (the synthetic Data_Entry carries sex, age and view) are reported on
    # fine-tuning too; on a few test images every subgroup is too small, and then carries no number.
    subs = s["protocols"]["finetune"]["subgroups"]["columns"]
    assert set(subs) == {"sex", "age", "view"}
    assert all(g["too_small"] == (g["metrics"] == {}) for c in subs.values() for g in c["groups"])
    assert sum(g["n"] for g in subs["sex"]["groups"]) + subs["sex"]["missing"] == s["n"]["test"]
    import pyarrow.parquet as pq

    probs = pq.read_table(out / "predictions.parquet").column("probs").to_pylist()
    assert all(len(p) == 3 and all(0 < v < 1 for v in p) for p in probs)


def test_task_options_reach_the_ingest_of_a_raw_folder(monkeypatch, tmp_path):
    """`midol finetune --task-option uncertainty=u-zeros` must change how CheXpert is read
    (it was ignored)."""
    import midol_cli.tasks as tasks_mod
    from midol_cli.errors import UsageError
    from midol_cli.tasks import get_task, task_options
    from midol_cli.train.finetune import prepare_data

    seen = {}

    def fake_resolve(spec, data, cache_root, options=None):
        seen["options"] = options
        raise UsageError("stop here")

    monkeypatch.setattr(tasks_mod, "resolve_data", fake_resolve)
    spec = get_task("chexpert")
    opts = task_options(spec, ["uncertainty=u-zeros"])
    with pytest.raises(UsageError, match="stop here"):
        prepare_data(spec, tmp_path, tmp_path / "cache", options=opts)
    assert seen["options"]["uncertainty"] == "u-zeros"
    with pytest.raises(UsageError, match="has no option 'colour'"):
        task_options(spec, ["colour=red"])


def test_a_one_class_test_split_is_refused_before_training(export, tmp_path):
    """Issue 25.8: AUROC of a test split with one class is undefined; it was nan and exit 0 after training."""
    from midol_cli.data.manifest import read_manifest, write_manifest

    data = synth_manifest(tmp_path / "d", per_class=6)
    df, meta = read_manifest(data)
    test = df["split"] == "test"
    df.loc[test, "label"] = sorted(df.loc[test, "label"])[0]
    write_manifest(df, meta, data)
    with pytest.raises(UsageError, match="test split of task synth-pathology .* holds only class") as e:
        finetune(export, data, tmp_path, "epochs=1")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before training

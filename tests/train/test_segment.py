"""Segmentation: Dice/CE loss, per-image metrics, the FPN model, weight mapping, and real training runs.

The training data follows a learnable rule: bright discs (the "lesion") on a textured darker
background, written in the exact ISIC 2018 task 1 layout, so ``run_segmentation`` ingests it
like a real download.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from midol_cli.errors import UsageError
from midol_cli.eval.segmentation import mean_ci, overlap_scores, pick_cases, scores_from_counts
from midol_cli.losses.segmentation import segmentation_loss
from midol_cli.models.segmentation import SegmentationModel, load_encoder_weights, map_encoder_keys
from midol_cli.recipes import SegmentationRecipe
from tests.conftest import TINY_SWIN

SWIN = "swin_tiny_patch4_window7_224"
TRAIN_IN, TRAIN_GT = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
VAL_IN, VAL_GT = "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"
TEST_IN, TEST_GT = "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"


# --------------------------------------------------------------------------- generated data


def disc_image(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [H, W, 3], mask bool [H, W]): a bright blurred-edge disc on a textured background."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = rng.uniform(0.15, 0.3) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    fx, fy, ph = rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4), rng.uniform(0, 6.3)
    texture = 70 + 25 * np.sin(fx * xx + ph) * np.cos(fy * yy) + rng.normal(0, 12, (h, w))
    base = np.stack([texture * 1.1, texture * 0.8, texture * 0.7], -1)
    lesion = np.array([200, 150, 120], np.float32) + rng.normal(0, 12, (h, w, 1))
    img = np.where(mask[..., None], lesion, base)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_isic_discs(root: Path, n_train: int, n_val: int, n_test: int, size=(72, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    k = 0
    for n, inp, gt in ((n_train, TRAIN_IN, TRAIN_GT), (n_val, VAL_IN, VAL_GT), (n_test, TEST_IN, TEST_GT)):
        if n == 0:
            continue
        (root / inp).mkdir(parents=True, exist_ok=True)
        (root / gt).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            img, mask = disc_image(rng, size)
            name = f"ISIC_{k:07d}"
            Image.fromarray(img).save(root / inp / f"{name}.jpg", quality=95)
            Image.fromarray((mask * 255).astype(np.uint8)).save(root / gt / f"{name}_segmentation.png")
            k += 1
        (root / inp / "ATTRIBUTION.txt").write_text("generated\n")
    return root


def tiny_swin_export(path: Path, img_size: int = 64, seed: int = 0) -> Path:
    """A midol export (safetensors + metadata) of a randomly initialised tiny Swin."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model(SWIN, pretrained=False, num_classes=0, img_size=img_size, **TINY_SWIN)
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if "relative_position_index" not in k}
    meta = {
        "format": "midol-export-1",
        "arch": SWIN,
        "img_size": str(img_size),
        "arch_kwargs": json.dumps(TINY_SWIN),
        "mean": json.dumps([0.485, 0.456, 0.406]),
        "std": json.dumps([0.229, 0.224, 0.225]),
        "modalities": json.dumps(["dermoscopy"]),
        "expert_map": json.dumps({"dermoscopy": 0}),
        "n_experts": "1",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def recipe(**kw) -> SegmentationRecipe:
    base = dict(
        epochs=8,
        optim={"batch_size": 8, "lr": 0.064, "layer_decay": 0.9, "warmup_frac": 0.1, "weight_decay": 0.01},
        img_size=64,
        drop_path_rate=0.0,
        early_stopping=0,
        num_workers=0,
        precision="fp32",
        n_boot=200,
        decoder_dim=32,
        seed=0,
    )
    base.update(kw)
    return SegmentationRecipe.model_validate(base)


# --------------------------------------------------------------------------- metrics


def test_overlap_scores_known_answers_and_identity():
    p = np.zeros((4, 4), bool)
    g = np.zeros((4, 4), bool)
    p[0, :4] = True  # 4 pixels
    g[0, 2:4] = g[1, 2:4] = True  # 4 pixels, 2 shared
    d, j = overlap_scores(p, g)
    assert d[0] == pytest.approx(0.5) and j[0] == pytest.approx(1 / 3)
    d, j = overlap_scores(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))  # nothing to find, nothing found
    assert d[0] == 1.0 and j[0] == 1.0
    d, j = overlap_scores(np.ones((3, 3)), np.zeros((3, 3)))
    assert d[0] == 0.0 and j[0] == 0.0
    rng = np.random.default_rng(0)
    P, G = rng.random((20, 8, 8)) > 0.6, rng.random((20, 8, 8)) > 0.5
    d, j = overlap_scores(P, G)
    np.testing.assert_allclose(j, d / (2 - d), rtol=1e-12)
    d2, j2 = scores_from_counts((P & G).sum((1, 2)), P.sum((1, 2)), G.sum((1, 2)))
    np.testing.assert_allclose(d2, d)
    with pytest.raises(ValueError, match="differ in shape"):
        overlap_scores(np.zeros((2, 2)), np.zeros((3, 3)))


def test_mean_ci_brackets_the_mean_and_groups_widen_it():
    v = np.r_[np.full(10, 0.9), np.full(10, 0.5)]
    ci = mean_ci(v, n_boot=500, seed=0)
    assert ci.value == pytest.approx(0.7) and ci.low < 0.7 < ci.high
    const = mean_ci(np.full(7, 0.8), n_boot=50)
    assert (const.value, const.low, const.high) == pytest.approx((0.8, 0.8, 0.8))
    # Two big "lesions" with 10 images each: resampling lesions gives a wider interval.
    grouped = mean_ci(v, groups=["a"] * 10 + ["b"] * 10, n_boot=500, seed=0)
    assert grouped.high - grouped.low > ci.high - ci.low
    assert pick_cases([0.1, 0.9, 0.5, 0.7], k=2) == [1, 0]


# --------------------------------------------------------------------------- model


def _features(arch: str, **kw):
    import timm

    return timm.create_model(arch, pretrained=False, features_only=True, **kw)


@pytest.mark.parametrize(
    ("arch", "kw"),
    [(SWIN, dict(img_size=64, **TINY_SWIN)), ("test_resnet", {}), ("test_vit", {"img_size": 64})],
)
def test_model_shape_and_every_decoder_parameter_learns(arch, kw):
    torch.manual_seed(0)
    model = SegmentationModel(_features(arch, **kw), decoder_dim=16, n_classes=2)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 2, 64, 64) and torch.isfinite(out).all()
    segmentation_loss(out, (torch.rand(2, 64, 64) > 0.5).long())["loss"].backward()
    for name, p in model.decoder_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_swin_features_are_nhwc_and_are_permuted():
    model = SegmentationModel(_features(SWIN, img_size=64, **TINY_SWIN), decoder_dim=8)
    assert model.nhwc
    assert not SegmentationModel(_features("test_resnet"), decoder_dim=8).nhwc


def test_headless_weights_map_into_features_model():
    import timm

    torch.manual_seed(1)
    head = timm.create_model(SWIN, pretrained=False, num_classes=0, img_size=64, **TINY_SWIN)
    torch.manual_seed(2)
    feats = _features(SWIN, img_size=64, **TINY_SWIN)
    report = load_encoder_weights(feats, head.state_dict(), "test")
    own = feats.state_dict()
    torch.testing.assert_close(
        own["layers_2.blocks.1.attn.qkv.weight"], head.state_dict()["layers.2.blocks.1.attn.qkv.weight"]
    )
    assert report.missing == []
    assert set(report.unexpected) == {"norm.weight", "norm.bias"}  # features_only drops the final norm
    # Same weights, same last-stage features as the headless model's (before its final norm).
    x = torch.randn(1, 3, 64, 64)
    head.eval(), feats.eval()  # timm's Swin default drop-path is 0.1: no stochastic depth here
    with torch.no_grad():
        ref = head.layers(head.patch_embed(x))
        torch.testing.assert_close(feats(x)[-1], ref)
    vit = _features("test_vit")
    vit_head = timm.create_model("test_vit", pretrained=False, num_classes=0)
    mapping = map_encoder_keys({k: tuple(v.shape) for k, v in vit.state_dict().items()},
                               {k: tuple(v.shape) for k, v in vit_head.state_dict().items()})
    assert mapping["model.blocks.0.attn.qkv.weight"] == "blocks.0.attn.qkv.weight"
    with pytest.raises(UsageError, match="do not fit"):
        load_encoder_weights(_features("test_resnet"), head.state_dict(), "swin weights")


def test_layer_decay_scales_grow_with_depth():
    import timm

    from midol_cli.train.segment import encoder_layer_scales, param_groups

    head = timm.create_model(SWIN, pretrained=False, num_classes=0, img_size=64, **TINY_SWIN)
    model = SegmentationModel(_features(SWIN, img_size=64, **TINY_SWIN), decoder_dim=8)
    scales = encoder_layer_scales(model, head, 0.5)
    stem = scales["encoder.patch_embed.proj.weight"]
    first = scales["encoder.layers_0.blocks.0.attn.qkv.weight"]
    last = scales["encoder.layers_3.blocks.0.attn.qkv.weight"]
    assert stem < first < last <= 0.5
    groups = param_groups(model, scales, 0.05)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr_scale"] == 1.0
    assert by_param[id(model.head.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.head.weight)]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert set(encoder_layer_scales(model, head, 1.0).values()) == {1.0}


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run: 40 train / 8 val / 12 test disc images, a random-init tiny Swin, 8 epochs."""
    from midol_cli.tasks import get_task
    from midol_cli.train.segment import run_segmentation

    base = tmp_path_factory.mktemp("seg")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIDOL_CACHE_DIR", str(base / "cache"))
    raw = make_isic_discs(base / "raw", 40, 8, 12)
    export = tiny_swin_export(base / "tiny" / "encoder.safetensors")
    spec = get_task("isic2018-seg")
    rec = recipe()
    summary = run_segmentation(
        spec, f"random:{export}", raw, rec, base / "results", "tiny", base / "run", None
    )
    yield {"base": base, "raw": raw, "export": export, "spec": spec, "recipe": rec, "summary": summary}
    mp.undo()


def test_training_beats_an_untrained_decoder(trained):
    from midol_cli.eval.models import load_eval_model
    from midol_cli.train.segment import (
        build_segmentation_model,
        evaluate_full_resolution,
        prepare_segmentation_data,
    )

    rec = trained["recipe"]
    fd = prepare_segmentation_data(trained["spec"], trained["raw"], trained["base"] / "cache", workers=1)
    em = load_eval_model(f"random:{trained['export']}")
    untrained, spec, _ = build_segmentation_model(em, 64, rec.decoder_dim, 0.0, rec.seed)
    _, d0, _, bad = evaluate_full_resolution(untrained, fd, fd.split("test"), 64, spec.mean, spec.std,
                                             torch.device("cpu"), lambda: torch.no_grad(), 10**8)
    assert bad == []
    dice = trained["summary"]["protocols"]["finetune"]["metrics"]["dice"]
    assert dice["value"] > 0.75, dice
    assert dice["value"] > float(np.mean(d0)) + 0.25, (dice, float(np.mean(d0)))
    assert dice["ci_low"] <= dice["value"] <= dice["ci_high"]


def test_results_files_and_summary_schema(trained):
    import pandas as pd

    from midol_cli.eval.results import load_summary

    out = trained["base"] / "results" / "tiny" / "isic2018-seg"
    s = load_summary(out / "summary.json")
    assert s["primary_metric"] == "dice" and s["task"]["label_type"] == "segmentation"
    assert s["task"]["classes"] == ["background", "lesion"] and s["model"]["id"] == "tiny"
    assert s["n"] == {"train": 40, "val": 8, "test": 12}
    block = s["protocols"]["finetune"]
    assert set(block["metrics"]) == {"dice", "jaccard"}
    d, j = block["metrics"]["dice"]["value"], block["metrics"]["jaccard"]["value"]
    assert j < d  # per image J = D / (2 - D) <= D
    preds = pd.read_parquet(out / "predictions.parquet")
    assert list(preds.columns) == ["sample_id", "split", "group", "dice", "jaccard"] and len(preds) == 12
    assert preds["dice"].mean() == pytest.approx(d)
    np.testing.assert_allclose(preds["jaccard"], preds["dice"] / (2 - preds["dice"]), rtol=1e-9)
    assert (out / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in (trained["base"] / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["val_dice"] > rows[0]["val_dice"]
    assert (trained["base"] / "run" / "best.pt").is_file()
    assert s["task"]["data_hash"] == block["data_hash"]


def test_resume_auto_after_the_end_does_not_retrain(trained):
    from midol_cli.train.segment import run_segmentation

    b = trained["base"]
    with pytest.raises(UsageError, match="already holds"):
        run_segmentation(trained["spec"], f"random:{trained['export']}", trained["raw"], trained["recipe"],
                         b / "results", "tiny", b / "run", None)
    again = run_segmentation(
        trained["spec"],
        f"random:{trained['export']}",
        trained["raw"],
        trained["recipe"],
        b / "results2",
        "tiny",
        b / "run",
        "auto",
    )
    assert again["protocols"]["finetune"]["metrics"] == trained["summary"]["protocols"]["finetune"]["metrics"]
    assert len((b / "run" / "metrics.jsonl").read_text().splitlines()) == 8


def test_resumed_epoch_matches_the_uninterrupted_one(trained, tmp_path):
    """Kill after epoch 1 of 2 (drop the epoch-2 checkpoint), resume: epoch 2 is replayed exactly."""
    from midol_cli.train.segment import run_segmentation

    rec = recipe(epochs=2, max_train_samples=16)
    args = (trained["spec"], f"random:{trained['export']}", trained["raw"], rec, tmp_path / "res", "t")
    run = tmp_path / "run"
    run_segmentation(*args, run, None)
    final = torch.load(run / "checkpoints" / "ckpt-00000002.pt", weights_only=True)
    (run / "checkpoints" / "ckpt-00000002.pt").unlink()
    run_segmentation(*args, run, "auto")
    again = torch.load(run / "checkpoints" / "ckpt-00000002.pt", weights_only=True)
    for k, v in final["model"].items():
        torch.testing.assert_close(again["model"][k], v, msg=k)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_data_is_a_usage_error(trained, tmp_path):
    from midol_cli.train.segment import prepare_segmentation_data

    spec = trained["spec"]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "index.json").write_text("{}")
    with pytest.raises(UsageError, match="shards carry no masks"):
        prepare_segmentation_data(spec, shards, tmp_path / "cache")
    # A mask of the wrong size is reported and its image skipped; the rest trains.
    raw = tmp_path / "raw"
    shutil.copytree(trained["raw"], raw)
    bad = raw / TRAIN_GT / "ISIC_0000000_segmentation.png"
    Image.new("L", (10, 10)).save(bad)
    fd = prepare_segmentation_data(spec, raw, tmp_path / "cache", workers=1)
    assert fd.skipped == {"mask size differs from its image": 1}
    assert len(fd.items) == 59 and all(it.sample_id for it in fd.items)


WORKER = """
import json, sys
from pathlib import Path
from midol_cli.recipes import SegmentationRecipe
from midol_cli.tasks import get_task
from midol_cli.train.segment import run_segmentation

rec = SegmentationRecipe.model_validate(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
run_segmentation(
    get_task("isic2018-seg"), sys.argv[3], sys.argv[4], rec, out / "results", "m", out / "run", None
)
"""


def test_two_ranks_match_one_process(trained, tmp_path):
    """torchrun (2 CPU ranks, gloo) gives the single process's losses, val Dice and weights.

    Augmentation is off and the loss is CE only, so a global batch of 4 split 2 + 2 over ranks
    is exactly the single process's batch of 4 (soft Dice pools over the local batch, by design).
    """
    import os
    import subprocess
    import sys

    from midol_cli.data.ingest import ingest_folder
    from midol_cli.train.segment import run_segmentation

    root = Path(__file__).resolve().parents[2]
    manifest = tmp_path / "m.parquet"
    ingest_folder(trained["raw"], "dermoscopy", layout="isic2018-seg", out=manifest, workers=1)
    still = {"crop_scale": [1.0, 1.0], "hflip": False, "vflip": False, "rot90": False, "jitter_p": 0.0,
             "blur_p": 0.0}
    rec = recipe(epochs=2, max_train_samples=8, dice_weight=0.0, augment=still,
                 optim={"batch_size": 4, "lr": 0.064, "layer_decay": 0.9, "warmup_frac": 0.0})
    weights = f"random:{trained['export']}"
    one = tmp_path / "one"
    # Same thread count as each rank (OMP_NUM_THREADS=1 below): otherwise float reduction orders
    # differ and AdamW at this LR turns that into weight differences above the tolerance.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_segmentation(trained["spec"], weights, manifest, rec, one / "results", "m", one / "run", None)
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         rec.model_dump_json(), str(tmp_path / "two"), weights, str(manifest)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {n: [json.loads(x) for x in (tmp_path / n / "run" / "metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")}
    assert [r["train_n"] for r in rows["two"]] == [8, 8]
    for a, b in zip(rows["one"], rows["two"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-3)
    w1 = torch.load(tmp_path / "one" / "run" / "best.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "run" / "best.pt", weights_only=True)["model"]
    for k, v in w1.items():
        # AdamW normalises each update, so a gradient near zero whose float sum differs in the last bits
        # (the CPU's kernels choose the reduction order) moves a weight by up to ~lr: 4e-4 of 0.1 was seen on
        # one CPU model. A rank left out of the gradient average shows in the losses above (rel 1e-4).
        torch.testing.assert_close(w2[k], v, rtol=1e-3, atol=1e-3, msg=k)
    s1, s2 = (json.loads((tmp_path / n / "results" / "m" / "isic2018-seg" / "summary.json").read_text())
              for n in ("one", "two"))
    assert s1["protocols"]["finetune"]["metrics"]["dice"]["value"] == pytest.approx(
        s2["protocols"]["finetune"]["metrics"]["dice"]["value"], abs=1e-3)

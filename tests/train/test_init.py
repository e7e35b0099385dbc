"""Pre-training from released weights: student and teacher start from a checkpoint through the strict
loader; during ``train.freeze_encoder_steps`` only the projector and router train and the encoder is
kept exactly; after it the encoder trains at ``optim.encoder_lr_scale`` of the schedule's LR; run.json,
checkpoints and the export record the initial weights' hash."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from midol_cli.artifacts import sha256_file
from midol_cli.errors import UsageError
from midol_cli.recipes import PretrainRecipe, load_recipe
from midol_cli.train.pretrain import build_model, encoder_spec, run_pretrain
from tests.conftest import TINY_SWIN
from tests.pipeline import build_pipeline

# Swin-T's family, shrunk (TINY_SWIN) so a step takes a fraction of a second
ARCH = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("init"), per_class=3)["shards"]


def _released(path):
    """A 'released' checkpoint in timm's train-script layout (state_dict + state_dict_ema), classifier
    head included, as people download them."""
    torch.manual_seed(123)
    src = timm.create_model(ARCH, pretrained=False, num_classes=10, img_size=64, **TINY_SWIN)
    sd = src.state_dict()
    torch.save(
        {"epoch": 300, "arch": ARCH, "state_dict": {k: v * 0 for k, v in sd.items()}, "state_dict_ema": sd},
        path,
    )
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def _recipe(shards, weights, *extra):
    return load_recipe(
        PretrainRecipe,
        "recipes/smoke.yaml",
        [
            f"data.shards={shards}",
            f"model.arch={ARCH}",
            "model.img_size=64",
            "model.arch_kwargs=" + json.dumps(TINY_SWIN),
            f"model.weights={weights}",
            "train.steps=40",
            "train.freeze_encoder_steps=3",
            "optim.encoder_lr_scale=0.1",
            "optim.warmup_frac=0",
            "train.ckpt_every=1",
            "train.keep_last=10",
            "train.log_every=1",
            "optim.global_batch_size=8",
            "data.num_workers=0",
            "data.shuffle_buffer=20",
            "projector.hidden_dim=32",
            "projector.n_prototypes=16",
            "loss.queue_size=16",
            *extra,
        ],
    )


def _encoder(state, which):
    return {k[len("encoder."):]: v for k, v in state[which].items() if k.startswith("encoder.")}


def _projector(state):
    return {k: v for k, v in state["student"].items() if k.startswith("projector.")}


def test_the_encoder_is_kept_while_frozen_then_trained_and_the_init_is_recorded(shards, tmp_path):
    weights = tmp_path / "swin_t_released.pth"
    init = _released(weights)
    run = tmp_path / "run"
    run_pretrain(_recipe(shards, weights), run, max_steps=5)
    ck = {
        int(p.stem.split("-")[1]): torch.load(p, weights_only=True)
        for p in (run / "checkpoints").glob("ckpt-*.pt")
    }
    assert sorted(ck) == [1, 2, 3, 4, 5]

    for step in (1, 2, 3):  # frozen: student and teacher encoders are the released tensors, bit for bit
        for which in ("student", "teacher"):
            enc = _encoder(ck[step], which)
            assert all(torch.equal(enc[k], v) for k, v in init.items() if k in enc), (step, which)
    assert not all(
        torch.equal(a, b) for a, b in zip(_projector(ck[1]).values(), _projector(ck[3]).values(), strict=True)
    )
    moved = [k for k, v in init.items() if not torch.equal(_encoder(ck[5], "student")[k], v)]
    assert len(moved) > len(init) // 2, "the encoder did not train after the frozen steps"

    rec = json.loads((run / "run.json").read_text())
    assert rec["init"]["sha256"] == sha256_file(weights)
    assert rec["init"]["load_report"]["format"] == "timm-train-ema" and rec["init"]["load_report"]["complete"]
    assert ck[5]["init"]["sha256"] == rec["init"]["sha256"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in lines if "encoder_frozen" in r}
    assert [steps[s]["encoder_frozen"] for s in (1, 3, 4, 5)] == [True, True, False, False]
    assert steps[4]["encoder_lr"] == pytest.approx(steps[4]["lr"] * 0.1)

    from midol_cli.eval.models import load_eval_model
    from midol_cli.models.export import export_run

    export_run(run)
    m = load_eval_model(str(run))
    assert (
        m.info()["init"]["sha256"] == rec["init"]["sha256"] and m.info()["init"]["format"] == "timm-train-ema"
    )


def test_encoder_lr_scale_sets_the_encoder_groups_only(shards, tmp_path):
    from midol_cli.train.pretrain import _param_groups

    model = build_model(_recipe(shards, _released_path(tmp_path)))
    groups = _param_groups(model.student, 0.1)
    enc_ids = {id(p) for p in model.student.encoder.parameters()}
    for g in groups:
        kinds = {id(p) in enc_ids for p in g["params"]}
        assert len(kinds) == 1 and g["lr_scale"] == (0.1 if kinds == {True} else 1.0)


def _released_path(tmp_path):
    path = tmp_path / "w.pth"
    _released(path)
    return path


def test_wrong_weights_are_refused_before_training(shards, tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(UsageError, match="do not match this architecture|do not fit the model"):
        build_model(_recipe(shards, tmp_path / "vit.pth"))
    with pytest.raises(
        UsageError,
        match=r"names imagenet-swinb \(swin_base_patch4_window7_224\) but model.arch is "
        r"swin_tiny.*set model.arch=swin_base",
    ):
        encoder_spec(_recipe(shards, f"imagenet-swinb={tmp_path / 'vit.pth'}"))
    with pytest.raises(
        UsageError, match="never downloads weights: get it from https://huggingface.co/timm/swin_base"
    ):
        build_model(_recipe(shards, f"imagenet-swinb={tmp_path / 'nope.safetensors'}",
                            "model.arch=swin_base_patch4_window7_224"))
    with pytest.raises(UsageError, match="freeze_encoder_steps .* must be below train.steps"):
        _recipe(shards, tmp_path / "vit.pth", "train.freeze_encoder_steps=40")


def test_position_embeddings_are_resized_to_the_recipe_size(shards, tmp_path):
    """A DINOv2 hub checkpoint (518-px table) starts a 56-px ViT pre-training: the table is resampled
    by the model's timm filter, and the registry entry's normalisation is the one pre-training uses."""
    torch.manual_seed(0)
    big = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=518, depth=1
    )
    hub = {**big.state_dict(), "mask_token": torch.zeros(1, 384)}
    torch.save(hub, tmp_path / "dinov2_vits14_pretrain.pth")
    r = _recipe(shards, f"dinov2-vits14={tmp_path / 'dinov2_vits14_pretrain.pth'}",
                "model.arch=vit_small_patch14_dinov2", "model.img_size=56", 'model.arch_kwargs={"depth": 1}')
    model = build_model(r)
    rep = model.init["load_report"]
    assert rep["complete"] and rep["format"] == "dinov2-hub"
    assert any(x.startswith("pos_embed [1, 1370, 384] -> [1, 17, 384]") for x in rep["resized"])
    assert torch.equal(model.teacher.encoder.pos_embed, model.student.encoder.pos_embed)
    assert encoder_spec(r).mean == (0.485, 0.456, 0.406)

"""Other people's weights: strict loading with a report, and third-party checkpoint formats recognised
by their structure. Each format is a generated checkpoint with real key names and shapes (small
variants: ViT-S, a tiny Swin), and must give the same outputs as timm's own model on those tensors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from midol_cli.errors import UsageError
from midol_cli.eval.models import load_eval_model
from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.weights import recognise
from tests.conftest import TINY_SWIN
from tests.train.test_finetune import tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("export"))


def _rewrite(src, dst, edit):
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(edit(tensors), str(dst), metadata=meta)
    return dst


def test_a_partial_export_is_refused_naming_keys_and_lenient_records_what_it_left(export, tmp_path):
    def drop(t):
        keys = sorted(t)
        return {k: t[k] for i, k in enumerate(keys) if i % 20 >= 9}  # 45% of the tensors deleted

    part = _rewrite(export, tmp_path / "encoder.safetensors", drop)
    with pytest.raises(UsageError, match=r"missing \(.*\[") as e:
        load_eval_model(str(part))
    assert "--weights-lenient" in str(e.value) and len(str(e.value).splitlines()) == 1
    m = load_eval_model(str(part), lenient=True)
    rep = m.load_report
    assert rep["strict"] is False and not rep["complete"] and len(rep["missing"]) > 0
    assert m.info()["load_report"] == rep  # what summary.json and run.json record


def test_a_wrong_shaped_or_renamed_tensor_is_refused(export, tmp_path):
    def reshape(t):
        k = next(k for k in sorted(t) if k.endswith("norm.weight"))
        t[k] = torch.ones(t[k].numel() + 1)
        return t

    def rename(t):
        k = sorted(t)[0]
        t["renamed." + k] = t.pop(k)
        return t

    with pytest.raises(UsageError, match="of another shape .*file \\["):
        load_eval_model(str(_rewrite(export, tmp_path / "a.safetensors", reshape)))
    with pytest.raises(UsageError, match="unexpected \\(renamed\\."):
        load_eval_model(str(_rewrite(export, tmp_path / "b.safetensors", rename)))
    assert load_eval_model(str(export)).load_report["complete"]


def _tiny_swin():
    torch.manual_seed(0)
    return build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)).eval()


def _prefixed(sd, p):
    return {p + k: v for k, v in sd.items()}


@pytest.mark.parametrize(
    "fmt,wrap",
    [
        (
            "state-dict",
            lambda sd: {
                "state_dict": _prefixed(sd, "model."),
                "pytorch-lightning_version": "2.4.0",
                "epoch": 3,
                "global_step": 90,
            },
        ),  # Lightning
        ("state-dict", lambda sd: _prefixed(sd, "module.")),  # DDP
        ("state-dict", lambda sd: {"model_ema": _prefixed(sd, "module.")}),  # an EMA wrapper
        ("state-dict", lambda sd: _prefixed(sd, "student.")),
        (
            "timm-train-ema",
            lambda sd: {"state_dict": {k: v + 1 for k, v in sd.items()}, "state_dict_ema": sd, "epoch": 10},
        ),
        (
            "moco-v3",
            lambda sd: {
                "state_dict": {
                    **_prefixed(sd, "module.base_encoder."),
                    **_prefixed({k: v + 1 for k, v in sd.items()}, "module.momentum_encoder."),
                    "module.predictor.0.weight": torch.zeros(4, 4),
                },
                "epoch": 100,
            },
        ),
        (
            "dino-teacher",
            lambda sd: {
                "teacher": {**_prefixed(sd, "backbone."), "head.mlp.0.weight": torch.zeros(8, 4)},
                "student": _prefixed({k: v + 1 for k, v in sd.items()}, "module.backbone."),
                "epoch": 100,
            },
        ),
    ],
)
def test_wrapper_formats_load_the_encoder_they_hold(tmp_path, fmt, wrap):
    src = _tiny_swin()
    path = tmp_path / "w.pth"
    torch.save(wrap(src.state_dict()), path)
    assert recognise(torch.load(path, weights_only=True))[0] == fmt
    dst = build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(src(x), dst(x), atol=1e-6) and dst.load_report.complete


def _vit_s(img_size=224, **kw):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=img_size, **kw
    ).eval()


def test_mae_retfound_checkpoint_drops_its_decoder(tmp_path):
    src = _vit_s()
    sd = dict(src.state_dict())
    sd.update(
        {
            "mask_token": torch.zeros(1, 1, 512),
            "decoder_embed.weight": torch.zeros(512, 384),
            "decoder_pos_embed": torch.zeros(1, 197, 512),
            "decoder_blocks.0.norm1.weight": torch.ones(512),
            "decoder_norm.weight": torch.ones(512),
            "decoder_pred.weight": torch.zeros(768, 512),
        }
    )
    torch.save({"model": sd, "optimizer": {}, "epoch": 799}, tmp_path / "RETFound_mae.pth")
    m = load_eval_model(f"timm:vit_small_patch16_224={tmp_path / 'RETFound_mae.pth'}")
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(src(x), m.encoder(x), atol=1e-5)
    assert m.load_report["format"] == "mae" and m.load_report["dropped"] == 6 and m.load_report["complete"]


def test_open_clip_visual_trunk_is_extracted(tmp_path):
    src = _vit_s()
    sd = {**_prefixed(src.state_dict(), "visual.trunk."), "visual.head.proj.weight": torch.zeros(512, 384),
          "text.transformer.resblocks.0.ln_1.weight": torch.ones(512), "logit_scale": torch.tensor(4.6)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "open_clip.safetensors"))
    m = load_eval_model(f"timm:vit_small_patch16_224={tmp_path / 'open_clip.safetensors'}")
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(src(x), m.encoder(x), atol=1e-5) and m.load_report["format"] == "open_clip"


@pytest.mark.parametrize("arch,regs", [("vit_small_patch14_dinov2", 0), ("vit_small_patch14_reg4_dinov2", 4)])
def test_dinov2_hub_checkpoint_at_518_px_is_resized_as_timm_does(tmp_path, arch, regs):
    """The hub state dict (518-px position embedding, mask_token, register_tokens, ls1/ls2 layer scale)
    loaded at 224 px gives the outputs of timm's model carrying resample_abs_pos_embed's table."""
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    big = timm.create_model(arch, pretrained=False, num_classes=0, img_size=518)
    hub = {k: v for k, v in big.state_dict().items() if k != "reg_token"}
    hub["mask_token"] = torch.zeros(1, 384)
    if regs:  # the hub's register model keeps the class token's slot in pos_embed (timm's has none)
        hub["register_tokens"] = big.state_dict()["reg_token"]
        hub["pos_embed"] = torch.cat([torch.zeros(1, 1, 384), hub["pos_embed"]], 1)
    assert hub["pos_embed"].shape == (1, 1370, 384) and any(".ls1.gamma" in k for k in hub)
    torch.save(hub, tmp_path / "dinov2_vits14_pretrain.pth")

    dst = build_encoder(
        EncoderSpec(arch=arch, img_size=224), weights=str(tmp_path / "dinov2_vits14_pretrain.pth")
    )
    ref = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    want = dict(big.state_dict())
    want["pos_embed"] = resample_abs_pos_embed(want["pos_embed"], new_size=(16, 16), old_size=(37, 37),
                                               num_prefix_tokens=0 if regs else 1, interpolation="bicubic",
                                               antialias=True)
    ref.load_state_dict(want, strict=True)
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(ref.eval()(x), dst.eval()(x), atol=1e-5)
    rep = dst.load_report
    assert (
        rep.complete
        and rep.format == "dinov2-hub"
        and any(r.startswith("pos_embed [1, 13") for r in rep.resized)
    )


def test_damaged_bytes_are_not_called_pickled_code(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 2)
    with pytest.raises(UsageError, match="damaged, or not a PyTorch checkpoint"):
        load_eval_model(f"timm:vit_small_patch16_224={junk}")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this would run",))


class _MyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def _pickled_files(tmp_path) -> dict[str, object]:
    """The ways a weights file carries code: torch.save's zip (the usual .pth), its legacy format, a whole
    pickled module, a plain pickle stream (protocol 0: no 0x80 marker)."""
    import pickle

    files = {}
    for name, obj, kw in (("zip.pth", {"w": torch.zeros(2), "x": _RunsCode()}, {}),
                          ("legacy.pth", {"w": torch.zeros(2), "x": _RunsCode()},
                           {"_use_new_zipfile_serialization": False}),
                          ("module.pth", _MyNet(), {})):
        torch.save(obj, tmp_path / name, **kw)
        files[name] = obj
    with open(tmp_path / "proto0.pth", "wb") as fh:
        pickle.dump({"x": _RunsCode()}, fh, protocol=0)
    files["proto0.pth"] = None
    return files


def test_every_weights_path_says_contains_code_for_a_pickle_with_code(tmp_path):
    """torch.save's zip of an object that runs code was called "damaged" (torch's message blames
    weights_only for junk and code alike; issue 25.14). One reader (artifacts.load_torch_plain) reads the
    pickle without running it, for --init and model.weights (build_encoder), timm:NAME=FILE, NAME=FILE and
    checkpoints alike."""
    from midol_cli.checkpoint import load_checkpoint
    from midol_cli.models.weights import read_state_dict

    for name in _pickled_files(tmp_path):
        path = tmp_path / name
        culprit = "_MyNet" if name == "module.pth" else "system"
        with pytest.raises(UsageError, match=rf"'{path}' contains pickled code \(.*{culprit}\)"):
            read_state_dict(path)
        with pytest.raises(UsageError, match="contains pickled code"):
            load_eval_model(f"timm:vit_small_patch16_224={path}")
        with pytest.raises(UsageError, match="contains pickled code"):
            build_encoder(EncoderSpec(arch="resnet18", img_size=64), weights=str(path))
        with pytest.raises(UsageError, match="contains pickled code"):
            load_checkpoint(path)
    # Damaged files stay "damaged": junk, a truncated zip, a truncated plain state dict.
    torch.save({"w": torch.zeros(64)}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    for i, data in enumerate((bytes(range(256)) * 2, good[: len(good) // 2], b"PK\x03\x04" + good[4:40])):
        (tmp_path / f"bad{i}.pth").write_bytes(data)
        with pytest.raises(UsageError, match="damaged, or not a PyTorch checkpoint"):
            read_state_dict(tmp_path / f"bad{i}.pth")
        with pytest.raises(UsageError, match="is unreadable"):
            load_checkpoint(tmp_path / f"bad{i}.pth")
    assert set(read_state_dict(tmp_path / "good.pth")) == {"w"}

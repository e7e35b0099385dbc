import pytest
import timm
import torch

from midol_cli.checkpoint import load_checkpoint, save_checkpoint
from midol_cli.errors import UsageError
from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.export import (
    export_run,
    load_exported_encoder,
    load_exported_projector,
    read_export_meta,
)
from midol_cli.models.midol import MIDoL
from tests.conftest import TINY_SWIN


@pytest.fixture()
def run_dir(tmp_path):
    torch.manual_seed(0)
    spec = EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)
    m = MIDoL(build_encoder(spec), 2, hidden_dim=16, bottleneck_dim=8, n_prototypes=6, n_layers=2)
    with torch.no_grad():  # make teacher differ from a fresh init
        for p in m.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(
        tmp_path,
        5,
        {
            "student": m.student.state_dict(),
            "teacher": m.teacher.state_dict(),
            "encoder_spec": spec.to_dict(),
            "modalities": ["xray", "oct"],
            "n_experts": 2,
            "recipe": {"projector": {"hidden_dim": 16, "bottleneck_dim": 8, "n_prototypes": 6, "n_layers": 2}},
            "recipe_hash": "abc",
        },
        keep_last=2,
    )
    return tmp_path, m


def test_timm_round_trip_identical_outputs(run_dir):
    path, m = run_dir
    files = export_run(path)
    enc_file = files["encoder"]
    model = timm.create_model(
        "swin_base_patch4_window7_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(enc_file)),
        num_classes=0,
        img_size=64,
        **TINY_SWIN,
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.teacher.encoder.eval()(x)
        assert torch.allclose(model(x), ref, atol=1e-6)
        ours, spec, meta = load_exported_encoder(enc_file)
        assert torch.allclose(ours(x), ref, atol=1e-6)
    assert meta["modalities"] == ["xray", "oct"]
    assert meta["expert_map"] == {"xray": 0, "oct": 1}
    assert meta["midol_version"] and meta["recipe_hash"] == "abc"
    from safetensors.torch import load_file

    assert not any(k.startswith(("module.", "encoder.", "head")) for k in load_file(str(enc_file)))
    proj = load_exported_projector(enc_file, ours.num_features)
    with torch.no_grad():
        h = ours(x)
        assert torch.allclose(proj(h).router_logits, m.teacher.projector(h).router_logits, atol=1e-6)


def test_export_of_empty_run_dir_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        export_run(tmp_path)


def test_non_midol_safetensors_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="not a midol export"):
        read_export_meta(tmp_path / "x.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    import pickle

    p = tmp_path / "checkpoints" / "ckpt-00000001.pt"
    p.parent.mkdir()
    with open(p, "wb") as fh:
        pickle.dump({"format": "midol-checkpoint-1", "x": _Evil()}, fh)
    with pytest.raises(UsageError, match="pickled code"):
        load_checkpoint(p)
    with pytest.raises(UsageError, match="pickled code"):
        export_run(tmp_path)

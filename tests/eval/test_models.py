"""--weights in its three forms, and the errors a user can cause with it."""

import pytest
import torch

from midol_cli.checkpoint import save_checkpoint
from midol_cli.errors import UsageError
from midol_cli.eval.models import load_eval_model
from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.export import export_run
from midol_cli.models.midol import MIDoL
from tests.conftest import TINY_SWIN


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "tiny-run"
    torch.manual_seed(1)
    spec = EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)
    m = MIDoL(build_encoder(spec), 2, hidden_dim=16, bottleneck_dim=8, n_prototypes=6, n_layers=2)
    save_checkpoint(
        root,
        3,
        {
            "student": m.student.state_dict(),
            "teacher": m.teacher.state_dict(),
            "encoder_spec": spec.to_dict(),
            "modalities": ["xray", "oct"],
            "n_experts": 2,
            "recipe": {
                "projector": {"hidden_dim": 16, "bottleneck_dim": 8, "n_prototypes": 6, "n_layers": 2}
            },
        },
        keep_last=1,
    )
    export_run(root)
    return root, m


def test_run_dir_and_export_file(run_dir):
    root, m = run_dir
    a = load_eval_model(str(root))
    b = load_eval_model(str(root / "export" / "encoder.safetensors"), name="custom")
    assert a.id == "tiny-run" and a.kind == "midol" and b.id == "custom"
    assert a.modalities == ["xray", "oct"] and a.projector is not None
    assert a.weights_hash == b.weights_hash and len(a.weights_hash) == 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a.encoder(x), m.teacher.encoder.eval()(x), atol=1e-6)


def test_random_of_a_run_has_the_same_architecture(run_dir):
    root, m = run_dir
    r = load_eval_model(f"random:{root}")
    assert r.kind == "random" and r.id == "random-tiny-run" and r.weights_hash == "random-seed0"
    norm = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SWIN.items()}
    assert r.spec.arch_kwargs == norm and r.spec.img_size == 64
    assert r.encoder.num_features == m.student.encoder.num_features
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(r.encoder(x), m.teacher.encoder.eval()(x))


def test_random_timm_name():
    r = load_eval_model("random:resnet18")
    assert r.spec.img_size == 224 and r.encoder.num_features == 512 and r.id == "random-resnet18"


def test_timm_name_with_local_file(tmp_path):
    src = build_encoder(EncoderSpec(arch="resnet18")).eval()
    f = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, f)
    t = load_eval_model(f"timm:resnet18={f}")
    assert t.kind == "timm" and t.id == "resnet18-r18"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t.encoder(x), src(x), atol=1e-5)


@pytest.mark.parametrize(
    "weights,match",
    [
        ("timm:resnet18=/no/such/file.pth", "does not exist"),
        ("timm:not_a_real_model_xyz=/etc/hostname", "not a timm model"),
        ("timm:resnet18", "timm:<model_name>=<local weights file>"),
        ("random:", "needs a model name"),
        ("random:not_a_real_model_xyz", "not a timm model"),
        ("/no/such/run", "do not exist"),
    ],
)
def test_weights_errors(weights, match):
    with pytest.raises(UsageError, match=match):
        load_eval_model(weights)


def test_mismatched_keys(tmp_path):
    f = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, f)
    with pytest.raises(UsageError, match="do not match"):
        load_eval_model(f"timm:resnet18={f}")


def test_run_dir_without_export(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UsageError, match="midol export"):
        load_eval_model(str(tmp_path))

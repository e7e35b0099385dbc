import pickle

import pytest
import torch

from midol_cli.errors import UsageError
from midol_cli.models.encoder import EncoderSpec, build_encoder
from tests.conftest import TINY_SWIN


def test_real_swin_b_builds_with_paper_shapes():
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec())
    assert enc.num_features == 1024
    n = sum(p.numel() for p in enc.parameters())
    assert 85e6 < n < 90e6  # Swin-B, headless
    with torch.inference_mode():
        out = enc(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1024) and torch.isfinite(out).all()


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(UsageError, match="not a timm model"):
        build_encoder(EncoderSpec(arch="swin_gigantic_patch9"))


def _tiny():
    torch.manual_seed(0)
    return build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)).eval()


@pytest.mark.parametrize(
    "prefix,container", [("module.", "state_dict"), ("backbone.", "model"), ("encoder.", None)]
)
def test_weights_with_wrapper_prefixes_load(tmp_path, prefix, container):
    src = _tiny()
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    sd[prefix + "head.fc.weight"] = torch.zeros(10, src.num_features)  # a classifier the encoder drops
    obj = {container: sd} if container else sd
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(src(x), dst(x), atol=1e-6)
    assert dst.load_report.skipped_head


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    src = _tiny()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "w.safetensors")
    dst = build_encoder(
        EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(tmp_path / "w.safetensors")
    )
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(src(x), dst.eval()(x), atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"x": _Evil()}}, fh)
    with pytest.raises(UsageError, match="pickled code"):
        build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(path))


def test_mismatched_weights_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(UsageError, match="do not match"):
        build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(path))


def test_missing_weights_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN), weights=str(tmp_path / "nope.pth"))

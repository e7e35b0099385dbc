"""GPU-only checks (run by benchmarks/gpu_check.sh on a CUDA machine; skipped elsewhere)."""

import pytest
import torch

from midol_cli.models.midol import StepSchedule
from midol_cli.recipes import PretrainRecipe, load_recipe
from midol_cli.train.pretrain import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _model():
    r = load_recipe(PretrainRecipe, "recipes/smoke.yaml")
    torch.manual_seed(0)
    return build_model(r).cuda()


def test_bf16_step_is_finite_and_close_to_fp32():
    m = _model()
    views = [torch.randn(16, 3, 64, 64, device="cuda") for _ in range(2)]
    mod = torch.arange(16, device="cuda") % 5
    s = StepSchedule(0.04, 1.0, 0.5, 0.1)
    with torch.no_grad():
        l32, _ = m.forward_train(views, [], mod, s)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            l16, _ = m.forward_train(views, [], mod, s)
    assert torch.isfinite(l16)
    assert abs(l16.item() - l32.item()) < 0.05 * abs(l32.item()) + 0.05


def test_fused_adamw_skips_on_found_inf_on_cuda():
    p = torch.nn.Parameter(torch.randn(10, device="cuda"))
    opt = torch.optim.AdamW([p], fused=True)
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    opt.found_inf, opt.grad_scale = torch.ones((), device="cuda"), None
    opt.step()
    assert torch.equal(before, p.detach())
    opt.found_inf = torch.zeros((), device="cuda")
    opt.step()
    assert not torch.equal(before, p.detach())

"""Issue 28.7: k experts per modality, a learned top-1 gate inside each block."""

import torch
import torch.nn.functional as F

from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.midol import MIDoL, StepSchedule
from midol_cli.models.moe import MoEProjector, projector_size
from tests.conftest import TINY_SWIN


def _proj(k, seed=0, **kw):
    torch.manual_seed(seed)
    return MoEProjector(16, 3, hidden_dim=8, bottleneck_dim=4, n_prototypes=6, n_layers=3,
                        experts_per_modality=k, **kw)


def _reference(proj, h):
    """One expert per block, written out: the formula of the projector before issue 28.7."""
    x = h.unsqueeze(0).expand(proj.n_experts, -1, -1)
    for i, layer in enumerate(proj.layers):
        x = torch.baddbmm(layer.bias, x, layer.weight)
        x = F.gelu(x) if i < len(proj.layers) - 1 else x
    z = F.normalize(x, dim=-1, eps=1e-6)
    return torch.bmm(z, F.normalize(proj.prototypes, dim=-1, eps=1e-6).transpose(1, 2)).transpose(0, 1)


def test_k1_is_one_expert_per_block_bit_for_bit():
    proj, h = _proj(1), torch.randn(5, 16)
    out = proj(h)
    assert torch.equal(out.scores, _reference(proj, h)) and out.gate_logits is None
    assert not any(n.startswith("gate") for n in proj.state_dict())
    assert sum(p.numel() for p in proj.parameters()) == projector_size(16, 3, 8, 4, 6, 3)


def test_k2_shapes_and_the_forward_value_is_the_chosen_expert_s():
    proj, h = _proj(2), torch.randn(7, 16)
    out = proj(h)
    assert out.scores.shape == (7, 3, 6) and out.emb.shape == (7, 3, 4) and out.gate_logits.shape == (7, 3, 2)
    assert sum(p.numel() for p in proj.parameters()) == projector_size(16, 3, 8, 4, 6, 3, 2)
    choice = out.gate_logits.argmax(-1)  # [B, K]
    x = h.unsqueeze(0).expand(6, -1, -1)
    for i, layer in enumerate(proj.layers):
        x = torch.baddbmm(layer.bias, x, layer.weight)
        x = F.gelu(x) if i < len(proj.layers) - 1 else x
    z = F.normalize(x, dim=-1, eps=1e-6).view(3, 2, 7, 4)
    for b in range(7):
        for blk in range(3):
            assert torch.allclose(out.emb[b, blk], z[blk, choice[b, blk], b], atol=1e-6)


def test_gradient_reaches_every_expert_and_the_gate_over_a_batch():
    proj = _proj(2)
    out = proj(torch.randn(32, 16))
    assert len(set(out.gate_logits.argmax(-1).flatten().tolist())) == 2  # both experts chosen somewhere
    (out.scores * torch.randn_like(out.scores)).sum().backward()
    for layer in proj.layers:
        assert all(layer.weight.grad[e].abs().sum() > 0 for e in range(6))
    assert proj.gate.weight.grad.abs().sum() > 0


def test_rebuilt_from_its_state_dict():
    proj = _proj(2, n_route=4)
    again = MoEProjector.from_state_dict(proj.state_dict())
    h = torch.randn(3, 16)
    assert again.experts_per_modality == 2 and again.n_route == 4
    assert torch.equal(again(h).scores, proj(h).scores)


def test_midol_with_two_experts_per_modality_trains_every_parameter():
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN))
    m = MIDoL(enc, 3, hidden_dim=32, bottleneck_dim=16, n_prototypes=12, n_layers=3, experts_per_modality=2)
    torch.manual_seed(1)
    views, mod = [torch.randn(12, 3, 64, 64) for _ in range(2)], torch.arange(12) % 3
    loss, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 1.0, 0.1))
    loss.backward()
    m.after_step()
    assert torch.isfinite(loss) and 1.0 <= float(stats["loss_balance"]) <= 2.0
    missing = [n for n, p in m.student.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []

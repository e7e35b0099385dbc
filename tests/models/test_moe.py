import torch

from midol_cli.models.moe import MoEProjector


def test_shapes_and_normalisation():
    proj = MoEProjector(32, 3, hidden_dim=16, bottleneck_dim=8, n_prototypes=10, n_layers=3)
    out = proj(torch.randn(5, 32))
    assert out.scores.shape == (5, 3, 10)
    assert out.emb.shape == (5, 3, 8)
    assert out.router_logits.shape == (5, 3)
    assert out.joint.shape == (5, 30)
    assert torch.allclose(out.emb.norm(dim=-1), torch.ones(5, 3), atol=1e-5)
    assert out.scores.abs().max() <= 1 + 1e-5  # cosine scores


def test_prototype_norm_is_fixed():
    torch.manual_seed(0)
    proj = MoEProjector(16, 2, hidden_dim=8, bottleneck_dim=4, n_prototypes=6, n_layers=2)
    h = torch.randn(3, 16)
    a = proj(h).scores
    with torch.no_grad():
        proj.prototypes.mul_(7.0)  # a learnable scale would sharpen the scores; a fixed norm ignores it
    assert torch.allclose(a, proj(h).scores, atol=1e-6)


def test_experts_are_independent():
    torch.manual_seed(0)
    proj = MoEProjector(16, 3, hidden_dim=8, bottleneck_dim=4, n_prototypes=6, n_layers=3)
    h = torch.randn(4, 16)
    out = proj(h)
    out.scores[:, 1].sum().backward()
    for layer in proj.layers:
        g = layer.weight.grad
        assert g[1].abs().sum() > 0
        assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0

import math

import torch

from midol_cli.losses.inter import entropy, inter_modality_loss


def _peaked(b_idx_block, b_idx_proto, k, p, strength=50.0):
    """Scores [B, K, P] peaked at (block, proto) per sample; temperature 1 makes softmax ~one-hot."""
    s = torch.zeros(len(b_idx_block), k, p)
    for i, (blk, pr) in enumerate(zip(b_idx_block, b_idx_proto, strict=True)):
        s[i, blk, pr] = strength
    return s


def test_separated_uniform_batch_reaches_analytic_minimum():
    k, p = 3, 4
    blocks = [i // p for i in range(k * p)]
    protos = [i % p for i in range(k * p)]
    s = _peaked(blocks, protos, k, p)
    out = inter_modality_loss(s, torch.tensor(blocks), temperature=1.0)
    assert out["specificity"].item() < 1e-3
    assert math.isclose(out["marginal_entropy"].item(), math.log(k * p), rel_tol=1e-3)
    assert math.isclose(out["loss"].item(), -math.log(k * p), abs_tol=2e-3)
    assert math.isclose(out["block_entropy"].item(), math.log(k), rel_tol=1e-3)


def test_collapsed_batch_is_penalised():
    k, p = 3, 4
    blocks = [i // p for i in range(k * p)]
    good = inter_modality_loss(
        _peaked(blocks, [i % p for i in range(k * p)], k, p), torch.tensor(blocks), 1.0
    )
    # every image on one prototype of its own block: specific but not dispersed inside blocks
    coll = inter_modality_loss(_peaked(blocks, [0] * (k * p), k, p), torch.tensor(blocks), 1.0)
    assert coll["loss"] > good["loss"] + 1.0
    assert math.isclose(coll["marginal_entropy"].item(), math.log(k), rel_tol=1e-3)
    # every image in the wrong block: large specificity term
    wrong = inter_modality_loss(
        _peaked([(b + 1) % k for b in blocks], [0] * (k * p), k, p), torch.tensor(blocks), 1.0
    )
    assert wrong["specificity"] > 10


def test_entropy_decomposition_and_temperature():
    torch.manual_seed(0)
    s = torch.randn(16, 3, 8)
    e = torch.randint(0, 3, (16,))
    out = inter_modality_loss(s, e, temperature=0.1)
    q = torch.softmax(s.flatten(1) / 0.1, -1)
    pbar = q.mean(0)
    blk = pbar.view(3, 8).sum(-1)
    within = sum(blk[i] * entropy(pbar.view(3, 8)[i] / blk[i]) for i in range(3))
    assert torch.allclose(out["marginal_entropy"], entropy(blk) + within, atol=1e-5)
    # higher temperature flattens q: marginal entropy rises
    hot = inter_modality_loss(s, e, temperature=10.0)
    assert hot["marginal_entropy"] > out["marginal_entropy"]


def test_gradient_flows_and_is_finite():
    s = torch.randn(8, 2, 5, requires_grad=True)
    out = inter_modality_loss(s, torch.tensor([0, 1] * 4), 0.1)
    out["loss"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0

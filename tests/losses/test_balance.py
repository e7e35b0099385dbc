"""The load-balancing term of k experts per modality (issue 28.7): Switch's k * sum_j f_j P_j per block."""

import math

import torch

from midol_cli.losses.balance import load_balance_loss


def test_uniform_routing_gives_one():
    # block 0: two images, one per expert, mean probability (0.5, 0.5); block 1: the same
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]],
                           [[0.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]])
    out = load_balance_loss(logits, torch.tensor([0, 0, 1, 1]))
    assert math.isclose(out["loss"].item(), 1.0, rel_tol=1e-6)
    assert math.isclose(out["max_frac"].item(), 0.5)


def test_degenerate_routing_gives_k():
    k = 3
    logits = torch.zeros(5, 2, k)
    logits[..., 1] = 100.0  # every image of every block to expert 1 with probability ~1
    out = load_balance_loss(logits, torch.tensor([0, 1, 0, 1, 1]))
    assert math.isclose(out["loss"].item(), k, rel_tol=1e-5)
    assert out["max_frac"].item() == 1.0


def test_only_an_image_s_own_block_counts_and_empty_blocks_are_skipped():
    logits = torch.zeros(2, 3, 2)
    logits[:, 2] = torch.tensor([50.0, 0.0])  # block 2 degenerate, but no image belongs to it
    logits[0, 0] = torch.tensor([1.0, 0.0])
    logits[1, 0] = torch.tensor([0.0, 1.0])
    out = load_balance_loss(logits, torch.tensor([0, 0]))
    assert math.isclose(out["loss"].item(), 1.0, rel_tol=1e-6)


def test_gradient_lowers_the_overused_expert():
    logits = torch.tensor([[[2.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.5]]], requires_grad=True)
    load_balance_loss(logits, torch.zeros(3).long())["loss"].backward()
    g = logits.grad.sum((0, 1))
    assert g[0] > 0 and g[1] < 0  # descent lowers expert 0 (2 of 3 images), raises expert 1

import math

import torch
import torch.nn.functional as F

from midol_cli.losses.intra_contrastive import IntraContrastiveLoss


def test_negatives_come_only_from_the_same_modality():
    torch.manual_seed(0)
    loss = IntraContrastiveLoss(2, 8, queue_size=0, temperature=0.1)
    s = F.normalize(torch.randn(2, 6, 8), dim=-1)
    t = F.normalize(torch.randn(2, 6, 8), dim=-1)
    e = torch.tensor([0, 0, 0, 1, 1, 1])

    def grad_of_queries(keys):
        q = s.clone().requires_grad_(True)
        loss(q, keys, e)["loss"].backward()
        return q.grad

    # make modality 1's teacher keys identical to modality 0's queries: the hardest possible
    # cross-modality negatives. Modality-0 queries must not notice; modality-1 queries must.
    t2 = t.clone()
    t2[:, 3:] = s[:, :3].flip(0)
    g1, g2 = grad_of_queries(t), grad_of_queries(t2)
    assert torch.allclose(g1[:, :3], g2[:, :3], atol=1e-6)
    assert not torch.allclose(g1[:, 3:], g2[:, 3:], atol=1e-6)


def test_known_answer_orthogonal_keys():
    d = 4
    loss = IntraContrastiveLoss(1, d, queue_size=0, temperature=1.0)
    eye = torch.eye(d)[:2]  # two images, orthogonal embeddings
    s = torch.stack([eye, eye])
    out = loss(s, s.clone(), torch.zeros(2, dtype=torch.long))
    # logits per query: [1, 0] -> CE = log(1 + e^-1)
    assert math.isclose(out["loss"].item(), math.log(1 + math.exp(-1)), rel_tol=1e-5)


def test_single_image_of_a_modality_has_zero_loss_without_queue():
    loss = IntraContrastiveLoss(2, 4, queue_size=0)
    s = F.normalize(torch.randn(2, 3, 4), dim=-1)
    e = torch.tensor([0, 1, 1])
    out0 = loss(s[:, :1], s[:, :1].clone(), e[:1])["loss"]
    assert out0.abs().item() < 1e-6


def test_queue_fills_per_modality_and_adds_negatives():
    torch.manual_seed(0)
    loss = IntraContrastiveLoss(2, 4, queue_size=3, temperature=0.1)
    t = F.normalize(torch.randn(2, 4, 4), dim=-1)
    e = torch.tensor([0, 0, 1, 0])
    before = loss(t, t.clone(), e)["loss"]
    loss.enqueue(t, e)
    assert loss.queue_len.tolist() == [3, 1]
    assert torch.allclose(loss.queue[1, 0], t[0, 2])
    after = loss(t, t.clone(), e)["loss"]
    assert after > before  # more (and here identical) negatives make the task harder


def test_own_earlier_keys_in_the_queue_are_not_negatives():
    torch.manual_seed(0)
    loss = IntraContrastiveLoss(1, 8, queue_size=16, temperature=0.1)
    s = F.normalize(torch.randn(2, 1, 8), dim=-1)  # one image: its only candidates are its own keys
    e = torch.zeros(1, dtype=torch.long)
    ids = torch.tensor([10])
    loss.enqueue(s, e, ids)
    loss.enqueue(s, e, ids)  # the queue now holds only this image's earlier keys
    assert loss(s, s.clone(), e, ids)["loss"].abs() < 1e-6  # masked: no negative at all
    assert loss(s, s.clone(), e)["loss"] > 0.5  # unmasked: the image is pushed away from itself


def test_duplicate_image_in_batch_is_not_a_negative():
    torch.manual_seed(0)
    loss = IntraContrastiveLoss(1, 8, queue_size=0, temperature=0.1)
    s = F.normalize(torch.randn(2, 3, 8), dim=-1)
    s[:, 2] = s[:, 0]  # the same image drawn twice
    e = torch.zeros(3, dtype=torch.long)
    masked = loss(s, s.clone(), e, torch.tensor([1, 2, 1]))["loss"]
    unmasked = loss(s, s.clone(), e, torch.tensor([1, 2, 3]))["loss"]
    assert masked < unmasked


def test_bf16_autocast_masks_without_overflow_and_matches_fp32():
    """Under bf16 autocast the logits come out of the matmuls in bf16; masking them with float32's minimum
    overflowed ("value cannot be converted to type c10::BFloat16"), so a contrastive recipe could not
    pre-train in bf16 (found by benchmarks/peers_pretrain.py --precision bf16, issue 30)."""
    torch.manual_seed(0)
    loss = IntraContrastiveLoss(2, 8, queue_size=4, temperature=0.1)
    s = F.normalize(torch.randn(2, 6, 8), dim=-1)
    t = F.normalize(torch.randn(2, 6, 8), dim=-1)
    e = torch.tensor([0, 0, 0, 1, 1, 1])
    loss.enqueue(t, e)
    ref = loss(s, t, e, sample_key=torch.arange(6))["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(s, t, e, sample_key=torch.arange(6))["loss"]
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert math.isclose(out.item(), ref.item(), rel_tol=0.02)

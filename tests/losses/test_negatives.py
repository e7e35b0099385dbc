"""``loss.negatives`` (issue 28.2): which images are a query's negatives, with known answers."""

import math

import torch

from midol_cli.losses.intra_contrastive import IntraContrastiveLoss
from midol_cli.losses.intra_distill import IntraDistillLoss


def _orthogonal(b=4, d=4):
    e = torch.eye(d)[:b]
    return torch.stack([e, e])  # two identical views [2, B, d]


def test_shared_space_modality_vs_all_known_answer():
    s = _orthogonal()
    modality = torch.tensor([0, 0, 1, 1])
    # modality: one bank per modality (what MIDoL passes for a shared expert): 1 negative per query
    by_mod = IntraContrastiveLoss(2, 4, queue_size=0, temperature=1.0)(s, s.clone(), modality)["loss"]
    assert math.isclose(by_mod.item(), math.log(1 + math.exp(-1)), rel_tol=1e-5)
    # all: one bank, every other image of the batch a negative: 3 per query
    every = IntraContrastiveLoss(1, 4, queue_size=0, temperature=1.0)(s, s.clone(), torch.zeros(4).long())
    assert math.isclose(every["loss"].item(), math.log(1 + 3 * math.exp(-1)), rel_tol=1e-5)


def test_all_with_experts_scores_every_image_in_the_query_s_space():
    expert = torch.tensor([0, 1])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.stack([q, q])  # [2 views, B=2, d=2]
    keys = torch.zeros(2, 2, 2, 2)  # [Vt, B, K, d]
    keys[:, 0, 0], keys[:, 1, 0] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # space 0
    keys[:, 0, 1], keys[:, 1, 1] = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])  # space 1
    loss = IntraContrastiveLoss(2, 2, queue_size=0, temperature=1.0)
    own = torch.stack([keys[:, 0, 0], keys[:, 1, 1]], 1)  # each image's own space [Vt, B, d]
    assert loss(s, own, expert)["loss"].abs().item() < 1e-6  # modality: no negative at all
    out = loss(s, keys, expert, group=torch.zeros(2).long())["loss"]
    # query 0 (space 0): logits [1, 0]; query 1 (space 1): logits [q1.k0^1, q1.k1^1] = [1, 1]
    expect = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert math.isclose(out.item(), expect, rel_tol=1e-5)


def test_all_with_experts_queues_every_image_in_every_space():
    keys = torch.nn.functional.normalize(torch.randn(2, 3, 2, 4), dim=-1)
    loss = IntraContrastiveLoss(2, 4, queue_size=5)
    loss.enqueue(keys, torch.tensor([0, 0, 1]))
    assert loss.queue_len.tolist() == [3, 3]
    assert torch.allclose(loss.queue[1, :3], keys[0, :, 1])


def test_distill_centre_follows_every_image_of_a_block_with_all():
    c = IntraDistillLoss(2, 3, center_momentum=0.0)
    t = torch.arange(2 * 2 * 2 * 3, dtype=torch.float).view(2, 2, 2, 3)  # [Vt, B, K, P]
    c.update_center(t, torch.tensor([0, 0]))
    assert torch.allclose(c.center, t.mean((0, 1)))  # block 1 follows both images, though neither is its own

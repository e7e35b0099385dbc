import math

import torch

from midol_cli.losses.intra_distill import IntraDistillLoss


def test_uniform_teacher_gives_log_p_for_uniform_student():
    p = 16
    loss = IntraDistillLoss(1, p, student_temp=0.1)
    s = torch.zeros(2, 4, p)
    out = loss(s, torch.zeros(2, 4, p), torch.zeros(4, dtype=torch.long), teacher_temp=0.04)
    assert math.isclose(out["loss"].item(), math.log(p), rel_tol=1e-5)


def test_known_answer_cross_entropy_of_other_view():
    p = 4
    loss = IntraDistillLoss(1, p, student_temp=1.0)
    t = torch.tensor([[[2.0, 0.0, 0.0, 0.0]], [[0.0, 3.0, 0.0, 0.0]]])  # [Vt=2, B=1, P]
    s = torch.tensor([[[0.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    out = loss(s, t, torch.zeros(1, dtype=torch.long), teacher_temp=1.0)
    tp = torch.softmax(t, -1)
    lp = torch.log_softmax(s, -1)
    expect = (-(tp[0] * lp[1]).sum() - (tp[1] * lp[0]).sum()) / 2  # pairs (a=0,b=1), (a=1,b=0) only
    assert torch.allclose(out["loss"], expect)


def test_symmetric_in_swapping_views():
    torch.manual_seed(0)
    loss = IntraDistillLoss(2, 8)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    e = torch.randint(0, 2, (5,))
    a = loss(s, t, e, 0.04)["loss"]
    b = loss(s.flip(0), t.flip(0), e, 0.04)["loss"]
    assert torch.allclose(a, b)


def test_sharper_teacher_temperature_lowers_target_entropy():
    torch.manual_seed(0)
    loss = IntraDistillLoss(1, 8)
    t = torch.randn(2, 6, 8)
    e = torch.zeros(6, dtype=torch.long)
    h = lambda q: -(q * q.clamp_min(1e-30).log()).sum(-1).mean()  # noqa: E731
    assert h(loss.teacher_probs(t, e, 0.02)) < h(loss.teacher_probs(t, e, 0.2))


def test_centre_update_is_per_expert_ema():
    loss = IntraDistillLoss(3, 2, center_momentum=0.5)
    t = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[3.0, 5.0], [7.0, 9.0]]])  # [V=2, B=2, P=2]
    e = torch.tensor([0, 2])
    loss.update_center(t, e)
    assert torch.allclose(loss.center[0], torch.tensor([1.0, 2.0]))  # 0.5*0 + 0.5*mean([1,3],[3,5])
    assert torch.allclose(loss.center[2], torch.tensor([3.0, 4.0]))
    assert torch.equal(loss.center[1], torch.zeros(2))  # no sample routed: unchanged
    # centring removes a per-expert offset from the teacher's target
    assert torch.allclose(
        loss.teacher_probs(t + 100 * 0, e, 1.0)[0, 0], torch.softmax(t[0, 0] - loss.center[0], -1)
    )

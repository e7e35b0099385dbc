import copy

import pytest
import torch

from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.midol import MIDoL, StepSchedule, cosine_momentum
from tests.conftest import TINY_SWIN


def _model(intra="distill", routing="label", k=3):
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN))
    return MIDoL(enc, k, hidden_dim=32, bottleneck_dim=16, n_prototypes=12, n_layers=3, intra=intra,
                 routing=routing, queue_size=8)


def _batch(b=6, k=3):
    torch.manual_seed(1)
    return [torch.randn(b, 3, 64, 64) for _ in range(2)], torch.arange(b) % k


@pytest.mark.parametrize("intra", ["distill", "contrastive"])
def test_every_student_parameter_gets_a_gradient_and_teacher_none(intra):
    m = _model(intra)
    views, mod = _batch()
    loss, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 1.0, 0.1))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [
        n
        for n, p in m.student.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert missing == []
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    for key in ("loss_intra", "loss_inter", "loss_route", "teacher_entropy", "emb_std", "expert_router_acc"):
        assert key in stats


def test_ema_update_matches_formula():
    m = _model()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p))
    t0 = [p.clone() for p in m.teacher.parameters()]
    s0 = [p.clone() for p in m.student.parameters()]
    m.update_teacher(0.9)
    for t, a, s in zip(m.teacher.parameters(), t0, s0, strict=True):
        assert torch.allclose(t, 0.9 * a + 0.1 * s, atol=1e-6)


def test_label_routing_uses_each_samples_own_expert():
    m = _model()
    views, _ = _batch()
    mod = torch.zeros(6, dtype=torch.long)  # every sample is modality 0
    loss, _ = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 0.0, 0.0))
    loss.backward()
    g = m.student.projector.layers[0].weight.grad
    # intra only (w_inter = w_route = 0 keeps the graph but scales to 0): only expert 0 learns
    assert g[0].abs().sum() > 0
    assert g[1].abs().sum() == 0 and g[2].abs().sum() == 0


def test_learned_routing_follows_teacher_router():
    m = _model(routing="learned")
    with torch.no_grad():
        m.teacher.projector.router.bias.copy_(torch.tensor([0.0, 100.0, 0.0]))
    views, mod = _batch()
    loss, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 0.0, 0.0))
    # the teacher router sends everything to expert 1
    assert stats["expert_count"].tolist() == [0.0, 6.0, 0.0]


def test_shared_expert_ablation_runs():
    m = _model(k=1)
    views, mod = _batch()
    loss, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 1.0, 0.1))
    assert torch.isfinite(loss)
    assert stats["inter_specificity"].abs() < 1e-5  # one block holds all the mass


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert 0.996 < cosine_momentum(50, 100, 0.996) < 1.0


def test_after_step_updates_centre():
    m = _model()
    views, mod = _batch()
    before = copy.deepcopy(m.intra.center)
    m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 1.0, 0.1))
    m.after_step()
    assert not torch.equal(before, m.intra.center)


def test_local_views_with_a_size_flexible_encoder():
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(arch="test_vit", img_size=64, arch_kwargs={"dynamic_img_size": True}))
    m = MIDoL(enc, 2, hidden_dim=16, bottleneck_dim=8, n_prototypes=6, n_layers=2)
    g = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    loc = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    loss, stats = m.forward_train(g, loc, torch.tensor([0, 1, 0, 1]), StepSchedule(0.04, 1.0, 1.0, 0.1))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in m.student.parameters())


SMALL_RESNET = dict(channels=(8, 16, 32, 64), stem_width=8)


def test_teacher_batch_norms_use_batch_statistics_and_follow_the_teacher():
    """The EMA moves parameters only: an eval-mode teacher would normalise with its initial running
    statistics forever. Its batch norms run in batch mode while training, so their running averages
    track the teacher's own features (what the exported encoder uses at evaluation)."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(arch="resnet10t", img_size=32, arch_kwargs=SMALL_RESNET))
    m = MIDoL(enc, 2, hidden_dim=16, bottleneck_dim=8, n_prototypes=8, n_layers=2, intra="contrastive",
              queue_size=4)
    m.train()
    bn = [x for x in m.teacher.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bn and all(x.training for x in bn)
    assert not m.teacher.training  # everything else (drop-path, dropout) stays in eval mode
    views = [torch.rand(8, 3, 32, 32) * 4 + 2 for _ in range(2)]  # far from N(0, 1): stats must move
    before = bn[0].running_mean.clone()
    m.forward_train(views, [], torch.arange(8) % 2, StepSchedule(0.04, 1.0, 0.1, 0.1))
    assert not torch.allclose(bn[0].running_mean, before)
    m.eval()
    assert all(not x.training for x in bn)


def test_encoder_diagnostics_watch_the_pooled_features():
    m = _model("contrastive")
    views, mod = _batch(b=12)
    _, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 1.0, 1.0, 0.1))
    assert stats["enc_spread"].shape == (3,) and stats["enc_rank"].shape == (3,)
    # enc_rank is a fraction of the batch's maximum rank: in (0, 1].
    assert (
        (stats["enc_spread"] > 0).all() and (stats["enc_rank"] > 0).all() and (stats["enc_rank"] <= 1).all()
    )
    # A collapsed representation (one direction for every image) reads ~0 spread and rank ~1.
    same = torch.zeros(12, m.student.encoder.num_features)
    same[:, 0] = 1.0
    collapsed = m._encoder_stats(same, mod)
    assert torch.allclose(collapsed["enc_spread"], torch.zeros(3), atol=1e-6)

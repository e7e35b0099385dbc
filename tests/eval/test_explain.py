"""Explanation maps (issue 29.5): Grad-CAM and attention rollout known answers, timm parity, and a tiny
CNN whose Grad-CAM finds the planted patch that decides its class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from midol_cli.errors import UsageError
from midol_cli.eval.explain import (
    _vit_attention,
    attention_rollout,
    classifier_cam,
    explain,
    grad_cam,
    mass_in,
    pick_examples,
    resolve_method,
    rollout,
)


def test_grad_cam_of_a_logit_linear_in_one_channel_is_that_channel_positive_part():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 4, 5, requires_grad=True)
    score = 2.5 * fmap[:, 1].mean((1, 2))  # alpha_1 = 2.5 / (4 * 5), the other channels 0
    torch.testing.assert_close(grad_cam(fmap, score), torch.relu(fmap[:, 1].detach()) * 2.5 / 20)
    score = 2.0 * fmap[:, 0].mean((1, 2)) - 3.0 * fmap[:, 2].mean((1, 2))
    expect = torch.relu((2.0 * fmap[:, 0] - 3.0 * fmap[:, 2]).detach() / 20)
    torch.testing.assert_close(grad_cam(fmap, score), expect)


class _Fixed(nn.Module):
    """An 'encoder' whose feature map is a fixed tensor (NCHW or NHWC) and whose head pools its mean."""

    def __init__(self, fmap: torch.Tensor, nhwc: bool) -> None:
        super().__init__()
        self.fmap, self.nhwc = fmap, nhwc
        self.output_fmt = "NHWC" if nhwc else "NCHW"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fmap.permute(0, 2, 3, 1) if self.nhwc else self.fmap

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f.mean((1, 2)) if self.nhwc else f.mean((2, 3))


@pytest.mark.parametrize("nhwc", [False, True])
def test_classifier_cam_through_encoder_and_linear_head(nhwc):
    torch.manual_seed(1)
    fmap = torch.randn(1, 4, 3, 3)
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1, 2] = 1.5  # class 1's logit is 1.5 x the mean of channel 2
    cams, logits = classifier_cam(_Fixed(fmap, nhwc), head, torch.zeros(1, 3, 6, 6), torch.tensor([1]))
    torch.testing.assert_close(cams, torch.relu(fmap[:, 2]) * 1.5 / 9)
    assert logits.shape == (1, 2)


def test_rollout_known_answers():
    a1 = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]])[None, None]  # [1, 1, 3, 3]
    torch.testing.assert_close(rollout([a1]), 0.5 * a1[0, 0, 0, 1:][None])  # 0.5 A + 0.5 I, class row
    a2 = torch.full((1, 2, 3, 3), 1 / 3)  # two heads, uniform
    r1 = 0.5 * a1[0, 0] + 0.5 * torch.eye(3)
    r2 = 0.5 * a2[0].mean(0) + 0.5 * torch.eye(3)
    torch.testing.assert_close(rollout([a1, a2]), (r2 @ r1)[0, 1:][None])
    torch.testing.assert_close(rollout([a1], prefix=0), r1.mean(0)[None])  # no class token: mean row


def test_recomputed_attention_matches_timm_and_rollout_has_the_grid():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    blk = vit.blocks[0].attn
    blk.fused_attn = False  # timm then forms the probabilities and passes them through attn_drop
    seen: list[torch.Tensor] = []
    blk.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out))
    tokens: list[torch.Tensor] = []
    blk.register_forward_pre_hook(lambda m, args: tokens.append(args[0]))
    with torch.no_grad():
        vit.forward_features(x)
        torch.testing.assert_close(_vit_attention(blk, tokens[0]), seen[0])
    maps = attention_rollout(vit, x)
    assert maps.shape == (2, 4, 4) and (maps >= 0).all()
    assert resolve_method("auto", vit) == "rollout"
    with pytest.raises(UsageError, match="rollout"):
        resolve_method("gradcam", vit)
    up, method = explain(vit, None, x)  # class-agnostic: no head needed
    assert method == "rollout" and up.shape == (2, 64, 64) and up.amax() == pytest.approx(1.0)


def test_pick_examples_orders_by_confidence():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3], [0.05, 0.95]])
    y = np.array([0, 0, 1, 1, 0])
    assert pick_examples(y, probs, 2) == [(0, "correct"), (2, "correct"), (4, "wrong"), (3, "wrong")]


S, P = 64, 32  # 64 px images; the planted square covers a quarter of the image
CORNERS = [(0, 0), (0, S - P), (S - P, 0), (S - P, S - P), (S // 4, S // 4)]


def _planted(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class 1 has a red square at one of five places (class 0 none). Returns (x, y, where
    the square is or would be ``[N, S, S]``)."""
    x = torch.rand(n, 3, S, S, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    region = torch.zeros(n, S, S, dtype=torch.bool)
    for i in range(n):
        r, c = CORNERS[int(torch.randint(0, len(CORNERS), (1,), generator=g))]
        region[i, r : r + P, c : c + P] = True
        if y[i]:
            x[i, :, r : r + P, c : c + P] = torch.tensor([1.0, 0.2, 0.2])[:, None, None]
    return (x - 0.5) / 0.25, y, region


def test_grad_cam_of_a_trained_cnn_lands_on_the_planted_patch():
    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from midol_cli.models.heads import Classifier, ClassifierHead

    torch.manual_seed(0)
    # timm's tiny test ResNet at output stride 8: an 8 x 8 last feature map at 64 px
    enc = build_encoder(EncoderSpec(arch="test_resnet", img_size=S, arch_kwargs={"output_stride": 8}))
    model = Classifier(enc, ClassifierHead(enc.num_features, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        x, y, _ = _planted(g, 16)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, region = _planted(torch.Generator().manual_seed(1), 32)
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9  # it learned the cue
    pos = y == 1
    target = torch.ones(int(pos.sum()), dtype=torch.long)
    maps, method = explain(model.encoder, model.head, x[pos], "auto", target)
    assert method == "gradcam" and maps.shape == (int(pos.sum()), S, S)
    share = mass_in(maps, region[pos])
    assert share.mean() >= 0.6, share  # a uniform map would put 25% there
    assert mass_in(torch.ones(1, S, S), region[0]).item() == pytest.approx(0.25)

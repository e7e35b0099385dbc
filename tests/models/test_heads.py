"""The classification head and its losses (models/heads.py): known answers against hand computation,
and gradient flow through a frozen or trainable encoder."""

from __future__ import annotations

import math

import numpy as np
import torch

from midol_cli.models.heads import (
    Classifier,
    ClassifierHead,
    balanced_class_weights,
    classification_loss,
    predict_proba,
)
from tests.conftest import tiny_encoder


def test_cross_entropy_with_smoothing_matches_hand_computation():
    torch.manual_seed(0)
    logits, y, eps = torch.randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 0]), 0.1
    logp = torch.log_softmax(logits, 1)
    hand = ((1 - eps) * -logp[torch.arange(6), y] + eps * -logp.mean(1)).mean()
    assert torch.allclose(classification_loss(logits, y, "multiclass", eps), hand, atol=1e-6)
    # class weights: torch's weighted mean, sum_i w_yi * l_i / sum_i w_yi
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    li = -logp[torch.arange(6), y]
    assert torch.allclose(classification_loss(logits, y, "ordinal", 0.0, w),
                          (w[y] * li).sum() / w[y].sum(), atol=1e-6)


def test_bce_multilabel_matches_hand_computation_and_ignores_smoothing():
    torch.manual_seed(1)
    logits = torch.randn(5, 3)
    t = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.int8)
    s = torch.sigmoid(logits)
    tf = t.float()
    hand = -(tf * s.log() + (1 - tf) * (1 - s).log()).mean()
    assert torch.allclose(classification_loss(logits, t, "multilabel", 0.3), hand, atol=1e-6)
    pw = torch.tensor([2.0, 1.0, 0.5])
    hand_w = -(pw * tf * s.log() + (1 - tf) * (1 - s).log()).mean()
    assert torch.allclose(classification_loss(logits, t, "multilabel", 0.0, pw), hand_w, atol=1e-6)


def test_predict_proba_softmax_rows_sum_to_one_sigmoid_for_multilabel():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    p = predict_proba(logits, "multiclass")
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert p[0].argmax() == 0 and torch.allclose(p[1], torch.full((3,), 1 / 3))
    q = predict_proba(logits, "multilabel")
    assert torch.allclose(q, torch.sigmoid(logits)) and not torch.allclose(q.sum(1), torch.ones(2))


def test_balanced_class_weights_known_answers():
    w = balanced_class_weights([0, 0, 0, 1], 3, "multiclass")
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))
    pw = balanced_class_weights(np.array([[1, 0], [1, 0], [0, 0], [1, 0]]), 2, "multilabel")
    assert torch.allclose(pw, torch.tensor([1 / 3, 1.0]))


def test_frozen_encoder_gets_no_gradient_but_head_does():
    enc = tiny_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    clf = Classifier(enc, ClassifierHead(enc.num_features, 3), freeze_encoder=True).train()
    assert not enc.training  # a linear probe never runs the encoder in train mode
    loss = classification_loss(clf(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]), "multiclass", 0.1)
    loss.backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in clf.head.parameters())
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_full_finetune_gives_every_encoder_parameter_a_gradient():
    enc = tiny_encoder()
    clf = Classifier(enc, ClassifierHead(enc.num_features, 3), freeze_encoder=False).train()
    assert enc.training
    loss = classification_loss(clf(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]), "multiclass", 0.1)
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_head_starts_near_zero_so_initial_loss_is_log_c():
    head = ClassifierHead(64, 5)
    assert float(head.fc.weight.detach().std()) < 1e-4 and float(head.fc.bias.detach().abs().sum()) == 0.0
    loss = classification_loss(head(torch.randn(16, 64)), torch.randint(0, 5, (16,)), "multiclass")
    assert abs(float(loss.detach()) - math.log(5)) < 1e-3

"""Gated attention MIL (eval/mil.py): the known answer of issue 27 on planted bags, padding, determinism."""

import numpy as np
import pytest

from midol_cli.eval.linear import linear_probe
from midol_cli.eval.metrics import classification_metrics
from midol_cli.eval.mil import Bags, MILRecipe, fit_abmil, planted_bags

CLASSES = ("negative", "positive")


def _auroc(y, p):
    return classification_metrics(y, p, "binary", CLASSES)["auroc"]


def test_abmil_finds_rare_planted_instances_that_mean_pooling_misses():
    rng = np.random.default_rng(0)
    tr, y_tr, _ = planted_bags(240, rng)
    va, y_va, _ = planted_bags(80, rng)
    te, y_te, planted = planted_bags(160, rng)
    # 1-3% of a positive bag's instances are planted
    shares = [m.mean() for m, y in zip(planted, y_te, strict=True) if y]
    assert 0.005 <= min(shares) and max(shares) <= 0.035
    model = fit_abmil(Bags.from_list(tr), y_tr, Bags.from_list(va), y_va, "binary", 2, seed=0)
    probs, attention = model.predict(Bags.from_list(te))
    assert _auroc(y_te, probs) >= 0.95

    def mean(bags):
        return np.stack([b.mean(0) for b in bags])

    p_mean, _ = linear_probe(mean(tr), y_tr, mean(va), y_va, mean(te), "binary", 2)
    assert _auroc(y_te, p_mean) < 0.75
    for a in attention:
        assert a.min() >= 0 and abs(a.sum() - 1) < 1e-4
    mass = [a[m].sum() for a, m, y in zip(attention, planted, y_te, strict=True) if y]
    assert np.mean(mass) >= 0.5 and np.median(mass) >= 0.5


def _small(seed=0, n=24, classes=2):
    rng = np.random.default_rng(seed)
    bags = [rng.normal(size=(int(rng.integers(3, 9)), 8)).astype(np.float32) for _ in range(n)]
    y = np.arange(n) % classes
    for b, c in zip(bags, y, strict=True):
        b[0, 0] += 3.0 * c
    return Bags.from_list(bags), y


def test_same_seed_same_model_and_callers_random_state_untouched():
    import torch

    bags, y = _small()
    recipe = MILRecipe(max_epochs=3, min_epochs=0)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = fit_abmil(bags, y, bags, y, "binary", 2, recipe=recipe, seed=7).predict(bags)[0]
    after = torch.rand(1)
    b = fit_abmil(bags, y, bags, y, "binary", 2, recipe=recipe, seed=7).predict(bags)[0]
    c = fit_abmil(bags, y, bags, y, "binary", 2, recipe=recipe, seed=8).predict(bags)[0]
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_padding_does_not_change_a_bags_prediction():
    bags, y = _small()
    model = fit_abmil(bags, y, bags, y, "binary", 2, recipe=MILRecipe(max_epochs=2, min_epochs=0))
    together, att = model.predict(bags)  # bags of 3..8 instances padded together
    for i in range(len(bags)):
        alone, att_i = model.predict(Bags.from_list([bags.bag(i)]))
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)
        np.testing.assert_allclose(att_i[0], att[i], atol=1e-5)
        assert len(att[i]) == len(bags.bag(i))


def test_multiclass_softmax_and_every_parameter_learns():
    import torch

    bags, y = _small(classes=3, n=30)
    model = fit_abmil(bags, y, bags, y, "multiclass", 3, recipe=MILRecipe(max_epochs=1, min_epochs=0))
    probs, _ = model.predict(bags)
    assert probs.shape == (30, 3)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    model.module.train()
    model.module.zero_grad()
    logits, a = model.module(x, mask)
    logits.sum().backward()
    assert torch.all(a[1, 3:] == 0)
    for name, p in model.module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_inputs():
    bags, y = _small()
    with pytest.raises(ValueError, match="binary or single-label"):
        fit_abmil(bags, y, bags, y, "multilabel", 2)
    with pytest.raises(ValueError, match="at least one instance"):
        Bags.from_list([np.zeros((0, 4), np.float32)])

"""Issue 28.2: the factorial switches that unconfound no_moe (projector width, negatives, router term)."""

import pytest
import torch

from midol_cli.models.encoder import EncoderSpec, build_encoder
from midol_cli.models.midol import StepSchedule, midol_from_recipe
from midol_cli.recipes import PretrainRecipe, load_recipe
from tests.conftest import TINY_SWIN

TINY = ["projector.hidden_dim=48", "projector.bottleneck_dim=16", "projector.n_prototypes=32",
        "loss.queue_size=8"]
MATCHED = ["projector.shared_expert=true", "projector.match_params=true", "projector.modality_router=true",
           "loss.negatives=modality"]


def _model(*overrides, recipe_file=None):
    recipe = load_recipe(PretrainRecipe, recipe_file, [*TINY, *overrides])
    torch.manual_seed(0)
    return midol_from_recipe(build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN)), recipe)


def _size(m):
    return sum(p.numel() for p in m.student.projector.parameters())


def _batch(b=10, m=5):
    torch.manual_seed(1)
    return [torch.randn(b, 3, 64, 64) for _ in range(2)], torch.arange(b) % m


def test_matched_no_moe_has_midol_s_projector_size_within_2_percent():
    midol, matched, confounded = _model(), _model(*MATCHED), _model("projector.shared_expert=true")
    assert matched.n_experts == 1 and midol.n_experts == 5
    assert abs(_size(matched) - _size(midol)) / _size(midol) < 0.02
    assert _size(confounded) < 0.5 * _size(midol)  # the old no_moe: a fifth of the projector


@pytest.mark.parametrize("extra", [[], ["projector.experts_per_modality=2"], ["projector.n_layers=2"]])
def test_matching_holds_for_other_projectors(extra):
    assert abs(_size(_model(*MATCHED, *extra)) - _size(_model(*extra))) / _size(_model(*extra)) < 0.02


def test_shipped_no_moe_is_the_matched_one_and_the_confounded_one_stays():
    r = load_recipe(PretrainRecipe, "ablation/no_moe")
    assert (r.projector.shared_expert, r.projector.match_params, r.projector.modality_router) == (True,) * 3
    assert r.loss.negatives == "modality" and r.loss.route_detach is False
    old = load_recipe(PretrainRecipe, "ablation/no_moe_confounded")
    assert old.projector.shared_expert and not old.projector.match_params
    assert _model(recipe_file="ablation/no_moe_confounded").negatives == "all"


def _encoder_grad_from_route(*overrides):
    m = _model(*overrides)
    views, mod = _batch()
    loss, stats = m.forward_train(views, [], mod, StepSchedule(0.04, 0.0, 0.0, 1.0))
    loss.backward()
    grads = [p.grad.abs().sum() for p in m.student.encoder.parameters() if p.grad is not None]
    enc = torch.stack(grads).sum()
    router = m.student.projector.router.weight.grad.abs().sum()
    return float(enc), float(router), stats


def test_route_detach_stops_the_router_loss_at_the_encoder():
    enc, router, _ = _encoder_grad_from_route()
    assert enc > 0 and router > 0
    enc, router, _ = _encoder_grad_from_route("loss.route_detach=true")
    assert enc == 0 and router > 0  # the router still learns; the encoder sees none of L_route


def test_matched_no_moe_keeps_the_router_term_the_confounded_one_has_none():
    enc, router, stats = _encoder_grad_from_route(*MATCHED)
    assert enc > 0 and router > 0 and "router_acc" in stats
    enc, router, _ = _encoder_grad_from_route("projector.shared_expert=true")
    assert enc == 0 and router == 0  # a one-class router: its cross-entropy is 0 and trains nothing


@pytest.mark.parametrize("intra", ["contrastive", "distill"])
def test_negatives_choose_the_banks(intra):
    shared = _model("projector.shared_expert=true", "loss.negatives=modality", f"loss.intra={intra}")
    assert shared.negatives == "modality"
    bank = shared.intra.queue if intra == "contrastive" else shared.intra.center
    assert bank.shape[0] == 5  # one per modality in the one shared space
    assert _model("projector.shared_expert=true", f"loss.intra={intra}").negatives == "all"  # the old default
    views, mod = _batch()
    sched = StepSchedule(0.04, 1.0, 0.0, 0.0)
    losses = {}
    for neg in ("modality", "all"):
        m = _model(f"loss.negatives={neg}", f"loss.intra={intra}")
        loss, _ = m.forward_train(views, [], mod, sched, sample_key=torch.arange(10))
        loss.backward()
        m.after_step()
        losses[neg] = float(loss.detach())
    if intra == "contrastive":  # more negatives, a harder task
        assert losses["all"] > losses["modality"]


def test_the_study_s_no_moe_is_the_matched_recipe_and_every_variant_says_what_it_changes():
    from midol_cli.workflows.study import BUILTIN_VARIANTS, VARIANT_CHANGES

    assert set(BUILTIN_VARIANTS) <= set(VARIANT_CHANGES)
    for name in ("no_moe", "no_moe_confounded", "negatives_all", "route_detach", "experts2"):
        study = load_recipe(PretrainRecipe, "base", BUILTIN_VARIANTS[name])  # the study's switch on base.yaml
        shipped = load_recipe(PretrainRecipe, f"ablation/{name}")  # the shipped recipe (inherits base.yaml)
        assert (study.projector, study.loss) == (shipped.projector, shipped.loss), name


def test_new_keys_at_their_default_leave_the_recipe_dict_and_hash_as_before():
    from midol_cli.recipes import recipe_dict, recipe_hash

    plain = load_recipe(PretrainRecipe, "smoke")
    d = recipe_dict(plain)
    assert "experts_per_modality" not in d["projector"] and "negatives" not in d["loss"]
    assert PretrainRecipe.model_validate(d) == plain  # the dict still reads back as the same recipe
    set_ = load_recipe(
        PretrainRecipe, "smoke", ["projector.experts_per_modality=2", "loss.negatives=modality"]
    )
    assert recipe_dict(set_)["projector"]["experts_per_modality"] == 2
    assert recipe_dict(set_)["loss"]["negatives"] == "modality"
    assert recipe_hash(set_) != recipe_hash(plain)

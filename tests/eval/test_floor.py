"""The BatchNorm-re-estimated random floor (issue 28.3): only BatchNorm buffers change."""

import pytest
import torch
from torch import nn

from midol_cli.errors import UsageError
from midol_cli.eval.floor import batchnorm_layers, reestimate_batchnorm


def _resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=0).eval()


def _batches(n=3, b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, 64, 64, generator=g) * 2 + 0.5 for _ in range(n)]


def test_only_batchnorm_buffers_change_and_they_become_the_data_average():
    model = _resnet()
    params = {k: v.clone() for k, v in model.named_parameters()}
    bn_names = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                for b in ("running_mean", "running_var", "num_batches_tracked")}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    momenta = [m.momentum for m in batchnorm_layers(model)]
    batches = _batches()
    assert reestimate_batchnorm(model, iter(batches), n_batches=2) == 2
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    changed = {k for k, v in model.named_buffers() if not torch.equal(v, buffers[k])}
    assert changed and changed <= bn_names
    assert any(k.endswith("running_mean") for k in changed)
    assert any(k.endswith("running_var") for k in changed)
    assert [m.momentum for m in batchnorm_layers(model)] == momenta and not model.training
    # The first BN's running mean is the average over the two batches of its per-batch means (momentum None)
    bn1 = model.bn1
    with torch.no_grad():
        means = [model.conv1(x).mean((0, 2, 3)) for x in batches[:2]]
    assert torch.allclose(bn1.running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert int(bn1.num_batches_tracked) == 2


def test_features_differ_from_the_untouched_floor():
    a, b = _resnet(), _resnet()
    reestimate_batchnorm(b, iter(_batches()))
    x = _batches(1, 4, seed=5)[0]
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_without_batchnorm_nothing_is_touched():
    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from tests.conftest import TINY_SWIN

    enc = build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN))
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    assert reestimate_batchnorm(enc, iter(_batches())) == 0
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())


def test_no_usable_batch_is_a_one_line_error():
    with pytest.raises(UsageError, match="at least two images"):
        reestimate_batchnorm(_resnet(), iter([torch.rand(1, 3, 64, 64)]))


def test_random_bn_floor_of_an_eval_model_reads_the_training_images(tmp_path):
    from midol_cli.eval.floor import with_bn_reestimated
    from midol_cli.eval.models import load_eval_model
    from tests.pipeline import build_pipeline

    shards = build_pipeline(tmp_path, per_class=2, modalities=("xray", "fundus"), min_shards=1)["shards"]
    base = load_eval_model("random:resnet18")
    via_weights = load_eval_model(f"random-bn:resnet18@{shards}")  # the --weights form
    assert via_weights.kind == "random-bn" and via_weights.id == "random-bn-resnet18"
    before = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    floor = with_bn_reestimated(base, shards, n_batches=2, batch_size=4)
    assert floor.kind == "random-bn" and floor.id.startswith("random-bn-")
    assert floor.weights_hash != base.weights_hash  # the embedding cache keeps the two floors apart
    assert all(torch.equal(v, before[k]) for k, v in base.encoder.state_dict().items())  # a copy changed
    changed = [k for k, v in floor.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".bn" in k or "downsample.1" in k or k.startswith("bn1") for k in changed)


def test_random_bn_weights_grammar():
    from midol_cli.eval.models import parse_weights

    ref = parse_weights("random-bn:resnet18@shards/train")
    assert (ref.kind, ref.target, ref.file) == ("random-bn", "resnet18", "shards/train")
    with pytest.raises(UsageError, match="random-bn:<model name or run>@"):
        parse_weights("random-bn:resnet18")


def test_the_floor_reads_only_training_images_unless_there_are_none(tmp_path):
    from midol_cli.eval.floor import image_batches
    from midol_cli.eval.models import load_eval_model
    from tests.pipeline import build_pipeline

    shards = build_pipeline(tmp_path, per_class=3, modalities=("fundus",), min_shards=1)["shards"]
    spec = load_eval_model("random:resnet18").spec
    n_train = sum(len(x) for x in image_batches(shards, spec, batch_size=4))
    n_all = sum(len(x) for x in image_batches(shards, spec, batch_size=4, split=None))
    assert 0 < n_train < n_all  # val and test images never feed the floor's statistics
    n_none = sum(len(x) for x in image_batches(shards, spec, batch_size=4, split="no-such-split"))
    assert n_none == n_all  # an unsplit folder: every image

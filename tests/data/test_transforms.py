"""Augmentations: the fused colour jitter against torchvision's operations, blur, crop, views."""

import colorsys
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageStat
from torchvision import transforms as T
from torchvision.transforms import functional as F

from midol_cli.data.transforms import (
    _LUMA,
    ColourJitter,
    MultiViewTransform,
    Normalise,
    ViewAugment,
    collate_views,
    crop_box,
    gaussian_blur_tensor,
    pil_to_uint8,
    to_tensor,
)
from midol_cli.recipes import AugCfg


@pytest.fixture
def rgb():
    # Mid-range values: no clipping, so torchvision's per-step uint8 clipping cannot differ from ours.
    arr = np.random.default_rng(0).integers(40, 216, size=(48, 40, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _apply(ops, img):
    """One fixed chain through the same path as ColourJitter.__call__."""
    a, t = ColourJitter.affine(ops, ImageStat.Stat(img).mean)
    matrix = tuple(float(v) for row in zip(a.tolist(), t.tolist(), strict=True) for v in (*row[0], row[1]))
    return img.convert("RGB", matrix)


def _arr(img):
    return np.asarray(img).astype(np.int64)


@pytest.mark.parametrize(
    "name, factor, reference",
    [
        ("brightness", 1.3, F.adjust_brightness),
        ("brightness", 0.6, F.adjust_brightness),
        ("contrast", 1.4, F.adjust_contrast),
        ("contrast", 0.5, F.adjust_contrast),
        ("saturation", 1.5, F.adjust_saturation),
        ("saturation", 0.0, F.adjust_saturation),
    ],
)
def test_single_operations_match_torchvision(rgb, name, factor, reference):
    diff = np.abs(_arr(_apply([(name, factor)], rgb)) - _arr(reference(rgb, factor)))
    assert diff.max() <= 1  # rounding only


def test_chain_equals_the_operations_one_after_another(rgb):
    ops = [("saturation", 0.7), ("contrast", 1.2), ("brightness", 0.9), ("hue", 0.04)]
    step = np.asarray(rgb, dtype=np.float64)
    luma = np.asarray(_LUMA)
    for name, f in ops:  # the definitions in the docstring, in float, unclipped
        if name == "brightness":
            step = f * step
        elif name == "contrast":
            step = f * step + (1 - f) * float((step @ luma).mean())
        elif name == "saturation":
            step = f * step + (1 - f) * (step @ luma)[..., None]
        else:
            a, _ = ColourJitter.affine([("hue", f)], [0, 0, 0])
            step = step @ a.T
    assert np.abs(_arr(_apply(ops, rgb)) - np.clip(np.rint(step), 0, 255)).max() <= 1


def test_hue_keeps_luma_and_chroma_and_turns_like_torchvision(rgb):
    src = np.asarray(rgb, dtype=np.float64)
    yiq = ColourJitter.affine([("hue", 0.0)], [0, 0, 0])[0]
    assert np.allclose(yiq, np.eye(3))
    for h in (0.03, -0.08, 0.2):
        a, t = ColourJitter.affine([("hue", h)], [0, 0, 0])
        assert np.allclose(t, 0)
        assert np.allclose(np.asarray(_LUMA) @ a, _LUMA)  # luma unchanged
        out = src @ a.T
        grey = (src @ np.asarray(_LUMA))[..., None]
        # A rotation about the grey axis in YIQ keeps the chroma magnitude (in YIQ units).
        m = np.array([[0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
        assert np.allclose(
            np.linalg.norm((out - grey) @ m.T, axis=-1), np.linalg.norm((src - grey) @ m.T, axis=-1)
        )
        hsv_hue = np.array([colorsys.rgb_to_hsv(*(p / 255.0))[0] for p in src.reshape(-1, 3)])

        def shift(x, _base=hsv_hue):
            hx = np.array([colorsys.rgb_to_hsv(*(np.clip(p, 0, 255) / 255.0))[0] for p in x.reshape(-1, 3)])
            return np.median((hx - _base + 0.5) % 1.0 - 0.5)

        ours, theirs = shift(out), shift(np.asarray(F.adjust_hue(rgb, h), dtype=np.float64))
        assert np.sign(ours) == np.sign(theirs) == np.sign(h)
        assert abs(ours - theirs) < 0.35 * abs(h)


def test_factors_and_order_are_drawn_like_torchvision():
    jitter = ColourJitter(0.4, 0.3, 0.2, 0.1)
    random.seed(0)
    draws = [jitter.draw() for _ in range(2000)]
    firsts = {d[0][0] for d in draws}
    assert firsts == {"brightness", "contrast", "saturation", "hue"}  # random order
    by_name = {
        n: [f for d in draws for m, f in d if m == n] for n in ("brightness", "contrast", "saturation", "hue")
    }
    assert 0.6 <= min(by_name["brightness"]) and max(by_name["brightness"]) <= 1.4
    assert 0.7 <= min(by_name["contrast"]) and max(by_name["contrast"]) <= 1.3
    assert -0.1 <= min(by_name["hue"]) and max(by_name["hue"]) <= 0.1
    assert abs(np.mean(by_name["hue"])) < 0.01
    # Grayscale draws never touch colour; a zero jitter draws nothing and returns the image.
    assert {m for m, _ in jitter.draw(grayscale=True)} == {"brightness", "contrast"}
    assert ColourJitter().draw() == []


def test_grey_images_keep_their_mode_and_match_torchvision():
    arr = np.random.default_rng(1).integers(30, 200, size=(32, 32), dtype=np.uint8)
    grey = Image.fromarray(arr)
    random.seed(3)
    out = ColourJitter(0.4, 0.4, 0.9, 0.5)(grey)  # saturation / hue are ignored on "L"
    assert out.mode == "L" and out.size == grey.size
    a, t = ColourJitter.affine([("contrast", 1.3)], [ImageStat.Stat(grey).mean[0]] * 3)
    lut = [min(255, max(0, round(a[0].sum() * v + t[0]))) for v in range(256)]
    assert np.abs(_arr(grey.point(lut)) - _arr(F.adjust_contrast(grey, 1.3))).max() <= 1


def test_jitter_refuses_bad_factors_and_modes(rgb):
    with pytest.raises(ValueError, match="hue"):
        ColourJitter(hue=0.7)
    with pytest.raises(ValueError, match="brightness"):
        ColourJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="mode CMYK"):
        ColourJitter(0.4)(rgb.convert("CMYK"))
    assert ColourJitter()(rgb) is rgb


def test_output_is_clipped_not_wrapped():
    white = Image.new("RGB", (8, 8), (250, 250, 250))
    out = _arr(_apply([("brightness", 1.5)], white))
    assert (out == 255).all()


def test_crop_boxes_follow_the_inception_sampling():
    rng = random.Random(0)
    boxes = [crop_box(160, 120, (0.2, 1.0), rng=rng) for _ in range(3000)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 160 and 0 <= top < bottom <= 120
    area = np.array([(r - lf) * (b - t) / (160 * 120) for lf, t, r, b in boxes])
    aspect = np.array([(r - lf) / (b - t) for lf, t, r, b in boxes])
    assert area.min() >= 0.19 and area.max() <= 1.0
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35
    # Same draws as torchvision's RandomResizedCrop (which uses torch's RNG): compare distributions.
    torch.manual_seed(0)
    ref = [
        T.RandomResizedCrop.get_params(torch.zeros(1, 120, 160), [0.2, 1.0], [3 / 4, 4 / 3])
        for _ in range(3000)
    ]
    ref_area = np.array([h * w / (160 * 120) for _, _, h, w in ref])
    assert abs(area.mean() - ref_area.mean()) < 0.02 and abs(np.median(area) - np.median(ref_area)) < 0.03
    assert crop_box(160, 120, (0.2, 1.0), rng=random.Random(5)) == crop_box(
        160, 120, (0.2, 1.0), rng=random.Random(5)
    )


def test_whole_image_crop_draws_nothing():
    state = random.getstate()
    assert crop_box(80, 60, (1.0, 1.0)) == (0, 0, 80, 60)  # 4:3 is within the ratio bounds
    assert crop_box(90, 30, (1.0, 1.0)) == (25, 0, 65, 30)  # 3:1 is not: the widest 4:3 box
    assert random.getstate() == state


def test_crop_box_falls_back_to_the_largest_centred_box():
    # Nothing with aspect 3/4..4/3 and >= 90% of a 400 x 10 image exists: centred 13 x 10.
    assert crop_box(400, 10, (0.9, 1.0), rng=random.Random(0)) == (193, 0, 206, 10)
    assert crop_box(10, 400, (0.9, 1.0), rng=random.Random(0)) == (0, 193, 10, 206)


def _still(**kw):
    base = dict(crop_scale=(1.0, 1.0), hflip=False, vflip=False, rot90=False, jitter_p=0.0, blur_p=0.0)
    return AugCfg(**{**base, **kw})


def _photo(mode="RGB", size=(90, 70)):
    arr = np.random.default_rng(5).integers(30, 226, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).filter(__import__("PIL.ImageFilter", fromlist=["x"]).GaussianBlur(2))
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_view_without_randomness_is_the_bicubic_resize(mode):
    img = _photo(mode)
    random.seed(1)
    view = ViewAugment(_still(), 48, (1.0, 1.0))(img)
    random.seed(1)  # the same box
    ref = to_tensor(img.resize((48, 48), Image.Resampling.BICUBIC, box=crop_box(90, 70, (1.0, 1.0))))
    assert view.shape == (3, 48, 48) and view.dtype == torch.float32 and view.is_contiguous()
    assert (view - ref).abs().max() < 0.02  # a grey level: torch's and PIL's kernels round differently
    if mode == "L":  # one grey level in all three channels before normalisation
        from midol_cli.models.encoder import IMAGENET_MEAN, IMAGENET_STD

        grey = view * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[1], grey[2], atol=1e-5)


def test_view_jitter_is_the_colour_map_of_colourjitter(monkeypatch):
    img = _photo()
    aug = ViewAugment(_still(jitter_p=1.0, hue=0.1), 48, (1.0, 1.0))
    ops = [("contrast", 1.3), ("hue", 0.06), ("saturation", 0.6), ("brightness", 1.1)]
    monkeypatch.setattr(aug.jitter, "draw", lambda grayscale=False: list(ops))
    resized = img.resize((48, 48), Image.Resampling.BICUBIC)
    ref = to_tensor(_apply(ops, resized))  # the PIL path: one rounding at the end
    assert (aug(img) - ref).abs().mean() < 0.02


def test_tensor_blur_is_a_gaussian():
    x = torch.from_numpy(np.asarray(_photo(), dtype=np.float32)).permute(2, 0, 1)[None]
    for sigma in (0.5, 1.7):
        k = 2 * int(np.ceil(3 * sigma)) + 1
        ref = F.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        assert torch.allclose(gaussian_blur_tensor(x, sigma), ref, atol=1e-3)
    # A capped radius is torchvision's fixed-size kernel (3 px here), renormalised.
    capped = F.gaussian_blur(x, kernel_size=[3, 3], sigma=[1.7, 1.7])
    assert torch.allclose(gaussian_blur_tensor(x, 1.7, max_radius=1), capped, atol=1e-3)


def test_pil_to_uint8_views_the_region_channels_last():
    img = _photo()
    x = pil_to_uint8(img, (10, 5, 40, 25))
    assert x.shape == (1, 3, 20, 30) and x.dtype == torch.uint8
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), np.asarray(img)[5:25, 10:40])
    with pytest.raises(ValueError, match="mode CMYK"):
        pil_to_uint8(img.convert("CMYK"))


def _every_op(mode):
    """A view recipe that always jitters, blurs, flips and turns."""
    return AugCfg(grayscale=mode == "L", hue=0.1, jitter_p=1.0, blur_p=1.0, rot90=True, vflip=True)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_views_are_normalised_three_channel_tensors(mode):
    img, cfg = _photo(mode), _every_op(mode)
    random.seed(0)
    view = ViewAugment(cfg, 48, (0.3, 1.0))(img)
    assert view.shape == (3, 48, 48) and torch.isfinite(view).all()
    lo, hi = (
        to_tensor(Image.new("RGB", (1, 1), (0, 0, 0))),
        to_tensor(Image.new("RGB", (1, 1), (255, 255, 255))),
    )
    assert (view >= lo.view(3, 1, 1) - 1e-5).all() and (view <= hi.view(3, 1, 1) + 1e-5).all()  # clipped
    tf = MultiViewTransform(
        ["fundus"], {"fundus": cfg}, img_size=48, global_views=2, local_views=1, local_size=24
    )
    g, loc, m, key = tf(img, {"modality": "fundus", "sample_id": "ab12"})
    assert [x.shape for x in g] == [torch.Size([3, 48, 48])] * 2 and loc[0].shape == (3, 24, 24)
    assert not torch.equal(g[0], g[1])  # two different views
    assert g[0].dtype == torch.uint8 and m == 0 and key == 0xAB12  # normalised on the device later
    assert tf(img, {"modality": "oct"}) is None
    batch = collate_views([tf(img, {"modality": "fundus", "sample_id": "1"}), None])
    assert batch["global"][0].shape == (1, 3, 48, 48) and batch["global"][0].dtype == torch.uint8


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_uint8_views_are_the_rounded_float_views(mode):
    img, cfg = _photo(mode), _every_op(mode)
    random.seed(3)
    as_float = ViewAugment(cfg, 40, (0.3, 1.0))(img)
    random.seed(3)
    as_uint8 = ViewAugment(cfg, 40, (0.3, 1.0), normalise=False)(img)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (3, 40, 40)
    # Normalising the rounded pixels lands within half a grey level of the float view.
    assert (Normalise()(as_uint8) - as_float).abs().max() <= 0.5 / (255 * 0.224) + 1e-4


def test_normalise_matches_to_tensor():
    img = _photo()
    pixels = pil_to_uint8(img)[0]
    assert torch.allclose(Normalise()(pixels), to_tensor(img), atol=1e-5)
    assert torch.allclose(Normalise()(pixels[None]), to_tensor(img)[None], atol=1e-5)  # batched
    custom = Normalise(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(
        torch.full((3, 2, 2), 255, dtype=torch.uint8)
    )
    assert torch.allclose(custom, torch.ones(3, 2, 2))


def _shard_jpeg(img) -> bytes:
    from midol_cli.data.shards import encode_image

    return encode_image(img, 512)[1]


@pytest.mark.parametrize("normalise", [True, False])
def test_views_of_an_encoded_image_are_the_views_of_its_pixels(normalise):
    """The lazy loader's image gives the same views as its decoded pixels (only part is decoded)."""
    from midol_cli.data.shards import open_encoded

    arr = np.random.default_rng(5).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    data = _shard_jpeg(Image.fromarray(arr).resize((400, 320), Image.Resampling.BICUBIC))
    pixels = Image.open(io.BytesIO(data)).convert("RGB")
    aug = ViewAugment(AugCfg(hue=0.1, jitter_p=1.0, blur_p=0.5), 64, (0.05, 0.5), normalise=normalise)
    for seed in range(12):
        random.seed(seed)
        lazy = aug(open_encoded(data, "jpg"))
        random.seed(seed)
        assert torch.equal(lazy, aug(pixels))
    tf = MultiViewTransform(["fundus"], {"fundus": AugCfg(crop_scale=(0.1, 0.4))}, img_size=48, local_views=2,
                            local_size=24)
    meta = {"modality": "fundus", "sample_id": "ab"}
    for seed in range(6):
        random.seed(seed)
        g, loc, _, _ = tf(open_encoded(data, "jpg"), meta)
        random.seed(seed)
        g2, loc2, _, _ = tf(pixels, meta)
        assert all(torch.equal(a, b) for a, b in zip(g + loc, g2 + loc2, strict=True))

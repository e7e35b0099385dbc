"""data.decode=gpu (data/gpu_views.py): the worker draws what ViewAugment draws, and the device path
renders the views the CPU path renders.

The device-path functions take any device: here they run on CPU (torchvision's libjpeg-turbo decode,
float interpolation), with @pytest.mark.gpu twins on CUDA (nvJPEG). The tolerance, in grey levels of
uint8 views: mean absolute difference < 0.5 and max <= 8 on CPU (measured over 20 seeds: mean
0.04-0.08, max 2-5; the decoders agree exactly here, both libjpeg-turbo); on CUDA mean < 2 and max <= 40
(not yet run on a GPU: the bound allows for nvJPEG). Why not equal: the CPU path resamples with torch's
fixed-point uint8 kernel, the device path in float (each rounds to a level, so either can land one
level off, and the jitter's gain, up to ~2, and the blur carry that difference on); nvJPEG's IDCT and
its chroma upsampling differ from libjpeg-turbo's by 1-2 levels on smooth areas and more at sharp colour
edges, hence the wider max there.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from midol_cli.data.gpu_views import (
    GpuViews,
    ViewParamTransform,
    collate_encoded,
    colour_affine,
    decode_jpegs,
    gaussian_blur,
    loader_parts,
)
from midol_cli.data.transforms import ColourJitter, MultiViewTransform, collate_views, gaussian_blur_tensor
from midol_cli.errors import UsageError
from midol_cli.recipes import AugCfg

CUDA = torch.cuda.is_available()


def _photo(seed: int, size=(200, 160), mode="RGB") -> Image.Image:
    """A smooth random photo with some edges (a disc), as the benchmark's."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    arr = np.asarray(img).copy()
    yy, xx = np.mgrid[: size[1], : size[0]]
    arr[(xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2 < (size[1] / 4) ** 2] = rng.integers(0, 256, 3)
    return Image.fromarray(arr).convert(mode)


def _shard_jpeg(img) -> bytes:
    from midol_cli.data.shards import encode_image

    return encode_image(img, 512)[1]  # restart-marked baseline JPEG, as `midol shard` writes


def _plain(img, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90)
    return buf.getvalue()


def _views(noise: float = 0.0) -> MultiViewTransform:
    """Every operation on: flips, turns, jitter with hue, blur half the time; 2 global + 2 local views."""
    cfg = AugCfg(crop_scale=(0.1, 1.0), hflip=True, vflip=True, rot90=True, hue=0.1, saturation=0.4,
                 jitter_p=1.0, blur_p=0.5, noise=noise)
    grey = AugCfg(crop_scale=(0.3, 1.0), hflip=True, jitter_p=1.0, blur_p=0.5, grayscale=True, saturation=0.0)
    return MultiViewTransform(["fundus", "oct"], {"fundus": cfg, "oct": grey}, img_size=64, local_views=2,
                              local_size=32)


def _samples():
    """(encoded image, meta): restart-marked RGB JPEGs, a plain RGB JPEG, a plain grey JPEG, a PNG."""
    from midol_cli.data.shards import open_encoded

    out = [(open_encoded(_shard_jpeg(_photo(s)), "jpg"), {"modality": "fundus", "sample_id": f"{s:04x}"})
           for s in range(5)]
    out.append((open_encoded(_plain(_photo(7)), "jpg"), {"modality": "fundus", "sample_id": "77"}))
    out.append((open_encoded(_plain(_photo(8, mode="L")), "jpg"), {"modality": "oct", "sample_id": "88"}))
    out.append(
        (open_encoded(_plain(_photo(9, mode="L"), "PNG"), "png"), {"modality": "oct", "sample_id": "99"})
    )
    return out


def _both_paths(tf: MultiViewTransform, device: str, seed: int = 0):
    """The CPU path's batch and the device path's batch of the same samples from the same seed."""
    samples = _samples()
    random.seed(seed)
    cpu = collate_views([tf(img, meta) for img, meta in samples])
    random.seed(seed)
    enc = collate_encoded([ViewParamTransform(tf)(img, meta) for img, meta in samples])
    return cpu, GpuViews(tf, device)(enc)


def _diff(cpu: dict, dev: dict) -> tuple[float, int]:
    views = list(zip(cpu["global"] + cpu["local"], dev["global"] + dev["local"], strict=True))
    d = torch.cat([(a.int() - b.cpu().int()).abs().flatten() for a, b in views])
    return float(d.float().mean()), int(d.max())


def test_the_worker_draws_exactly_what_the_cpu_transform_draws():
    tf = _views(noise=0.05)
    for img, meta in _samples():
        for seed in range(4):
            random.seed(seed)
            tf(img, meta)
            after_cpu = random.getstate()
            random.seed(seed)
            ViewParamTransform(tf)(img, meta)
            assert random.getstate() == after_cpu, (meta, seed)


def test_device_path_on_cpu_matches_the_cpu_views():
    tf = _views()
    maes, maxes = [], []
    for seed in range(6):
        cpu, dev = _both_paths(tf, "cpu", seed)
        assert [v.shape for v in dev["global"]] == [v.shape for v in cpu["global"]] == [(8, 3, 64, 64)] * 2
        assert [v.shape for v in dev["local"]] == [(8, 3, 32, 32)] * 2
        assert all(v.dtype == torch.uint8 for v in dev["global"] + dev["local"])
        assert torch.equal(dev["modality"], cpu["modality"]) and torch.equal(
            dev["sample_key"], cpu["sample_key"]
        )
        # The PNG (last row) went through the CPU transform in the worker: identical.
        assert all(torch.equal(a[-1], b[-1]) for a, b in zip(cpu["global"], dev["global"], strict=True))
        mae, mx = _diff(cpu, dev)
        maes.append(mae)
        maxes.append(mx)
    assert max(maes) < 0.5 and max(maxes) <= 8, (maes, maxes)


def test_noise_is_drawn_on_the_device_with_the_cpu_strength():
    tf = _views(noise=0.05)
    cpu, dev = _both_paths(tf, "cpu", seed=3)
    # Not the same field (another generator), but the same law: the overall difference stays small.
    mae, _ = _diff(cpu, dev)
    assert mae < 12.0


def test_colour_affine_is_affine_lists_for_every_view():
    rng = random.Random(0)
    jitter = ColourJitter(0.4, 0.4, 0.4, 0.2)
    ops = [jitter.draw(grayscale=i % 5 == 0) if i % 4 else [] for i in range(40)]
    means = [[rng.uniform(0, 255) for _ in range(3)] for _ in ops]
    codes = torch.tensor([[("brightness", "contrast", "saturation", "hue").index(n) + 1 for n, _ in o]
                          + [0] * (4 - len(o)) for o in ops])
    factors = torch.tensor([[f for _, f in o] + [0.0] * (4 - len(o)) for o in ops], dtype=torch.float64)
    a, t = colour_affine(codes, factors, torch.tensor(means, dtype=torch.float64))
    for i, (o, m) in enumerate(zip(ops, means, strict=True)):
        ra, rt = ColourJitter.affine_lists(o, m)
        assert torch.allclose(a[i], torch.tensor(ra, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(t[i], torch.tensor(rt, dtype=torch.float64), atol=1e-7)


def test_batched_blur_is_the_per_image_blur():
    x = torch.rand(5, 3, 20, 20) * 255
    sigma = [0.1, 0.7, 2.0, 4.5, 9.0]  # radius 1 .. clipped at the image's side
    got = gaussian_blur(x, sigma)
    for i, s in enumerate(sigma):
        assert torch.allclose(got[i], gaussian_blur_tensor(x[i : i + 1], s)[0], atol=1e-3)


def test_a_jpeg_the_decoder_refuses_is_dropped_from_the_batch(caplog):
    tf = _views()
    recs = [ViewParamTransform(tf)(img, meta) for img, meta in _samples()[:3]]
    recs[1] = (recs[1][0], b"\xff\xd8\xff\xdb" + bytes(64), *recs[1][2:])
    assert decode_jpegs([torch.frombuffer(bytearray(recs[1][1]), dtype=torch.uint8)], "cpu") == [None]
    out = GpuViews(tf, "cpu")(collate_encoded(recs))
    assert out["global"][0].shape[0] == 2 and out["sample_key"].tolist() == [0, 2]
    assert "sample dropped" in caplog.text


def test_the_loader_stream_gives_the_cpu_batches(tmp_path):
    """Through the real loader (lazy decode, one process): same seed, same samples, same views."""
    from midol_cli.data import shards as S
    from midol_cli.data.loader import make_loader
    from tests.data.test_shards import make_manifest

    rgb = make_manifest(tmp_path, "rgb", 12, modality="fundus", size=(160, 120), splits=("train",))
    grey = make_manifest(tmp_path, "grey", 6, modality="oct", mode="L", size=(120, 120), splits=("train",))
    S.write_shards([rgb, grey], tmp_path / "shards", S.ShardParams(max_count=6))
    tf = _views()
    batches = {}
    for path in ("cpu", "gpu"):
        random.seed(11)
        t, collate = (tf, collate_views) if path == "cpu" else (ViewParamTransform(tf), collate_encoded)
        loader = make_loader(tmp_path / "shards", t, 6, num_workers=0, collate_fn=collate, shuffle_buffer=4,
                             decode_mode="lazy", seed=3)
        batches[path] = [b if path == "cpu" else GpuViews(tf, "cpu")(b) for b in loader]
    assert len(batches["cpu"]) == len(batches["gpu"]) == 3
    for cpu, dev in zip(batches["cpu"], batches["gpu"], strict=True):
        assert torch.equal(cpu["sample_key"], dev["sample_key"])
        mae, mx = _diff(cpu, dev)
        assert mae < 0.5 and mx <= 8, (mae, mx)


def test_decode_gpu_needs_a_cuda_device():
    tf = _views()
    with pytest.raises(UsageError, match=r"^data.decode=gpu needs a CUDA device"):
        loader_parts("gpu", tf, collate_views, "cpu")
    t, c, on_device = loader_parts("cpu", tf, collate_views, "cpu")
    assert t is tf and c is collate_views and on_device({"x": 1}) == {"x": 1}


def test_recipe_takes_data_decode():
    from midol_cli.recipes import PretrainRecipe, load_recipe

    assert load_recipe(PretrainRecipe, None).data.decode == "cpu"
    assert load_recipe(PretrainRecipe, None, ["data.decode=gpu"]).data.decode == "gpu"
    with pytest.raises(UsageError, match="data.decode"):
        load_recipe(PretrainRecipe, None, ["data.decode=tpu"])


def _pretrain_recipe(tmp_path, n_rgb: int = 32):
    from midol_cli.data import shards as S
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from tests.data.test_shards import make_manifest

    rgb = make_manifest(tmp_path, "rgb", n_rgb, modality="fundus", size=(160, 120), splits=("train",))
    grey = make_manifest(tmp_path, "grey", 16, modality="oct", mode="L", size=(120, 120), splits=("train",))
    S.write_shards([rgb, grey], tmp_path / "shards", S.ShardParams(max_count=8))
    return load_recipe(PretrainRecipe, "recipes/smoke.yaml", [
        f"data.shards={tmp_path / 'shards'}", "data.modalities=[fundus,oct]", "data.decode=gpu",
        "train.steps=3", "train.log_every=1", "optim.global_batch_size=16", "data.num_workers=1",
        "data.shuffle_buffer=8"])


def _losses(run_dir) -> list[float]:
    import json

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    return [r["loss"] for r in rows]


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_pretraining_refuses_gpu_decode_without_cuda(tmp_path):
    from midol_cli.train.pretrain import run_pretrain

    with pytest.raises(UsageError, match="data.decode=gpu needs a CUDA device"):
        run_pretrain(_pretrain_recipe(tmp_path, 8), tmp_path / "run")


def test_pretraining_runs_the_gpu_path_on_the_cpu(tmp_path, monkeypatch):
    """The loop's wiring (worker transform, collate, on-device step) with the device path on CPU."""
    import midol_cli.data.gpu_views as G
    from midol_cli.train.pretrain import run_pretrain

    rendered = []

    def on_cpu(decode, views, collate, device):
        assert decode == "gpu"
        g = G.GpuViews(views, "cpu")
        return g.worker_transform, g.collate, lambda batch: rendered.append(1) or g(batch)

    monkeypatch.setattr(G, "loader_parts", on_cpu)
    run_pretrain(_pretrain_recipe(tmp_path), tmp_path / "run")
    assert all(np.isfinite(v) for v in _losses(tmp_path / "run")) and len(rendered) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_path_matches_the_cpu_views():
    tf = _views()
    for seed in range(4):
        cpu, dev = _both_paths(tf, "cuda", seed)
        assert all(v.device.type == "cuda" and v.dtype == torch.uint8 for v in dev["global"] + dev["local"])
        mae, mx = _diff(cpu, dev)
        assert mae < 2.0 and mx <= 40, (seed, mae, mx)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_pretraining_steps_with_gpu_decode(tmp_path):
    from midol_cli.train.pretrain import run_pretrain

    run_pretrain(_pretrain_recipe(tmp_path), tmp_path / "run")
    assert all(np.isfinite(v) for v in _losses(tmp_path / "run"))

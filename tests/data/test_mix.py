"""Modality mixing (data.mix): weights, realised proportions of the stream, recipe validation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest

from midol_cli.data import shards as S
from midol_cli.data.mix import make_mixed_dataset, mix_weights, modality_counts
from midol_cli.errors import UsageError
from midol_cli.recipes import PretrainRecipe, load_recipe
from tests.data.test_shards import make_manifest


def test_mix_weights_known_answers():
    counts = {"xray": 300, "oct": 100}
    assert mix_weights("proportional", counts) == {"xray": 0.75, "oct": 0.25}
    assert mix_weights("balanced", counts) == {"xray": 0.5, "oct": 0.5}
    assert mix_weights({"xray": 3, "oct": 1}, counts) == {"xray": 0.75, "oct": 0.25}
    with pytest.raises(UsageError, match="no weight for oct"):
        mix_weights({"xray": 1.0}, counts)
    with pytest.raises(UsageError, match="has no images of oct"):
        mix_weights("balanced", {"xray": 10, "oct": 0})
    with pytest.raises(UsageError, match="not one of proportional, balanced"):
        mix_weights("uniform", counts)


@pytest.fixture(scope="module")
def lopsided(tmp_path_factory) -> Path:
    """A shard set with 48 fundus and 8 oct training images (plus val/test rows the stream skips)."""
    tmp = tmp_path_factory.mktemp("mix")
    big = make_manifest(
        tmp, "big", 64, modality="fundus", size=(24, 24), splits=("train", "train", "train", "val")
    )
    small = make_manifest(tmp, "small", 8, modality="oct", mode="L", size=(24, 24), splits=("train",))
    out = tmp / "shards"
    S.write_shards([big, small], out, S.ShardParams(max_count=8, min_shards=4))
    return out


def _draw(shards: Path, mix, n: int, seed: int = 0) -> Counter:
    ds = make_mixed_dataset(shards, lambda img, meta: meta["modality"], modalities=["fundus", "oct"], mix=mix,
                            split="train", shuffle_buffer=8, seed=seed, decode_mode="bytes")
    return Counter(itertools.islice(iter(ds), n))


def _within(got: Counter, n: int, p: float, mod: str = "oct", sigmas: float = 4.0) -> bool:
    return abs(got[mod] - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_realised_proportions_follow_the_mix(lopsided):
    assert modality_counts(lopsided, ["fundus", "oct"], "train") == {"fundus": 48, "oct": 8}
    n = 1200
    balanced = _draw(lopsided, "balanced", n)
    assert _within(balanced, n, 0.5), balanced
    weighted = _draw(lopsided, {"fundus": 0.2, "oct": 0.8}, n, seed=1)
    assert _within(weighted, n, 0.8), weighted
    # Proportional: the whole-set stream, whose shares are the images' (8 of 56 are oct). Whole shards
    # are drawn, so the spread is wider than a binomial one: a looser bound.
    prop = _draw(lopsided, "proportional", n, seed=2)
    assert abs(prop["oct"] / n - 8 / 56) < 0.08, prop
    # The small modality is seen again and again under 'balanced': about 600 draws of 8 images.
    assert balanced["oct"] > 40 * 8


def test_the_mixed_stream_is_seeded(lopsided):
    a = make_mixed_dataset(lopsided, lambda img, meta: meta["modality"], modalities=["fundus", "oct"],
                           mix="balanced", split="train", seed=5, decode_mode="bytes")
    b = make_mixed_dataset(lopsided, lambda img, meta: meta["modality"], modalities=["fundus", "oct"],
                           mix="balanced", split="train", seed=5, decode_mode="bytes")
    assert list(itertools.islice(iter(a), 50)) == list(itertools.islice(iter(b), 50))
    assert a.stats() == {"refused_members": 0, "bad_samples": 0, "bad_shards": 0}


def test_recipe_mix_is_validated_with_dotted_keys():
    r = load_recipe(PretrainRecipe, None, ["data.modalities=[xray,oct]", "data.mix={xray: 1, oct: 3}"])
    assert r.data.mix == {"xray": 1.0, "oct": 3.0}
    assert load_recipe(PretrainRecipe, None, ["data.mix=balanced"]).data.mix == "balanced"
    with pytest.raises(
        UsageError, match=r"data.mix must give a weight to each of data.modalities.*no weight for: oct"
    ):
        load_recipe(PretrainRecipe, None, ["data.modalities=[xray,oct]", "data.mix={xray: 1}"])
    with pytest.raises(UsageError, match="data.mix"):
        load_recipe(PretrainRecipe, None, ["data.modalities=[xray,oct]", "data.mix={xray: 1, oct: -1}"])
    with pytest.raises(UsageError, match="data.mix"):
        load_recipe(PretrainRecipe, None, ["data.mix=uniform"])


def test_pretraining_logs_the_images_each_modality_gave(lopsided, tmp_path):
    import json

    from midol_cli.train.pretrain import run_pretrain
    from tests.conftest import TINY_SWIN

    recipe = load_recipe(
        PretrainRecipe,
        "recipes/smoke.yaml",
        [
            f"data.shards={lopsided}",
            "data.modalities=[fundus,oct]",
            "data.mix={fundus: 1, oct: 3}",
            "model.arch=swin_tiny_patch4_window7_224",
            "model.img_size=64",
            "model.arch_kwargs=" + json.dumps(TINY_SWIN),
            "train.steps=6",
            "train.log_every=2",
            "optim.global_batch_size=16",
            "data.num_workers=0",
            "data.shuffle_buffer=8",
            "projector.hidden_dim=32",
            "projector.n_prototypes=16",
            "loss.queue_size=16",
        ],
    )
    run_pretrain(recipe, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    seen = Counter()
    for r in rows:
        assert r["images/fundus"] + r["images/oct"] == 2 * 16  # two steps of 16 images per record
        seen.update({m: r[f"images/{m}"] for m in ("fundus", "oct")})
    assert _within(seen, 96, 0.75), seen


def test_pretraining_reads_pipe_urls_and_a_mix_needs_an_index(lopsided, tmp_path):
    import json

    from midol_cli.train.pretrain import run_pretrain
    from tests.conftest import TINY_SWIN

    names = sorted(s["name"] for s in json.loads((lopsided / "index.json").read_text())["shards"])
    stem, last = names[0].rsplit("-", 1)[0], names[-1].rsplit("-", 1)[1].split(".")[0]
    first = names[0].rsplit("-", 1)[1].split(".")[0]
    spec = f"pipe:cat {lopsided}/{stem}-{{{first}..{last}}}.tar"
    base = [
        f"data.shards={spec}",
        "data.modalities=[fundus,oct]",
        "model.arch=swin_tiny_patch4_window7_224",
        "model.img_size=64",
        "model.arch_kwargs=" + json.dumps(TINY_SWIN),
        "train.steps=2",
        "train.log_every=1",
        "optim.global_batch_size=8",
        "data.num_workers=0",
        "data.shuffle_buffer=8",
        "projector.hidden_dim=32",
        "projector.n_prototypes=16",
        "loss.queue_size=8",
    ]
    run_pretrain(load_recipe(PretrainRecipe, "recipes/smoke.yaml", base), tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["shards"] == spec and rec["shard_index_sha"] is None
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["images/fundus"] + r["images/oct"] for r in rows) == 16
    with pytest.raises(UsageError, match="needs the shard set's index.json"):
        run_pretrain(
            load_recipe(PretrainRecipe, "recipes/smoke.yaml", [*base, "data.mix=balanced"]), tmp_path / "r2"
        )

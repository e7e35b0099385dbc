"""midol's shards read by the public WebDataset API (webdataset.WebDataset, wids) with the right counts and
keys."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from midol_cli.data import shards as S
from tests.data.test_shards import make_manifest


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, set[str]]:
    """15 samples (10 fundus JPEG + 5 xray PNG) in 4 shards, and the manifests' sample ids."""
    import pandas as pd

    tmp = tmp_path_factory.mktemp("wds")
    ms = [make_manifest(tmp, "fund", 10, size=(40, 30)),
          make_manifest(tmp, "cxr", 5, modality="xray", mode="L", size=(40, 30), seed=1)]
    out = tmp / "shards"
    idx = S.write_shards(ms, out, S.ShardParams(max_side=32, min_shards=4, seed=3))
    ids = set().union(*(set(pd.read_parquet(m)["sample_id"]) for m in ms))
    return out, idx, ids


def wids_shardlist(shard_dir: Path) -> dict:
    """A wids shard-list document made from midol's index.json (what docs/distributed.md tells users to
    write)."""
    idx = json.loads((shard_dir / "index.json").read_text())
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": shard_dir.name,
        # Relative URLs: wids resolves them against the shard list's own folder (wids.json beside index.json).
        "shardlist": [{"url": s["name"], "nsamples": s["samples"]} for s in idx["shards"]],
    }


def _check_sample(sample: dict, ids: set[str]) -> None:
    meta = json.loads(sample["json"])
    assert sample["__key__"] == meta["sample_id"] and meta["sample_id"] in ids
    images = [ext for ext in ("jpg", "png") if ext in sample]
    assert images == (["png"] if meta["modality"] == "xray" else ["jpg"])


def test_webdataset_reads_midol_shards(shard_set) -> None:
    import webdataset as wds

    out, idx, ids = shard_set
    urls = [str(out / s["name"]) for s in idx["shards"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webdataset's own deprecation notes are not what this tests
        samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == idx["totals"]["samples"] == len(ids) == 15
    assert {s["__key__"] for s in samples} == ids
    for s in samples:
        _check_sample(s, ids)
    # Per shard, as many samples as index.json says: WebDataset groups our members exactly as we do.
    per_shard = Counter(Path(s["__url__"]).name for s in samples)
    assert per_shard == {s["name"]: s["samples"] for s in idx["shards"]}
    # And the decoded form users write (.decode("pil")) gives images of the stored mode.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = next(
            iter(wds.WebDataset(urls[:1], shardshuffle=False).decode("pil").to_tuple("jpg;png", "json"))
        )
    assert first[0].mode in ("RGB", "L") and first[1]["sample_id"] in ids


def test_wids_shardlist_from_index(shard_set, tmp_path: Path) -> None:
    out, idx, ids = shard_set
    doc = wids_shardlist(out)
    assert sum(s["nsamples"] for s in doc["shardlist"]) == idx["totals"]["samples"]
    assert [(out / s["url"]).is_file() for s in doc["shardlist"]] == [True] * len(idx["shards"])
    spec = tmp_path / "set" / "wids.json"
    spec.parent.mkdir()
    for s in doc["shardlist"]:
        (spec.parent / s["url"]).symlink_to((out / s["url"]).resolve())
    spec.write_text(json.dumps(doc))
    wids = pytest.importorskip("wids", reason="wids (webdataset's indexed reader) is not installed here")
    ds = wids.ShardListDataset(str(spec), cache_dir=str(tmp_path / "cache"))  # decodes .json and images (PIL)
    assert len(ds) == 15
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        meta = sample[".json"]
        assert sample["__key__"] == meta["sample_id"] and meta["sample_id"] in ids
        image = sample[".png" if meta["modality"] == "xray" else ".jpg"]
        assert image.size[0] <= 32 and image.size[1] <= 32  # the shard set's max_side
        seen.add(meta["sample_id"])
    assert seen == ids

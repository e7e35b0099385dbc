"""Shard reader: rank/worker partitioning, resampling, filters, safety (midol_cli/data/loader.py)."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from midol_cli.artifacts import sha256_file, stable_id
from midol_cli.data import loader as L
from midol_cli.data.manifest import empty_row, write_manifest
from midol_cli.data.shards import ShardParams, write_shards
from midol_cli.distributed import rank_world
from midol_cli.errors import RunFailed, UsageError


def _manifest(tmp: Path, name: str, n: int, modality: str, mode: str) -> Path:
    rng = np.random.default_rng(len(name))
    root = tmp / f"raw_{name}"
    rows = []
    for i in range(n):
        rel = f"img_{i:03d}.{'jpg' if mode == 'RGB' else 'png'}"
        root.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
        img = Image.fromarray(arr).resize((40, 30), Image.Resampling.BILINEAR)
        (img if mode == "RGB" else img.convert("L")).save(root / rel)
        row = empty_row()
        row.update(sample_id=stable_id(name, rel), path=rel, modality=modality, dataset=name,
                   label=str(i % 2), labels=[str(i % 2)], group=rel, split="train" if i % 4 else "val",
                   sha256=sha256_file(root / rel), status="ok")
        rows.append(row)
    path = tmp / f"{name}.parquet"
    write_manifest(pd.DataFrame(rows), {"root": str(root.resolve())}, path)
    return path


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """36 samples (24 fundus RGB + 12 xray L) in 8 shards."""
    tmp = tmp_path_factory.mktemp("loader")
    ms = [_manifest(tmp, "fund", 24, "fundus", "RGB"), _manifest(tmp, "cxr", 12, "xray", "L")]
    out = tmp / "shards"
    idx = write_shards(ms, out, ShardParams(max_side=32, min_shards=8, seed=1))
    return out, idx


def _all_ids(idx_dir: Path) -> list[str]:
    return [meta["sample_id"] for _, meta in L.iter_samples(idx_dir)]


def _who(img, meta):
    import torch.utils.data

    wi = torch.utils.data.get_worker_info()
    return meta["sample_id"], wi.id if wi is not None else -1


def test_ranks_and_workers_partition_the_set_exactly(shard_set, monkeypatch: pytest.MonkeyPatch) -> None:
    out, idx = shard_set
    seen: list[str] = []
    producers = set()
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = L.make_loader(out, _who, batch_size=3, num_workers=2, collate_fn=list, drop_last=False)
        for batch in loader:
            for sid, worker in batch:
                seen.append(sid)
                producers.add((rank, worker))
    assert len(seen) == len(set(seen)) == idx["totals"]["samples"] == 36
    assert set(seen) == set(_all_ids(out))
    assert producers == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_finite_epochs_reshuffle_only_on_set_epoch(shard_set) -> None:
    out, _ = shard_set
    ds = L.make_dataset(out, lambda img, meta: meta["sample_id"], shuffle_buffer=8, seed=5)
    first, again = list(ds), list(ds)
    assert first == again and sorted(first) == sorted(_all_ids(out))
    ds.set_epoch(1)
    assert list(ds) != first
    other_seed = L.make_dataset(out, lambda img, meta: meta["sample_id"], shuffle_buffer=8, seed=6)
    assert list(other_seed) != first


def test_resampled_stream_is_infinite_and_differs_per_rank(
    shard_set, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = shard_set
    streams = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = L.make_dataset(out, lambda img, meta: meta["sample_id"], resampled=True, shuffle_buffer=4)
        streams.append(list(itertools.islice(iter(ds), 80)))  # more than the 36 samples: it repeats
    assert all(len(s) == 80 for s in streams)
    assert streams[0] != streams[1]
    assert len(set(streams[0])) < 80 and set(streams[0]) <= set(_all_ids(out))


def test_transform_modes_and_filters(shard_set) -> None:
    out, idx = shard_set
    ds = L.make_dataset(out, lambda img, meta: (meta["modality"], img.mode, max(img.size), meta["split"]))
    got = list(ds)
    assert len(got) == 36
    assert {(m, mode) for m, mode, _, _ in got} == {("fundus", "RGB"), ("xray", "L")}
    assert {side for _, _, side, _ in got} == {32}
    only = list(L.make_dataset(out, None, modalities=["xray"], split="val"))
    assert len(only) == 3 and all(meta["modality"] == "xray" and meta["split"] == "val" for _, meta in only)
    assert isinstance(only[0][0], Image.Image)
    assert L.count_samples(out, modalities=["xray"], split="val") == 3
    ds = L.make_dataset(out, None, modalities=["xray"], split="val")
    assert ds.num_shards < len(idx["shards"])  # shards without a wanted sample are not opened
    raw = list(L.make_dataset(out, lambda data, meta: data[:4], decode_mode="bytes", modalities=["xray"]))
    assert raw and all(b == b"\x89PNG" for b in raw)
    with pytest.raises(UsageError, match="no samples"):
        L.make_dataset(out, None, modalities=["dermoscopy"])
    with pytest.raises(UsageError, match="decode_mode"):
        L.make_dataset(out, None, decode_mode="tensor")


def test_iter_samples_is_sequential_and_complete(shard_set) -> None:
    out, idx = shard_set
    ids = _all_ids(out)
    assert ids == _all_ids(out) and len(ids) == len(set(ids)) == 36
    expected = []
    for s in idx["shards"]:
        with tarfile.open(out / s["name"]) as t:
            expected += [m.split(".")[0] for m in t.getnames() if m.endswith(".json")]
    assert ids == expected
    train = [m["sample_id"] for _, m in L.iter_samples(out, split="train", modalities=["fundus"])]
    assert len(train) == 18


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 9).save(buf, "PNG")
    return buf.getvalue()


def _add(t: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_malicious_members_are_refused_and_never_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "evil" / "shards"
    d.mkdir(parents=True)
    meta = {"sample_id": "good1", "modality": "xray", "split": "train", "label": "", "labels": [],
            "group": "", "dataset": "x", "orig_width": 8, "orig_height": 8}
    big = dict(meta, sample_id="big1")
    with tarfile.open(d / "shard-000000.tar", "w") as t:
        _add(t, "../../evil.json", b'{"pwned": true}')
        _add(t, "/etc/x.png", _png((4, 4)))
        _add(t, "a.exe", b"MZ")
        _add(t, "link.png", b"", tarfile.SYMTYPE)
        _add(t, "good1.png", _png((8, 8)))
        _add(t, "good1.json", json.dumps(meta).encode())
        _add(t, "big1.png", _png((300, 200)))  # larger than the set's max_side: a bomb stand-in
        _add(t, "big1.json", json.dumps(big).encode())
    index = {
        "shards": [{"name": "shard-000000.tar", "samples": 2, "counts": {"xray": {"train": 2}}}],
        "totals": {"samples": 2, "counts": {"xray": {"train": 2}}, "per_modality": {"xray": 2}},
        "parameters": {"max_side": 64},
    }
    (d / "index.json").write_text(json.dumps(index))
    monkeypatch.chdir(d)
    ds = L.make_dataset(d, lambda img, m: (m["sample_id"], img.size))
    assert list(ds) == [("good1", (8, 8))]
    assert ds.stats() == {"refused_members": 4, "bad_samples": 1, "bad_shards": 0}
    assert [m["sample_id"] for _, m in L.iter_samples(d)] == ["good1"]
    for p in (tmp_path / "evil.json", d.parent.parent / "evil.json", d / "a.exe", d / "link.png"):
        assert not p.exists()
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["evil", "index.json", "shard-000000.tar", "shards"]


def test_damaged_shard_is_skipped_in_training_but_fails_evaluation(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "f", 8, "fundus", "RGB")
    out = tmp_path / "sh"
    idx = write_shards([m], out, ShardParams(max_side=32, min_shards=2))
    first = out / idx["shards"][0]["name"]
    first.write_bytes(first.read_bytes()[:700])  # truncated mid-member
    ds = L.make_dataset(out, lambda img, meta: meta["sample_id"])
    got = list(ds)
    assert len(got) == idx["shards"][1]["samples"]
    assert ds.stats()["bad_shards"] == 1
    with pytest.raises(RunFailed, match="--verify"):
        list(L.iter_samples(out))


def test_read_index_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        L.read_index(tmp_path / "missing")
    with pytest.raises(UsageError, match="index.json"):
        L.read_index(tmp_path)
    (tmp_path / "index.json").write_text('{"shards": [], "totals": {"samples": 0}}')
    with pytest.raises(UsageError, match="has no samples"):
        L.read_index(tmp_path)
    (tmp_path / "index.json").write_text("not json")
    with pytest.raises(UsageError, match="not a valid"):
        L.read_index(tmp_path)
    (tmp_path / "index.json").write_text(
        '{"shards": [{"name": "shard-000000.tar", "samples": 1}], "totals": {"samples": 1}}'
    )
    with pytest.raises(UsageError, match="missing"):
        L.shard_urls(tmp_path)


def test_rank_world_reads_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_world() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_world() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UsageError):
        rank_world()


def test_resampled_stream_over_unreadable_shards_stops(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "g", 4, "fundus", "RGB")
    out = tmp_path / "sh"
    idx = write_shards([m], out, ShardParams(max_side=32, min_shards=2))
    for s in idx["shards"]:
        (out / s["name"]).write_bytes(b"\0garbage" * 100)
    ds = L.make_dataset(out, None, resampled=True)
    with pytest.raises(RunFailed, match="in a row"):
        next(iter(ds))


def test_lazy_mode_hands_over_checked_undecoded_images(tmp_path: Path) -> None:
    """decode_mode="lazy": header checked in the reader, pixels decoded by the transform; a sample
    whose pixels fail then is counted and skipped like any bad sample."""
    from midol_cli.data.jpeg_roi import EncodedImage
    from midol_cli.data.shards import encode_image

    d = tmp_path / "shards"
    d.mkdir()
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (64, 48)
    )
    jpg = encode_image(photo, 64)[1]
    meta = {"modality": "fundus", "split": "train", "label": "", "labels": [], "group": "", "dataset": "x",
            "orig_width": 64, "orig_height": 48}
    with tarfile.open(d / "shard-000000.tar", "w") as t:
        for key, data in (("good1", jpg), ("cut1", jpg[: len(jpg) // 2]), ("good2", jpg)):
            _add(t, f"{key}.jpg", data)
            _add(t, f"{key}.json", json.dumps(dict(meta, sample_id=key)).encode())
    index = {
        "shards": [{"name": "shard-000000.tar", "samples": 3, "counts": {"fundus": {"train": 3}}}],
        "totals": {"samples": 3, "counts": {"fundus": {"train": 3}}, "per_modality": {"fundus": 3}},
        "parameters": {"max_side": 64},
    }
    (d / "index.json").write_text(json.dumps(index))
    seen = list(L.make_dataset(d, lambda img, m: (type(img), img.size, img.mode), decode_mode="lazy",
                               shuffle_buffer=0))
    assert seen == [(EncodedImage, (64, 48), "RGB")] * 3  # nothing decoded: all three pass
    ds = L.make_dataset(d, lambda img, m: (m["sample_id"], img.decode_region((0, 0, 16, 16))[0].mode),
                        decode_mode="lazy", shuffle_buffer=0)
    assert list(ds) == [("good1", "RGB"), ("good2", "RGB")]
    assert ds.stats() == {"refused_members": 0, "bad_samples": 1, "bad_shards": 0}
    index["parameters"]["max_side"] = 32  # over the set's max side: refused before any decoding
    (d / "index.json").write_text(json.dumps(index))
    ds = L.make_dataset(d, lambda img, m: m["sample_id"], decode_mode="lazy")
    assert list(ds) == [] and ds.stats()["bad_samples"] == 3

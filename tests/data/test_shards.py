"""Shard writer, plan/resume, index and verification (midol_cli/data/shards.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from midol_cli.artifacts import SHARD_META_KEYS, sha256_file, stable_id
from midol_cli.data import shard_format as F
from midol_cli.data import shards as S
from midol_cli.data.manifest import empty_row, write_manifest
from midol_cli.errors import RunFailed, UsageError


def _image(rng: np.random.Generator, w: int, h: int, mode: str) -> Image.Image:
    # Smooth random content (upsampled noise): compresses like a photo, differs per sample.
    small = rng.integers(0, 256, size=(4, 4, 3 if mode == "RGB" else 1), dtype=np.uint8)
    img = Image.fromarray(small.squeeze(-1) if mode == "L" else small, mode)
    return img.resize((w, h), Image.Resampling.BILINEAR)


def make_manifest(
    tmp: Path,
    name: str,
    n: int,
    *,
    modality: str = "fundus",
    mode: str = "RGB",
    size: tuple[int, int] = (80, 60),
    splits: tuple[str, ...] = ("train", "train", "val", "test"),
    extra_rows: list[dict] | None = None,
    seed: int = 0,
) -> Path:
    """A raw folder ``tmp/raw_<name>`` with n images and its manifest ``tmp/<name>.parquet``."""
    rng = np.random.default_rng(seed)
    root = tmp / f"raw_{name}"
    rows = []
    for i in range(n):
        rel = f"c{i % 3}/img_{i:04d}.{'jpg' if mode == 'RGB' else 'png'}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, *size, mode).save(p)
        row = empty_row()
        row.update(
            sample_id=stable_id(name, rel), path=rel, modality=modality, dataset=name, layout="imagefolder",
            label=f"c{i % 3}", labels=[f"c{i % 3}"], group=f"g{i}", split=splits[i % len(splits)],
            split_source="derived", width=size[0], height=size[1], channels=3 if mode == "RGB" else 1,
            bit_depth=8, format="JPEG" if mode == "RGB" else "PNG", sha256=sha256_file(p),
            bytes=p.stat().st_size, status="ok",
        )
        rows.append(row)
    rows.extend(extra_rows or [])
    path = tmp / f"{name}.parquet"
    write_manifest(pd.DataFrame(rows), {"root": str(root.resolve()), "layout": "imagefolder"}, path)
    return path


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        return t.getnames()


def shard_keys(out: Path, index: dict) -> list[str]:
    keys = []
    for s in index["shards"]:
        keys += [m.split(".")[0] for m in tar_members(out / s["name"]) if m.endswith(".json")]
    return keys


@pytest.fixture
def two(tmp_path: Path) -> list[Path]:
    return [
        make_manifest(tmp_path, "fund", 24, modality="fundus", mode="RGB"),
        make_manifest(tmp_path, "cxr", 16, modality="xray", mode="L", size=(50, 70), seed=1),
    ]


def P(**kw) -> S.ShardParams:
    kw.setdefault("max_side", 32)
    kw.setdefault("min_shards", 4)
    return S.ShardParams(**kw)


def test_index_counts_members_and_sha(tmp_path: Path, two: list[Path]) -> None:
    out = tmp_path / "sh"
    idx = S.write_shards(two, out, P())
    assert idx["totals"]["samples"] == 40
    assert idx["totals"]["per_modality"] == {"fundus": 24, "xray": 16}
    assert idx["totals"]["per_split"] == {"train": 20, "val": 10, "test": 10}
    assert idx["totals"]["counts"]["xray"] == {"train": 8, "val": 4, "test": 4}
    assert idx["totals"]["labels"]["fundus"] == {"c0": 8, "c1": 8, "c2": 8}
    assert len(idx["shards"]) >= 4 and sum(s["samples"] for s in idx["shards"]) == 40
    assert {i["manifest_hash"] for i in idx["inputs"]} == {sha256_file(m)[:16] for m in two}
    assert idx["parameters"]["max_side"] == 32 and "midol_version" in idx["provenance"]
    assert json.loads((out / "index.json").read_text()) == json.loads(json.dumps(idx))
    for s in idx["shards"]:
        p = out / s["name"]
        assert s["sha256"] == sha256_file(p) and s["bytes"] == p.stat().st_size
        names = tar_members(p)
        assert len(names) == 2 * s["samples"]
        assert sum(s["per_modality"].values()) == s["samples"] == sum(s["per_split"].values())
    # One sample in detail: resized, encoded by mode, meta complete.
    with tarfile.open(out / idx["shards"][0]["name"]) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    for name, data in members.items():
        key, ext = name.split(".")
        if ext != "json":
            continue
        meta = json.loads(data)
        assert set(SHARD_META_KEYS) <= set(meta) and meta["sample_id"] == key
        img_ext = "jpg" if meta["modality"] == "fundus" else "png"
        img = Image.open(io.BytesIO(members[f"{key}.{img_ext}"]))
        if meta["modality"] == "fundus":
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (32, 24))
            assert (meta["orig_width"], meta["orig_height"]) == (80, 60)
        else:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (23, 32))
    # Hidden bookkeeping stays hidden; no temp files survive a clean run.
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_shuffle_is_seeded_and_deterministic(tmp_path: Path, two: list[Path]) -> None:
    a = S.write_shards(two, tmp_path / "a", P(seed=3))
    b = S.write_shards(list(reversed(two)), tmp_path / "b", P(seed=3))
    c = S.write_shards(two, tmp_path / "c", P(seed=4))
    ka, kb, kc = shard_keys(tmp_path / "a", a), shard_keys(tmp_path / "b", b), shard_keys(tmp_path / "c", c)
    assert ka == kb and [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert sorted(ka) == sorted(kc) and ka != kc
    assert ka != sorted(ka)
    # Modalities are mixed across shards, not grouped.
    assert sum(1 for s in a["shards"] if len(s["per_modality"]) == 2) >= 2


def test_parallel_workers_write_identical_shards(tmp_path: Path, two: list[Path]) -> None:
    one = S.write_shards(two, tmp_path / "w1", P(), workers=1)
    par = S.write_shards(two, tmp_path / "w2", P(), workers=2)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in par["shards"]]


def test_split_and_modality_filters(tmp_path: Path, two: list[Path]) -> None:
    idx = S.write_shards(two, tmp_path / "tr", P(split="train"))
    assert idx["totals"]["per_split"] == {"train": 20}
    idx = S.write_shards(two, tmp_path / "x", P(modalities=("xray",), split="val"))
    assert idx["totals"]["per_modality"] == {"xray": 4} and idx["totals"]["per_split"] == {"val": 4}
    with pytest.raises(UsageError, match="did you mean 'fundus'"):
        S.write_shards(two, tmp_path / "y", P(modalities=("fondus",)))
    with pytest.raises(UsageError, match="split"):
        S.write_shards(two, tmp_path / "z", P(split="training"))
    with pytest.raises(UsageError, match="no usable samples"):
        S.write_shards(two, tmp_path / "d", P(modalities=("dermoscopy",)))


def test_count_bounds_and_min_shards(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "f", 30)
    idx = S.write_shards([m], tmp_path / "a", P(max_count=4, min_shards=2))
    sizes = [s["samples"] for s in idx["shards"]]
    assert max(sizes) <= 4 and sum(sizes) == 30 and len(sizes) == 8
    idx = S.write_shards([m], tmp_path / "b", P(max_count=1000, min_shards=16))
    assert len(idx["shards"]) == 16 and {s["samples"] for s in idx["shards"]} == {1, 2}
    # Fewer samples than --min-shards: one sample per shard, no empty shards.
    small = make_manifest(tmp_path, "s", 5)
    idx = S.write_shards([small], tmp_path / "c", P(min_shards=16))
    assert [s["samples"] for s in idx["shards"]] == [1] * 5


def test_max_size_splits_shards(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "f", 12, size=(64, 64))
    limit = 16 * 1024
    idx = S.write_shards([m], tmp_path / "a", P(max_side=64, min_shards=1, max_size=limit))
    assert len(idx["shards"]) > 1 and idx["totals"]["samples"] == 12
    assert all(s["bytes"] <= limit for s in idx["shards"] if s["samples"] > 1)
    assert shard_keys(tmp_path / "a", idx) == S.make_plan(S.load_inputs([m], P()), P())["order"]


def test_duplicates_rejects_and_cross_manifest_ids(tmp_path: Path) -> None:
    dup = empty_row()
    dup.update(sample_id="dup0000000000001", path="c0/img_0000.jpg", modality="fundus", status="ok",
               split="train", duplicate_of="whatever")
    rej = empty_row()
    rej.update(sample_id="rej0000000000001", path="bad.jpg", modality="fundus", status="rejected",
               reason="truncated image")
    m = make_manifest(tmp_path, "f", 8, extra_rows=[dup, rej])
    idx = S.write_shards([m], tmp_path / "a", P())
    assert idx["totals"]["samples"] == 8 and idx["skipped"]["count"] == 0
    # Same folder ingested twice under another manifest name: same sample_ids.
    other = tmp_path / "again.parquet"
    other.write_bytes(m.read_bytes())
    with pytest.raises(UsageError, match=r"f\.parquet.*again\.parquet"):
        S.write_shards([m, other], tmp_path / "b", P())


def test_unreadable_or_changed_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "f", 10)
    root = tmp_path / "raw_f"
    (root / "c0/img_0000.jpg").write_bytes(b"\xff\xd8\xff garbage")  # changed since ingest
    (root / "c1/img_0001.jpg").unlink()
    lines: list[str] = []
    idx = S.write_shards([m], tmp_path / "a", P(), log=lines.append)
    assert idx["totals"]["samples"] == 8
    assert idx["skipped"]["count"] == 2
    reasons = {s["path"]: s["reason"] for s in idx["skipped"]["items"]}
    assert "changed since ingest" in reasons["c0/img_0000.jpg"]
    assert "not found" in reasons["c1/img_0001.jpg"]
    assert sum("skipped" in x for x in lines) == 2
    S.verify_shards(tmp_path / "a")  # skipped samples leave a consistent set
    assert all(c.ok for c in S.verify_shards(tmp_path / "a"))


def test_every_sample_failing_is_a_run_failure(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "f", 3)
    for p in (tmp_path / "raw_f").rglob("*.jpg"):
        p.unlink()
    with pytest.raises(RunFailed, match="none of the 3"):
        S.write_shards([m], tmp_path / "a", P())
    # no index and no shards: nothing that verifies as an (empty) set, nothing that blocks a repair
    assert not (tmp_path / "a" / S.INDEX_NAME).exists()
    assert not list((tmp_path / "a").glob("*shard-*"))
    with pytest.raises(UsageError):
        S.load_index(tmp_path / "a")
    m2 = make_manifest(tmp_path, "f", 3)  # the raw files restored
    assert m2 == m
    idx = S.write_shards([m], tmp_path / "a", P())
    assert idx["totals"]["samples"] == 3 and all(c.ok for c in S.verify_shards(tmp_path / "a"))


def test_changed_inputs_never_lose_the_complete_set_when_interrupted(tmp_path: Path, two: list[Path]) -> None:
    out = tmp_path / "sh"
    old_idx = S.write_shards(two, out, P(min_shards=8))
    old_bytes = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}

    def kill(done: int, total: int) -> None:
        if done == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.write_shards(two, out, P(min_shards=3, seed=9), on_progress=kill)
    # the old set is whole, with its index, and verifies
    assert S.load_index(out)["plan_hash"] == old_idx["plan_hash"]
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.tar")} == old_bytes
    assert all(c.ok for c in S.verify_shards(out))
    # the re-run completes the new set and swaps it in
    new_idx = S.write_shards(two, out, P(min_shards=3, seed=9))
    assert new_idx["plan_hash"] != old_idx["plan_hash"] and len(new_idx["shards"]) == 3
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [r["name"] for r in new_idx["shards"]]
    assert all(c.ok for c in S.verify_shards(out))
    assert not (out / S.STAGING_NAME).exists()


def test_an_interrupted_swap_is_finished_by_the_next_run(
    tmp_path: Path, two: list[Path], monkeypatch
) -> None:
    out = tmp_path / "sh"
    S.write_shards(two, out, P(min_shards=8))
    real = os.replace
    calls = {"n": 0}

    def flaky(a, b):
        if Path(a).parent.name == S.STAGING_NAME and Path(b).parent == out:  # the swap's moves only
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # killed in the middle of moving the new files in
        return real(a, b)

    monkeypatch.setattr(S.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        S.write_shards(two, out, P(min_shards=3, seed=9))
    monkeypatch.setattr(S.os, "replace", real)
    assert (out / S.STAGING_NAME / S.INDEX_NAME).is_file()  # the complete new set is still there
    idx = S.write_shards(two, out, P(min_shards=3, seed=9))
    assert len(idx["shards"]) == 3 and all(c.ok for c in S.verify_shards(out))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [r["name"] for r in idx["shards"]]


def test_refuses_output_inside_raw_folder_and_foreign_folders(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "f", 4)
    with pytest.raises(UsageError, match="inside the raw data folder"):
        S.write_shards([m], tmp_path / "raw_f" / "shards", P())
    assert not (tmp_path / "raw_f" / "shards").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard-000000.tar").write_bytes(b"x")
    with pytest.raises(UsageError, match="did not plan"):
        S.write_shards([m], foreign, P())
    assert (foreign / "shard-000000.tar").read_bytes() == b"x"


class _Killed(BaseException):
    pass


def test_killed_run_leaves_no_partial_shard_and_rerun_completes(
    tmp_path: Path, two: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sh"
    params = P(min_shards=6)
    full = S.write_shards(two, tmp_path / "ref", params)
    real_finish = S._ShardWriter.finish
    finished: list[str] = []

    def dying_finish(self, end):
        if len(finished) == 2:
            # The process dies mid-shard: the temp file stays behind as after SIGKILL.
            self.tar.close()
            raise _Killed
        rec = real_finish(self, end)
        finished.append(rec["name"])
        return rec

    monkeypatch.setattr(S._ShardWriter, "finish", dying_finish)
    monkeypatch.setattr(S._ShardWriter, "abort", lambda self: None)
    with pytest.raises(_Killed):
        S.write_shards(two, out, params)
    monkeypatch.undo()

    assert not (out / "index.json").exists()
    assert (
        sorted(p.name for p in out.glob("shard-*.tar"))
        == finished
        == ["shard-000000.tar", "shard-000001.tar"]
    )
    assert list(out.glob(".shard-000002.tar.*.tmp")), "the interrupted shard stays under a temp name"
    for name in finished:  # every final name is a complete shard
        ref = next(s for s in full["shards"] if s["name"] == name)
        assert sha256_file(out / name) == ref["sha256"]
    with pytest.raises(UsageError, match="index.json"):
        S.verify_shards(out)

    kept_ino = {n: (out / n).stat().st_ino for n in finished}
    written: list[str] = []
    monkeypatch.setattr(
        S._ShardWriter, "finish", lambda self, end: written.append(self.name) or real_finish(self, end)
    )
    idx = S.write_shards(two, out, params)
    assert written == [s["name"] for s in full["shards"][2:]]
    assert {n: (out / n).stat().st_ino for n in finished} == kept_ino
    assert [s["sha256"] for s in idx["shards"]] == [s["sha256"] for s in full["shards"]]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(c.ok for c in S.verify_shards(out))


def test_rerun_with_new_parameters_rewrites_the_set(tmp_path: Path, two: list[Path]) -> None:
    out = tmp_path / "sh"
    S.write_shards(two, out, P(min_shards=8))
    idx = S.write_shards(two, out, P(min_shards=3, seed=9))
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s["name"] for s in idx["shards"]]
    assert len(idx["shards"]) == 3
    assert all(c.ok for c in S.verify_shards(out))
    # Same plan again: nothing is rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    S.write_shards(two, out, P(min_shards=3, seed=9))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == before


def test_verify_detects_flipped_byte_and_foreign_members(tmp_path: Path, two: list[Path]) -> None:
    out = tmp_path / "sh"
    idx = S.write_shards(two, out, P())
    assert all(c.ok for c in S.verify_shards(out))
    target = out / idx["shards"][1]["name"]
    data = bytearray(target.read_bytes())
    data[2000] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = [c for c in S.verify_shards(out) if not c.ok]
    assert [c.name for c in bad] == [target.name]
    assert any("sha256" in p for p in bad[0].problems)

    # A member that does not belong, with the index "fixed up" so that only the member check fails.
    third = out / idx["shards"][2]["name"]
    with tarfile.open(third, "a") as t:
        info = tarfile.TarInfo("../evil.exe")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    doc = json.loads((out / "index.json").read_text())
    doc["shards"][2]["sha256"] = sha256_file(third)
    doc["shards"][2]["bytes"] = third.stat().st_size
    (out / "index.json").write_text(json.dumps(doc))
    bad = {c.name: c for c in S.verify_shards(out) if not c.ok}
    assert "unexpected members" in " ".join(bad[third.name].problems)


def test_verify_requires_the_index(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        S.verify_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="index.json"):
        S.verify_shards(tmp_path / "empty")


def test_member_names_and_encoding_helpers() -> None:
    assert S.split_member_name("ab12_x-Y.PNG") == ("ab12_x-Y", "png")
    for bad in (
        "../../evil.json",
        "/etc/x.png",
        "a.exe",
        "a/b.png",
        "a..png",
        "a.b.png",
        ".json",
        "a\\b.jpg",
    ):
        assert S.split_member_name(bad) is None, bad
    ext, data = S.encode_image(Image.new("L", (10, 20), 7), 512)
    assert ext == "png" and Image.open(io.BytesIO(data)).size == (10, 20)  # never upscaled
    ext, data = S.encode_image(Image.new("RGB", (1000, 333), (1, 2, 3)), 100)
    assert ext == "jpg" and Image.open(io.BytesIO(data)).size == (100, 33)
    assert S.parse_size("256MB") == 256 << 20 and S.parse_size("1.5k") == 1536 and S.parse_size("100") == 100
    with pytest.raises(UsageError):
        S.parse_size("lots")


def _tar(
    path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT, **kinds: bytes
) -> Path:
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(data))
        for name, kind in kinds.items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            t.addfile(info)
    return path


def _read_all(path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    return list(S.iter_tar_samples(path, on_refused=lambda n, why: refused.append((n, why)))), refused


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    rng = np.random.default_rng(fmt)
    members = [(f"k{i // 2}.{'jpg' if i % 2 == 0 else 'json'}", rng.bytes(int(rng.integers(0, 3000))))
               for i in range(10)]
    members.append(("k9.json", b""))  # empty member, then another key
    path = _tar(tmp_path / "a.tar", members, fmt, **{"lnk.png": tarfile.SYMTYPE, "d": tarfile.DIRTYPE})
    samples, refused = _read_all(path)
    with tarfile.open(path) as t:  # the reference reader
        ref = [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isreg()]
    got = [(f"{s['__key__']}.{ext}", s[ext]) for s in samples for ext in ("jpg", "json") if ext in s]
    assert got == ref == members
    assert refused == [("lnk.png", "not a regular file"), ("d/", "not a regular file")]  # as stored


def test_tar_reader_refuses_extension_headers_and_big_members(tmp_path: Path, monkeypatch) -> None:
    long = "x" * 120 + ".png"  # PAX writes an extended header for it
    path = _tar(tmp_path / "p.tar", [(long, b"abc"), ("ok1.json", b"{}")], tarfile.PAX_FORMAT)
    samples, refused = _read_all(path)
    assert [s["__key__"] for s in samples] == ["ok1"] and samples[0]["json"] == b"{}"
    assert refused[0][1] == "not a regular file" and all(name != long for name, _ in refused)
    monkeypatch.setattr(F, "MAX_MEMBER_BYTES", 2)  # never read, skipped by its size
    samples, refused = _read_all(_tar(tmp_path / "b.tar", [("big1.png", b"abcdef"), ("ok1.json", b"{}")]))
    assert refused == [("big1.png", "member larger than 0 MiB")] and [s["__key__"] for s in samples] == [
        "ok1"
    ]


def test_tar_reader_rejects_damaged_archives(tmp_path: Path) -> None:
    good = _tar(tmp_path / "g.tar", [("a1.json", b"{}" * 400), ("a1.png", b"p" * 100)]).read_bytes()
    cases = {
        "checksum": good[:150] + b"9" + good[151:],  # a name/size digit changed, checksum not
        "header": good[:512 + 1024 + 100],  # cut inside the second header
        "data": good[:512 + 300],  # cut inside the first member's data
        "number": good[:124] + b"zzzzzzzzzzz\0" + good[136:],
    }
    for what, blob in cases.items():
        (tmp_path / f"{what}.tar").write_bytes(blob)
        with pytest.raises(tarfile.ReadError):
            _read_all(tmp_path / f"{what}.tar")
    assert len(_read_all(tmp_path / "g.tar")[0]) == 1
    (tmp_path / "empty.tar").write_bytes(b"")
    assert _read_all(tmp_path / "empty.tar") == ([], [])
    assert F._tar_number(b"0000644\0") == 0o644 and F._tar_number(b"\0" * 8) == 0
    assert F._tar_number(b"\x80" + (70_000).to_bytes(11, "big")) == 70_000
    with pytest.raises(tarfile.ReadError):
        F._tar_number(b"\xff" * 12)


def test_every_file_of_a_shard_set_gets_the_umask_mode(tmp_path: Path, two: list[Path]) -> None:
    """Shard tars were 0600 (mkstemp, renamed into place) while index.json was 0644 (issue 25.9)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "sh"
        S.write_shards(two, out, P())
    finally:
        os.umask(old)
    files = [p for p in out.iterdir() if p.is_file()]
    assert any(p.suffix == ".tar" for p in files) and (out / "index.json") in files
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}

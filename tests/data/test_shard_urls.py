"""Shard specs as WebDataset users write them: brace lists, file: and pipe: URLs (midol_cli/data/urls.py)."""

from __future__ import annotations

import io
import itertools
import tarfile
import time
from pathlib import Path

import pytest

from midol_cli.data import loader as L
from midol_cli.data import shards as S
from midol_cli.data import urls as U
from midol_cli.errors import UsageError
from tests.data.test_shards import make_manifest


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """16 samples (12 fundus JPEG + 4 xray PNG; train/val/test) in 4 shards."""
    tmp = tmp_path_factory.mktemp("urls")
    ms = [make_manifest(tmp, "fund", 12, size=(40, 30)),
          make_manifest(tmp, "cxr", 4, modality="xray", mode="L", size=(40, 30), seed=1)]
    out = tmp / "shards"
    return out, S.write_shards(ms, out, S.ShardParams(max_side=32, min_shards=4, seed=2))


def _ids(samples) -> list[str]:
    return [meta["sample_id"] for _, meta in samples]


def _pipe_spec(out: Path, n: int) -> str:
    return f"pipe:cat {out.resolve()}/shard-{{000000..{n - 1:06d}}}.tar"


# ------------------------------------------------------------------ parsing


def test_brace_expansion_known_answers() -> None:
    assert U.expand_braces("shards-{000000..000002}.tar") == ["shards-000000.tar", "shards-000001.tar",
                                                              "shards-000002.tar"]
    assert len(U.expand_braces("shards-{000000..000127}.tar")) == 128
    assert U.expand_braces("shards-{000000..000127}.tar")[-1] == "shards-000127.tar"
    assert U.expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert U.expand_braces("x{0..4..2}") == ["x0", "x2", "x4"]
    assert U.expand_braces("plain.tar") == ["plain.tar"]
    assert U.split_spec("a{0..1}.tar::b.tar") == ["a0.tar", "a1.tar", "b.tar"]
    assert U.split_spec(["a{0..1}.tar", Path("b.tar")]) == ["a0.tar", "a1.tar", "b.tar"]
    for bad in ("shard-{}.tar", "shard-{1..}.tar", "shard-{..}.tar", "shard-{1..3.tar"):
        with pytest.raises(UsageError, match="brace"):
            U.expand_braces(bad)
    with pytest.raises(UsageError, match="empty"):
        U.split_spec(" :: ")


def test_urls_normalised_and_bad_schemes_say_what_to_write(tmp_path: Path) -> None:
    assert U.normalise("file:///data/set/shard-000001.tar") == "/data/set/shard-000001.tar"
    assert U.normalise("file:rel/shard-000001.tar") == "rel/shard-000001.tar"
    assert U.normalise("pipe:cat x.tar") == "pipe:cat x.tar"
    assert U.normalise("set/shard-000001.tar") == "set/shard-000001.tar"
    cases = {
        "s3://b/set/shard-000000.tar": "pipe:aws s3 cp s3://b/set/shard-000000.tar -",
        "gs://b/shard-000000.tar": "pipe:gsutil cat gs://b/shard-000000.tar",
        "https://h/shard-000000.tar": "pipe:curl -s -L --fail https://h/shard-000000.tar",
        "hf://x/y": "pipe:CMD",
    }
    for url, instead in cases.items():
        with pytest.raises(UsageError) as e:
            U.resolve(url)
        assert instead in str(e.value) and "\n" not in str(e.value)
    for empty in ("pipe:", "pipe:   "):
        with pytest.raises(UsageError, match="no command"):
            U.resolve(empty)
    with pytest.raises(UsageError, match="names another host"):
        U.normalise("file://otherhost/x.tar")
    with pytest.raises(UsageError, match="does not exist"):
        U.resolve(f"{tmp_path}/shard-{{000000..000001}}.tar")
    assert U.shard_name_of("pipe:aws s3 cp s3://b/set/shard-000007.tar -") == "shard-000007.tar"
    assert U.shard_name_of("pipe:curl -s 'https://h/set/shard-000003.tar?sig=1'") == "shard-000003.tar"
    assert U.shard_name_of("pipe:generate") is None


# ------------------------------------------------------------------ sources


def test_pipe_cat_and_file_urls_give_the_same_samples_as_the_folder(shard_set) -> None:
    out, idx = shard_set
    n = len(idx["shards"])
    want = _ids(L.iter_samples(out))
    assert len(want) == idx["totals"]["samples"] == 16
    assert _ids(L.iter_samples(_pipe_spec(out, n))) == want
    file_spec = "::".join(f"file://{(out / s['name']).resolve()}" for s in idx["shards"])
    assert _ids(L.iter_samples(file_spec)) == want
    assert [m["sample_id"] for m in L.iter_metadata(_pipe_spec(out, n))] == \
           [m["sample_id"] for m in L.iter_metadata(out)]
    # Byte for byte the same grouped samples as the local fast path.
    local = list(U.iter_url_samples(str(out / "shard-000001.tar")))
    piped = list(U.iter_url_samples(f"pipe:cat {out / 'shard-000001.tar'}"))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in piped] == \
           [{k: v for k, v in s.items() if k != "__url__"} for s in local]


def test_index_use_follows_the_spec(shard_set, tmp_path: Path) -> None:
    out, idx = shard_set
    n = len(idx["shards"])
    # Local files of one folder with index.json: the counts are known and the shards filtered by them.
    local = L.make_dataset(f"{out}/shard-{{000000..{n - 1:06d}}}.tar", None, modalities=["xray"])
    assert local.num_samples == idx["totals"]["per_modality"]["xray"] == 4
    assert local.num_shards == sum(1 for s in idx["shards"] if s["per_modality"].get("xray"))
    # pipe: without an index: unknown count, every shard read, filtered per sample.
    piped = L.make_dataset(_pipe_spec(out, n), None, modalities=["xray"])
    assert piped.num_samples is None and piped.num_shards == n
    with pytest.raises(UsageError, match="count is unknown"):
        L.count_samples(_pipe_spec(out, n))
    # ... and with a local copy of the index named in the spec.
    copy = tmp_path / "copy" / "index.json"
    copy.parent.mkdir()
    copy.write_bytes((out / "index.json").read_bytes())
    named = L.make_dataset(f"{copy}::{_pipe_spec(out, n)}", None, modalities=["xray"])
    assert named.num_samples == 4 and named.num_shards == local.num_shards
    assert L.shard_index_path(f"{copy}::{_pipe_spec(out, n)}") == copy
    assert L.shard_index_path(out) == out / "index.json" and L.shard_index_path(_pipe_spec(out, n)) is None
    assert (
        L.count_samples(f"{copy}::{_pipe_spec(out, n)}", split="train") == idx["totals"]["per_split"]["train"]
    )
    with pytest.raises(UsageError, match="does not list"):
        L.make_dataset(f"{copy}::pipe:cat somewhere/other.tar", None)
    with pytest.raises(UsageError, match="shards beside it"):
        L.make_dataset(str(copy), None)


def test_filters_without_an_index_act_per_sample(shard_set) -> None:
    out, idx = shard_set
    spec = _pipe_spec(out, len(idx["shards"]))
    for mods, split in ((["xray"], None), (["fundus"], "val"), (None, "train")):
        assert _ids(L.iter_samples(spec, split=split, modalities=mods)) == \
               _ids(L.iter_samples(out, split=split, modalities=mods))


def test_url_list_streams_resampled(shard_set) -> None:
    out, idx = shard_set
    want = set(_ids(L.iter_samples(out)))
    ds = L.make_dataset(_pipe_spec(out, len(idx["shards"])), None, resampled=True, shuffle_buffer=4, seed=1)
    got = [meta["sample_id"] for _, meta in itertools.islice(iter(ds), 60)]
    assert len(got) == 60 and set(got) <= want and len(set(got)) >= 8  # infinite draws over the whole set
    ds2 = L.make_dataset(_pipe_spec(out, len(idx["shards"])), None, resampled=True, shuffle_buffer=4, seed=1)
    assert [m["sample_id"] for _, m in itertools.islice(iter(ds2), 60)] == got  # seeded, reproducible


def test_failing_pipe_is_a_damaged_shard(shard_set) -> None:
    out, _ = shard_set
    good = f"pipe:cat {out / 'shard-000000.tar'}"
    n_good = len(list(U.iter_url_samples(good)))
    with pytest.raises(U.PipeFailed, match="status 3"):
        list(U.iter_url_samples("pipe:sh -c 'echo no such bucket >&2; exit 3'"))
    with pytest.raises(U.PipeFailed, match="no such bucket"):
        list(U.iter_url_samples("pipe:echo no such bucket >&2; exit 3"))
    # A stream that was whole but whose command then failed is still reported.
    with pytest.raises(U.PipeFailed):
        list(U.iter_url_samples(f"pipe:cat {out / 'shard-000000.tar'}; exit 2"))
    # Cut short by the failing command: the exit status is the reason given, not the truncated tar.
    with pytest.raises(U.PipeFailed, match="status 4"):
        list(U.iter_url_samples(f"pipe:head -c 1600 {out / 'shard-000000.tar'}; exit 4"))
    ds = L.make_dataset(f"pipe:false::{good}::pipe:sh -c 'exit 3'", None, shuffle_buffer=0)
    assert len(list(ds)) == n_good
    assert ds.stats()["bad_shards"] == 2
    with pytest.raises(Exception, match="--verify"):
        list(L.iter_samples(f"{good}::pipe:false"))


def test_pipe_never_deadlocks_and_is_killed_on_close(shard_set) -> None:
    out, _ = shard_set
    shard = out / "shard-000000.tar"
    # 1 MB on stderr before the tar: an unread stderr pipe would block the command forever.
    noisy = f"pipe:head -c 1000000 /dev/zero >&2; cat {shard}"
    assert len(list(U.iter_url_samples(noisy))) == len(list(U.iter_url_samples(str(shard))))
    # Abandoned after one sample: the still-running command is killed, not waited for.
    it = U.iter_url_samples(f"pipe:cat {shard}; exec sleep 60")
    next(it)
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 10


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_unsafe_members_refused_through_pipe(shard_set, tmp_path: Path) -> None:
    out, _ = shard_set
    good = next(iter(U.iter_url_samples(str(out / "shard-000000.tar"))))
    img_ext = "jpg" if "jpg" in good else "png"
    evil_dir = tmp_path / "work"
    evil_dir.mkdir()
    tar = evil_dir / "shard-000000.tar"
    tar.write_bytes(
        _tar(
            [
                ("../evil.json", b'{"x": 1}'),
                ("/abs.json", b"{}"),
                ("ok.sh", b"rm -rf /"),
                (f"{good['__key__']}.{img_ext}", good[img_ext]),
                (f"{good['__key__']}.json", good["json"]),
            ]
        )
    )
    refused: list[tuple[str, str]] = []
    got = list(
        U.iter_url_samples(
            f"pipe:cd {evil_dir} && cat shard-000000.tar", on_refused=lambda m, w: refused.append((m, w))
        )
    )
    assert [s["__key__"] for s in got] == [good["__key__"]]
    assert refused == [
        ("../evil.json", "unsafe name"),
        ("/abs.json", "unsafe name"),
        ("ok.sh", "unexpected extension"),
    ]
    assert not (tmp_path / "evil.json").exists() and sorted(p.name for p in evil_dir.iterdir()) == [
        "shard-000000.tar"
    ]
    ds = L.make_dataset(f"pipe:cat {tar}", None, shuffle_buffer=0)
    assert [m["sample_id"] for _, m in ds] == [good["__key__"]]
    assert ds.stats()["refused_members"] == 3

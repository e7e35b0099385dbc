"""The embedding cache is keyed on the data actually read: a truncated, corrupted or replaced shard set
is never served the healthy set's embeddings, and a result with damaged samples is not cached."""

import shutil

import pytest

from midol_cli.errors import RunFailed, UsageError
from midol_cli.eval.embed import data_identity, embed
from tests.pipeline import build_pipeline
from tests.train.test_segment import tiny_swin_export


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIDOL_CACHE_DIR", str(base / "cache"))
    p = build_pipeline(base / "data", per_class=3, modalities=("oct", "pathology"))
    from midol_cli.eval.models import load_eval_model

    model = load_eval_model(f"random:{tiny_swin_export(base / 'tiny' / 'encoder.safetensors')}")
    yield {"base": base, "shards": p["shards"], "model": model}
    mp.undo()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_second_embed_of_the_same_set_is_a_cache_hit(setup, tmp_path):
    shards = _copy(setup["shards"], tmp_path / "s")
    a = embed(setup["model"], shards, batch_size=8, workers=0)
    b = embed(setup["model"], shards, batch_size=8, workers=0)
    assert (a.attrs["cache"], b.attrs["cache"]) == ("miss", "hit") and len(a) == len(b) == 24


def test_a_truncated_shard_is_not_served_the_healthy_sets_embeddings(setup, tmp_path):
    shards = _copy(setup["shards"], tmp_path / "s")
    healthy = embed(setup["model"], shards, batch_size=8, workers=0)
    key = data_identity(shards)
    tar = sorted(shards.glob("*.tar"))[0]
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 3])
    assert data_identity(shards) != key
    try:
        df = embed(setup["model"], shards, batch_size=8, workers=0)
    except RunFailed:
        return  # an unreadable shard stops the evaluation: also not the healthy set
    assert df.attrs["cache"] == "miss" and len(df) < len(healthy)


def test_a_corrupted_sample_is_counted_and_not_cached(setup, tmp_path):
    from tests.pipeline import zero_first_image

    shards = _copy(setup["shards"], tmp_path / "s")
    embed(setup["model"], shards, batch_size=8, workers=0)
    zero_first_image(sorted(shards.glob("*.tar"))[0])  # same size, same name, undecodable
    df = embed(setup["model"], shards, batch_size=8, workers=0)
    assert df.attrs["cache"] == "miss" and df.attrs["skipped"] == 1 and len(df) == 23
    again = embed(setup["model"], shards, batch_size=8, workers=0)
    assert again.attrs["cache"] == "miss" and again.attrs["skipped"] == 1  # not cached: damage reported again


def test_damage_is_counted_with_worker_processes_too(setup, tmp_path):
    import io
    import tarfile

    shards = _copy(setup["shards"], tmp_path / "s")
    tar = sorted(shards.glob("*.tar"))[0]
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for i, (m, blob) in enumerate(members):
            if blob is not None and i < 4 and not m.name.endswith(".json"):
                blob = b"junk" * 10
                m.size = len(blob)
            tf.addfile(m, io.BytesIO(blob) if blob is not None else None)
    tar.write_bytes(out.getvalue())
    df = embed(setup["model"], shards, batch_size=8, workers=2, use_cache=False)
    assert df.attrs["skipped"] == 2 and len(df) == 22


def test_a_manifest_file_damaged_after_ingest_is_skipped_and_counted(setup, tmp_path):
    """Manifest rows go through the one manifest dataset (data.rows): an unreadable file is left out and
    counted, never embedded as a blank image. The cache key covers the raw files (embedding re-reads
    them), so the healthy result is not served, and the damaged one is not cached."""
    from midol_cli.data.ingest import ingest_folder

    raw = _copy(setup["base"] / "data" / "raw" / "oct", tmp_path / "oct")
    man = tmp_path / "oct.parquet"
    ingest_folder(raw, "oct", out=man, workers=1, seed=0)
    n = len(embed(setup["model"], man, batch_size=4, workers=0))
    victim = sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg", ".jpeg"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    df = embed(setup["model"], man, batch_size=4, workers=0)
    assert df.attrs["skipped"] == 1 and len(df) == n - 1 and df.attrs["cache"] == "miss"
    assert embed(setup["model"], man, batch_size=4, workers=0).attrs["skipped"] == 1  # reported again


def test_embed_names_what_it_left_out(setup, tmp_path, monkeypatch, capsys):
    """issue 25.15: `midol embed` said "see the warnings above" when no warning had been printed; the
    count, the reasons and an example are in the table's attrs and in the command's one line."""
    import sys

    from midol_cli.cli import main
    from midol_cli.data.ingest import ingest_folder
    from tests.train.test_segment import tiny_swin_export

    raw = _copy(setup["base"] / "data" / "raw" / "oct", tmp_path / "oct")
    man = tmp_path / "oct.parquet"
    ingest_folder(raw, "oct", out=man, workers=1, seed=0)
    victim = sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg", ".jpeg"))[0]
    victim.unlink()
    df = embed(setup["model"], man, batch_size=4, workers=0)
    assert df.attrs["dropped"]["count"] == 1 and df.attrs["dropped"]["reasons"] == {"file not found": 1}
    assert df.attrs["dropped"]["examples"] == [victim.relative_to(raw).as_posix()]
    weights = tiny_swin_export(tmp_path / "tiny" / "encoder.safetensors")
    monkeypatch.setattr(sys, "argv", ["midol", "embed", "--weights", f"random:{weights}", "--data", str(man),
                                      "--out", str(tmp_path / "e.parquet"), "--workers", "0"])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert ex.value.code in (0, None), text
    assert "warnings above" not in text
    assert "1 damaged or unreadable sample(s) left out (1 file not found)" in text
    assert victim.name in text


def test_embed_takes_every_shard_url_form_data_shards_takes(setup, tmp_path):
    """issue 25.19: a brace list, file: and pipe: URLs were refused ("data '...' does not exist"); they
    embed the same images as the shard dir, and s3:// gets data.shards' one-line error."""
    shards = _copy(setup["shards"], tmp_path / "s")
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    n = len(names)
    whole = embed(setup["model"], shards, batch_size=8, workers=0, use_cache=False)
    first, last = names[0][6:12], names[-1][6:12]
    forms = [f"{shards}/shard-{{{first}..{last}}}.tar", "::".join(f"file://{shards / x}" for x in names),
             "::".join(f"pipe:cat {shards / x}" for x in names)]
    for spec in forms:
        df = embed(setup["model"], spec, batch_size=8, workers=0)
        assert sorted(df["sample_id"]) == sorted(whole["sample_id"]), spec
    assert n > 1
    with pytest.raises(UsageError, match=r"cannot read 's3:' URLs directly.*pipe:aws s3 cp"):
        embed(setup["model"], "s3://bucket/shard-{000000..000003}.tar", batch_size=8, workers=0)
    with pytest.raises(UsageError, match=r"does not exist; pass a manifest \(\.parquet\), a shard dir or "
                                         r"shard"):
        embed(setup["model"], tmp_path / "nope", batch_size=8, workers=0)

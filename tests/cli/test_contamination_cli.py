"""`midol contamination` through the real CLI: md and json output, --out CSV, --fail-on-overlap, and
one-line errors for bad input."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from tests.conftest import one_line_error, run_midol
from tests.eval.test_contamination import make_planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("cli_planted"))


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_markdown_and_csv(planted, tmp_path):
    out = tmp_path / "sub" / "pairs.csv"
    res = run_midol(
        "contamination", planted["pre"], "--against", planted["test"], "--out", out, env=ENV, check=True
    )
    assert "| 30 | 2 | 4 | 6 | 0 |" in res.stdout
    assert (
        res.stdout.strip().splitlines()[-1].startswith("contamination: 6 of 30 test images (2 exact, 4 near")
    )
    pairs = pd.read_csv(out)
    assert list(pairs.columns) == [
        "test_manifest",
        "test_path",
        "pretrain_path",
        "kind",
        "distance",
        "matches",
    ]
    assert sorted(pairs["kind"]) == ["exact"] * 2 + ["near"] * 4 and (pairs["distance"] <= 4).all()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_json_and_fail_on_overlap(planted):
    res = run_midol(
        "contamination",
        planted["pre"],
        "--against",
        planted["test"],
        "--against",
        planted["pre"],
        "--format",
        "json",
        "--radius",
        "3",
        "--splits",
        "test,train,val",
        env=ENV,
        check=True,
    )
    d = json.loads(res.stdout)
    assert d["radius"] == 3 and d["splits"] == ["test", "train", "val"] and len(d["reports"]) == 2
    # The pre-training manifest against itself: every image is its own exact copy.
    assert d["reports"][1]["exact"] == d["reports"][1]["checked"] == d["pretrain_images"] == 24
    assert {"test_path", "pretrain_path", "kind", "distance"} <= set(d["reports"][0]["pairs"][0])

    res = run_midol(
        "contamination", planted["pre"], "--against", planted["test"], "--fail-on-overlap", env=ENV
    )
    assert res.returncode == 1 and "| 30 | 2 | 4 | 6 | 0 |" in res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("error: contamination: 6 of 30")
    # No overlap (the train split of the test folder is empty): exit 0 even with --fail-on-overlap.
    res = run_midol(
        "contamination",
        planted["pre"],
        "--against",
        planted["test"],
        "--splits",
        "train",
        "--fail-on-overlap",
        env=ENV,
        check=True,
    )
    assert "contamination: 0 of 0 test images" in res.stdout


def test_bad_input_is_one_line(planted, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    cases = [
        ((tmp_path / "missing", "--against", planted["test"]), "does not exist"),
        ((folder, "--against", planted["test"]), "neither a shard dir"),
        ((planted["pre"], "--against", tmp_path / "missing.parquet"), "does not exist"),
        ((planted["pre"], "--against", not_parquet), "not a readable Parquet file"),
        ((planted["pre"],), "--against"),
        ((planted["pre"], "--against", planted["test"], "--format", "xml"), "--format"),
        ((planted["pre"], "--against", planted["test"], "--radius", "99"), "--radius"),
        ((planted["pre"], "--against", planted["test"], "--splits", "tset"), "--splits"),
    ]
    for args, needle in cases:
        line = one_line_error(run_midol("contamination", *args, env=ENV))
        assert needle in line, line


def test_shard_urls_as_sources(planted, tmp_path):
    """Issue 25.19: a brace list of shards is a source; s3:// is data.shards' one-line error."""
    from midol_cli.data.shards import ShardParams, write_shards

    shards = tmp_path / "shards"
    write_shards([planted["pre"]], shards, ShardParams(max_side=128, min_shards=2), workers=1)
    n = len(list(shards.glob("shard-*.tar")))
    spec = f"{shards}/shard-{{000000..{n - 1:06d}}}.tar"
    res = run_midol("contamination", spec, "--against", planted["test"], env=ENV, check=True)
    assert "| 30 | 2 | 4 | 6 | 0 |" in res.stdout
    line = one_line_error(run_midol("contamination", "s3://b/set/shard-000000.tar", "--against",
                                    planted["test"], env=ENV))
    assert "pipe:aws s3 cp s3://b/set/shard-000000.tar -" in line, line

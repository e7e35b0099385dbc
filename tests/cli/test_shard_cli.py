"""`midol shard` through the real entry point (midol_cli/cli/shard.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from midol_cli.artifacts import sha256_file, stable_id
from midol_cli.cli import main
from midol_cli.data.manifest import empty_row, write_manifest


def midol(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the console-script entry in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["midol", *args])
    with pytest.raises(SystemExit) as ex:
        main.run()
    out = capsys.readouterr()
    code = ex.value.code
    return (0 if code is None else int(code)), out.out, out.err


def _manifest(tmp: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    root = tmp / "raw"
    root.mkdir()
    rows = []
    for i in range(n):
        rel = f"img{i}.jpg"
        arr = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((64, 48)).save(root / rel)
        row = empty_row()
        row.update(sample_id=stable_id("d", rel), path=rel, modality="dermoscopy", dataset="d",
                   label="nevus" if i % 2 else "mel", labels=[], split="train" if i % 3 else "test",
                   group=rel, sha256=sha256_file(root / rel), status="ok")
        rows.append(row)
    path = tmp / "m.parquet"
    write_manifest(pd.DataFrame(rows), {"root": str(root)}, path)
    return path


def test_missing_manifest_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = midol(
        monkeypatch, capsys, "shard", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "s")
    )
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "nope.parquet" in err and "midol ingest" in err
    assert not (tmp_path / "s").exists()


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    m = _manifest(tmp_path)
    assert midol(monkeypatch, capsys, "shard")[0] == 2
    code, _, err = midol(monkeypatch, capsys, "shard", str(m))
    assert code == 2 and "--out" in err
    code, _, err = midol(monkeypatch, capsys, "shard", str(m), "--out", str(tmp_path / "raw" / "sh"))
    assert code == 2 and "inside the raw data folder" in err
    code, _, err = midol(monkeypatch, capsys, "shard", str(m), "--out", str(tmp_path / "s"), "--split", "dev")
    assert code == 2 and "--split" in err
    code, _, err = midol(monkeypatch, capsys, "shard", "--verify", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err
    (tmp_path / "half").mkdir()
    code, _, err = midol(monkeypatch, capsys, "shard", "--verify", str(tmp_path / "half"))
    assert code == 2 and "index.json" in err


def test_write_verify_and_detect_corruption(tmp_path: Path, monkeypatch, capsys) -> None:
    m = _manifest(tmp_path)
    out = tmp_path / "shards"
    code, stdout, err = midol(
        monkeypatch, capsys, "shard", str(m), "--out", str(out), "--max-side", "32", "--min-shards", "4",
        "--workers", "1", "--split", "train",
    )
    assert code == 0, err
    assert stdout == ""  # summaries go to stderr
    idx = json.loads((out / "index.json").read_text())
    assert idx["totals"]["samples"] == 8 and len(idx["shards"]) == 4
    assert idx["parameters"]["split"] == "train" and "shard" in idx["provenance"]["command"]
    assert "dermoscopy" in err and "8 samples" in err

    code, _, err = midol(monkeypatch, capsys, "shard", "--verify", str(out))
    assert code == 0, err
    assert err.count(" ok") >= 4

    victim = out / idx["shards"][2]["name"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    code, _, err = midol(monkeypatch, capsys, "shard", "--verify", str(out))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and victim.name in last and "sha256" in last


def test_a_second_shard_run_into_the_same_out_is_refused_naming_the_first(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """Issue 25.3: one writer per shard folder; the lock is released when the run ends."""
    from tests.test_locks import hold_in_child

    m = _manifest(tmp_path)
    out = tmp_path / "s"
    child = hold_in_child(out)
    try:
        code, _, err = midol(monkeypatch, capsys, "shard", str(m), "--out", str(out))
    finally:
        child.kill()
        child.wait()
    assert code == 2 and err.strip().count("\n") == 0, err
    assert f"shard folder '{out}' is being written by another midol run (pid {child.pid}" in err
    assert not (out / "index.json").exists()
    code, _, err = midol(monkeypatch, capsys, "shard", str(m), "--out", str(out))
    assert code == 0 and (out / "index.json").is_file(), err
    assert not (tmp_path / "s.lock").exists()
    # The raw-folder check comes before the lock: nothing, not even a lock, is written into raw data.
    before = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert midol(monkeypatch, capsys, "shard", str(m), "--out", str(tmp_path / "raw" / "sh"))[0] == 2
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == before

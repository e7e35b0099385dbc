"""`midol synth` through the Typer app (midol_cli/cli/synth.py)."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from midol_cli.cli.main import app

runner = CliRunner()


def test_synth_writes_the_requested_modalities_and_a_summary(tmp_path):
    out = tmp_path / "raw"
    res = runner.invoke(
        app, ["synth", str(out), *"--per-class 2 --size 32 -m fundus -m oct --corrupt 2".split()]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["fundus", "oct", "synth.json"]
    assert len(list((out / "fundus" / "train_images").glob("*.png"))) == 4 * 2 + 1
    assert len(list((out / "oct" / "OCT2017").rglob("*.jpeg"))) == 4 * 2 + 1
    record = json.loads((out / "synth.json").read_text())
    assert record["per_class"] == 2 and record["size"] == 32 and len(record["corrupt"]) == 2
    # The summary goes to stderr; stdout stays free for data.
    assert res.stdout == ""
    assert "fundus" in res.stderr and "aptos2019" in res.stderr and "damaged" in res.stderr


def test_non_empty_folder_is_refused_without_force(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    res = runner.invoke(app, ["synth", str(out), *"--per-class 1 --size 32 -m pathology".split()])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--force" in lines[0]
    assert not (out / "pathology").exists()

    res = runner.invoke(app, ["synth", str(out), *"--per-class 1 --size 32 -m pathology --force".split()])
    assert res.exit_code == 0, res.output
    assert (out / "keep.txt").read_text() == "user data"
    assert len(list((out / "pathology").rglob("*.tif"))) == 4


def test_misspelt_modality_is_a_usage_error_with_a_suggestion(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "raw"), "-m", "fondus"])
    assert res.exit_code == 2
    assert re.search(r"did you mean 'fundus'", res.stderr)
    assert not (tmp_path / "raw").exists()


def test_out_of_range_size_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "raw"), "--size", "8"])
    assert res.exit_code == 2 and "--size" in res.stderr


def test_help_shows_copy_paste_examples():
    res = runner.invoke(app, ["synth", "--help"])
    assert res.exit_code == 0
    assert "midol synth demo/raw" in res.output
    for opt in ("--seed", "--per-class", "--size", "--modality", "--workers", "--force", "--corrupt"):
        assert opt in res.output

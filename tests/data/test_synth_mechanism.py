"""The demo data's opt-in settings that test the mechanism (issue 28.6): a look-alike modality and an
imbalanced mix. Neither may change an image of the five modalities (the demo's check figure and
tests/train/test_engine_equivalence.py depend on them)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midol_cli.data.synth import generate
from midol_cli.data.synth.draw import pixel_centres
from midol_cli.errors import UsageError
from tests.conftest import run_midol

TINY = dict(seed=3, size=48)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
                     for p in sorted((folder / "train_images").glob("*.png"))])


def test_lookalike_adds_slo_drawn_like_fundus_and_changes_no_fundus_image(tmp_path):
    plain = generate(tmp_path / "plain", per_class=4, modalities=["fundus"], **TINY)
    look = generate(tmp_path / "look", per_class=4, modalities=["fundus"], lookalike=True, **TINY)
    assert list(plain["modalities"]) == ["fundus"] and list(look["modalities"]) == ["fundus", "slo"]
    assert _hashes(tmp_path / "plain" / "fundus") == _hashes(tmp_path / "look" / "fundus")
    r = look["modalities"]["slo"]
    assert r["dataset"] == "aptos2019" and r["classes"] == {"0": 4, "1": 4, "2": 4, "3": 4}
    assert json.loads((tmp_path / "look" / "synth.json").read_text())["lookalike"] == {"slo": "fundus"}
    fundus, slo = _pixels(tmp_path / "look" / "fundus"), _pixels(tmp_path / "look" / "slo")
    assert not set(_hashes(tmp_path / "look" / "slo").values()) & set(_hashes(tmp_path / "look" / "fundus")
                                                                         .values())
    # Low-level statistics close: per-channel means within 0.04 of each other (on a 0-1 scale) ...
    assert np.abs(fundus.mean((0, 1, 2)) - slo.mean((0, 1, 2))).max() < 0.04
    # ... and the camera's mark: the top centre of the field of view is cut out in every slo image.
    c = pixel_centres(fundus.shape[1])
    rows, cols = np.flatnonzero((c >= -0.92) & (c <= -0.86)), np.flatnonzero(np.abs(c) <= 0.04)
    mark = np.ix_(range(len(slo)), rows, cols)
    assert slo[mark].mean() < 0.02 and fundus[mark].mean() > 0.1
    # Named directly it is drawn too; an unknown name lists it.
    assert list(generate(tmp_path / "named", per_class=1, modalities=["slo"], **TINY)["modalities"]) == [
        "slo"]
    with pytest.raises(UsageError, match="slo"):
        generate(tmp_path / "bad", per_class=1, modalities=["sloo"], **TINY)


def test_mix_gives_a_ten_to_one_imbalance_and_changes_no_other_modality(tmp_path):
    even = generate(tmp_path / "even", per_class=10, modalities=["fundus", "oct"], size=32, seed=1)
    mixed = generate(tmp_path / "mix", per_class=10, modalities=["fundus", "oct"], size=32, seed=1,
                     mix={"oct": 1})
    assert even["modalities"]["oct"]["images"] == 40
    assert mixed["modalities"]["fundus"]["images"] == 10 * mixed["modalities"]["oct"]["images"] == 40
    assert _hashes(tmp_path / "even" / "fundus") == _hashes(tmp_path / "mix" / "fundus")
    assert json.loads((tmp_path / "mix" / "synth.json").read_text())["mix"] == {"oct": 1}
    assert "mix" not in json.loads((tmp_path / "even" / "synth.json").read_text())
    with pytest.raises(UsageError, match="not drawn"):
        generate(tmp_path / "x1", per_class=2, modalities=["fundus"], mix={"oct": 1})
    with pytest.raises(UsageError, match="out of range"):
        generate(tmp_path / "x2", per_class=2, modalities=["oct"], mix={"oct": 0})


def test_synth_cli_takes_lookalike_and_mix(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = run_midol("synth", tmp_path / "raw", "--per-class", "2", "--size", "32", "-m", "oct", "--lookalike",
                    "--mix", "slo=1", env=env)
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "raw" / "synth.json").read_text())
    assert info["modalities"]["slo"]["images"] == 4 and info["modalities"]["oct"]["images"] == 8
    bad = run_midol("synth", tmp_path / "raw2", "--mix", "oct", env=env)
    assert bad.returncode == 2 and "MODALITY=N" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

"""The second procedural family, ``midol synth --family shapes`` (issue 28.8): ImageFolder layout, three
classes per modality, deterministic for any worker count, ingested by ``--task auto`` as five 3-class tasks,
and brightness and contrast do not give the class away."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midol_cli.cli import main
from midol_cli.data.synth import MODALITIES, generate
from midol_cli.errors import UsageError

GRAY = {"xray", "oct"}


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def _midol(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["midol", *map(str, args)])
    with pytest.raises(SystemExit) as ex:
        main.run()
    code = ex.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def test_same_seed_gives_byte_identical_files_for_any_worker_count(tmp_path):
    args = dict(seed=5, per_class=2, size=32, family="shapes")
    generate(tmp_path / "a", **args)
    generate(tmp_path / "b", workers=2, **args)
    generate(tmp_path / "c", **{**args, "seed": 6})
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(ha) == 5 * 3 * 2 and ha == hb
    assert not set(ha.values()) & set(hc.values())
    # The family draws its own streams: the demo family's files of the same seed share no image with it.
    generate(tmp_path / "demo", seed=5, per_class=2, size=32, modalities=["pathology"])
    demo = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "demo").rglob("*.tif")}
    assert len(demo) == 8 and not demo & set(ha.values())


def test_layout_counts_classes_modes_and_record(tmp_path):
    out = tmp_path / "raw"
    summary = generate(out, seed=1, per_class=5, size=40, family="shapes", corrupt=2)
    assert list(summary["modalities"]) == list(MODALITIES) and summary["family"] == "shapes"
    for name, info in summary["modalities"].items():
        assert info["dataset"] == "imagefolder" and info["images"] == 15
        classes = list(info["classes"])
        assert len(classes) == 3 and info["classes"] == dict.fromkeys(classes, 5)
        for cls in classes:
            test = sorted((out / name / "test" / cls).glob("*.png"))
            assert len(test) == 1  # a fifth of each class
            assert len(list((out / name / "train" / cls).glob("*.png"))) >= 4
            img = Image.open(test[0])
            assert img.size == (40, 40) and img.mode == ("L" if name in GRAY else "RGB")
        assert not set(p.parent.parent.name for p in (out / name).rglob("*.png")) - {"train", "test"}
    assert len(summary["corrupt"]) == 2 and all("/train/" in c["path"] for c in summary["corrupt"])
    record = json.loads((out / "synth.json").read_text())
    assert record["family"] == "shapes" and record["modalities"]["oct"]["dataset"] == "imagefolder"
    # The default family is recorded too; --mix comes for free.
    mixed = generate(tmp_path / "mix", per_class=4, size=32, family="shapes", modalities=["oct", "xray"],
                     mix={"oct": 2})
    assert mixed["modalities"]["oct"]["images"] == 6 and mixed["modalities"]["xray"]["images"] == 12
    assert generate(tmp_path / "demo", per_class=1, size=32, modalities=["oct"])["family"] == "demo"


def test_ingest_with_task_auto_gives_five_three_class_tasks(tmp_path, monkeypatch, capsys):
    from midol_cli.tasks.custom import auto_tasks, read_labels_table

    raw = tmp_path / "raw"
    generate(raw, seed=2, per_class=4, size=32, family="shapes")
    mans = []
    for name in MODALITIES:
        man = tmp_path / "manifests" / f"{name}.parquet"
        code, err = _midol(monkeypatch, capsys, "ingest", raw / name, "--modality", name, "--out", man,
                           "workers=1")
        assert code == 0, err
        assert "layout imagefolder" in err
        mans.append(man)
    code, err = _midol(monkeypatch, capsys, "shard", *mans, "--out", tmp_path / "shards", "--max-side", "32")
    assert code == 0, err
    specs = auto_tasks(read_labels_table(tmp_path / "shards"), "shards")
    assert sorted(s.modality for s in specs) == sorted(MODALITIES)
    assert all(s.label_type == "multiclass" and len(s.classes) == 3 for s in specs)


def test_unknown_family_and_lookalike_are_one_line_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(UsageError, match="not a synth family"):
        generate(tmp_path / "x", family="blobs")
    with pytest.raises(UsageError, match="--lookalike"):
        generate(tmp_path / "y", family="shapes", lookalike=True)
    with pytest.raises(UsageError, match="--lookalike"):
        generate(tmp_path / "z", family="shapes", modalities=["slo"])
    for args in (["--family", "blobs"], ["--family", "shapes", "--lookalike"]):
        code, err = _midol(monkeypatch, capsys, "synth", tmp_path / "out", "--per-class", "1", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "out").exists()


def _heldout(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Held-out accuracy of statistic(s) ``x``: 3-class (depth-2 tree) and the best pair (stump)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    x = x.reshape(len(y), -1)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    three = cross_val_score(DecisionTreeClassifier(max_depth=2, random_state=0), x, y, cv=cv).mean()
    pair = max(cross_val_score(DecisionTreeClassifier(max_depth=1, random_state=0), x[(y == a) | (y == b)],
                               y[(y == a) | (y == b)], cv=cv).mean()
               for a, b in itertools.combinations(sorted(set(y)), 2))
    return float(three), float(pair)


# Chance is 1/3 and 1/2. With 120 images a held-out accuracy has a standard error of ~0.043 (3-class) and
# ~0.056 (a pair of 80): 0.52 is ~4 SE above 3-class chance; 0.75 leaves room for the best of 3 noisy pairs.
MAX_THREE, MAX_PAIR = 0.52, 0.75


def test_brightness_and_contrast_do_not_give_the_class_away(tmp_path):
    out = tmp_path / "raw"
    generate(out, seed=11, per_class=40, size=64, family="shapes")
    for name in MODALITIES:
        paths = sorted((out / name).rglob("*.png"))
        y = np.array([p.parent.name for p in paths])
        grays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in paths]
        for stat in (np.mean, np.std):
            three, pair = _heldout(np.array([stat(g) for g in grays]), y)
            assert three <= MAX_THREE and pair <= MAX_PAIR, (name, stat.__name__, three, pair)

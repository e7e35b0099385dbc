"""Contamination check: a planted overlap (2 exact copies, 2 JPEG re-encodes, 2 half-size copies of
pre-training images among otherwise distinct test images) is found exactly, from a manifest and from
a shard set, with no false positives."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from midol_cli.data.ingest import ingest_folder
from midol_cli.data.manifest import read_manifest, write_manifest
from midol_cli.eval.contamination import check_contamination, warn_if_contaminated, write_pairs_csv

SIZE = 128
N_PRE = 24
N_TEST = 30


def natural_image(seed: int, size: int = SIZE) -> Image.Image:
    """A photo-like RGB image: smooth gradients and waves, a few blurred shapes, mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    chans = []
    for _ in range(3):
        a, b, c, f = rng.uniform(-1, 1, 4)
        wave = np.sin(2 * np.pi * (2 * c * x + 2 * f * y) + rng.uniform(0, 2 * np.pi))
        chans.append(0.5 + 0.25 * (a * x + b * y) + 0.2 * wave)
    img = Image.fromarray(np.clip(np.stack(chans, -1) * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(0, size * 0.8, 2)
        w, h = rng.uniform(size * 0.1, size * 0.4, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(size / 128))
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int = 75) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def half_size(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)


# Test image index -> (how it is made, the pre-training image it copies). The copied images are ones
# whose re-encode / half-size copy moves 2-4 hash bits, so the radius is exercised, not just 0.
PLANTED = {0: ("copy", 0), 1: ("copy", 1), 2: ("jpeg", 10), 3: ("jpeg", 15), 4: ("half", 9), 5: ("half", 19)}


def make_planted(root: Path) -> dict:
    """``root/pre`` (train/<class>/...) and ``root/test`` (test/<class>/...) image folders, ingested.

    Test images 0-5 are copies of pre-training images (``PLANTED``: 2 byte copies, 2 JPEG q75
    re-encodes, 2 half-size copies); the rest are distinct. Returns paths and the planted truth."""
    pre, test = root / "pre", root / "test"
    pre_paths = []
    for i in range(N_PRE):
        p = pre / "train" / ("a" if i % 2 else "b") / f"pre_{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        natural_image(i).save(p)
        pre_paths.append(p)
    planted = {}
    for i in range(N_TEST):
        d = test / "test" / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        how, src = PLANTED.get(i, ("new", -1))
        name = f"t_{i:02d}.{'jpg' if how == 'jpeg' else 'png'}"
        if how == "copy":
            shutil.copy(pre_paths[src], d / name)
        elif how == "jpeg":
            (d / name).write_bytes(jpeg_bytes(Image.open(pre_paths[src])))
        elif how == "half":
            half_size(Image.open(pre_paths[src])).save(d / name)
        else:
            natural_image(1000 + i).save(d / name)
        if how != "new":
            planted[name] = ("exact" if how == "copy" else "near", pre_paths[src].name)
    man = root / "manifests"
    ingest_folder(pre, "dermoscopy", layout="imagefolder", out=man / "pre.parquet", workers=1)
    ingest_folder(test, "dermoscopy", layout="imagefolder", out=man / "test.parquet", workers=1)
    return {"pre": man / "pre.parquet", "test": man / "test.parquet", "planted": planted, "root": root}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def shard_dir(planted):
    from midol_cli.data.shards import ShardParams, write_shards

    out = planted["root"] / "shards"
    write_shards([planted["pre"]], out, ShardParams(max_side=SIZE, min_shards=2), workers=1)
    return out


def found(rep) -> dict[str, tuple[str, str]]:
    return {Path(p.test_path).name: (p.kind, Path(p.pretrain_path).name) for p in rep.pairs}


def test_ingest_records_a_phash_and_reuses_it(planted, tmp_path):
    df, meta = read_manifest(planted["pre"])
    assert meta["reader_version"] >= 2  # rows carry a phash from version 2 on
    assert df["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    copy = tmp_path / "pre.parquet"
    shutil.copy(planted["pre"], copy)
    s = ingest_folder(planted["root"] / "pre", "dermoscopy", layout="imagefolder", out=copy, workers=1)
    assert (s["decoded"], s["reused"]) == (0, N_PRE)
    assert read_manifest(copy)[0]["phash"].tolist() == df["phash"].tolist()


def test_planted_overlap_found_in_a_manifest(planted):
    res = check_contamination([planted["pre"]], [planted["test"]])
    rep = res.reports[0]
    assert (rep.checked, rep.exact, rep.near, rep.no_phash) == (N_TEST, 2, 4, 0)
    assert found(rep) == planted["planted"]
    near = sorted(p.distance for p in rep.pairs if p.kind == "near")
    assert 0 < near[-1] <= 4 and res.pretrain_images == N_PRE, near
    d = res.to_dict()
    assert d["overlaps"] == 6 and d["reports"][0]["overlaps"] == 6 and json.dumps(d)
    # Only the wanted modality's rows are checked.
    assert check_contamination([planted["pre"]], [planted["test"]], modality="xray").reports[0].checked == 0
    assert check_contamination([planted["pre"]], [planted["test"]], modality="dermoscopy").overlaps == 6
    # Radius 0: only bit-identical hashes count as near; exact copies do not depend on the radius.
    rep0 = check_contamination([planted["pre"]], [planted["test"]], radius=0).reports[0]
    assert rep0.exact == 2 and rep0.near == sum(x == 0 for x in near) < 4


def test_planted_overlap_found_in_a_shard_set(planted, shard_dir):
    rep = check_contamination([shard_dir], [planted["test"]]).reports[0]
    assert (rep.checked, rep.exact, rep.near) == (N_TEST, 2, 4)
    assert found(rep) == planted["planted"]


def test_shard_set_whose_manifest_is_gone(planted, shard_dir, tmp_path):
    """Without the input manifest the stored (re-encoded) shard images are hashed: copies are near."""
    moved = tmp_path / "pre.parquet"
    shutil.move(planted["pre"], moved)
    try:
        res = check_contamination([shard_dir], [planted["test"]])
        rep = res.reports[0]
        assert (rep.exact, rep.near, res.pretrain_images, res.pretrain_unchecked) == (0, 6, N_PRE, 0)
        assert {k: v[0] for k, v in found(rep).items()} == {k: "near" for k in planted["planted"]}
        res = check_contamination([shard_dir], [planted["test"]], decode_missing=False)
        assert res.overlaps == 0 and res.pretrain_unchecked == N_PRE
    finally:
        shutil.move(moved, planted["pre"])


def test_old_manifest_without_phash_is_checked_by_sha256(planted, tmp_path):
    df, meta = read_manifest(planted["test"])
    df["phash"] = ""
    old = tmp_path / "old.parquet"
    write_manifest(df, meta, old)
    res = check_contamination([planted["pre"]], [old])
    rep = res.reports[0]
    assert (rep.exact, rep.near, rep.no_phash) == (2, 0, N_TEST - 2)


def test_splits_filter_and_csv(planted, tmp_path):
    assert check_contamination([planted["pre"]], [planted["test"]], splits=["train"]).reports[0].checked == 0
    res = check_contamination([planted["pre"]], [planted["test"]])
    out = tmp_path / "pairs.csv"
    write_pairs_csv(res, out)
    import pandas as pd

    pairs = pd.read_csv(out)
    assert len(pairs) == 6 and sorted(pairs["kind"]) == ["exact"] * 2 + ["near"] * 4


def test_probe_warning_from_run_json(planted, shard_dir, tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "encoder.safetensors").write_bytes(b"")
    (run / "run.json").write_text(json.dumps({"shards": str(shard_dir)}))
    for weights in (str(run), str(run / "export" / "encoder.safetensors"), f"midol={run}"):
        lines: list[str] = []
        rep = warn_if_contaminated(weights, planted["test"], "planted", lines.append, "dermoscopy")
        assert rep is not None and rep.overlaps == 6
        assert lines == [
            "probe: WARNING 6 of 30 test images of planted also appear in the pre-training shards "
            "(2 exact, 4 near); see midol contamination"
        ]
    lines = []
    assert warn_if_contaminated(str(run), planted["test"], "planted", lines.append, "xray").overlaps == 0
    assert warn_if_contaminated(f"random:{run}", planted["test"], "planted", lines.append) is None
    (run / "run.json").write_text(json.dumps({"shards": str(tmp_path / "gone")}))
    assert warn_if_contaminated(str(run), planted["test"], "planted", lines.append) is None
    assert lines == []


def test_only_the_split_pre_training_read_counts(planted, shard_dir, tmp_path):
    """A run that read data.split: train of a shard set never saw the set's other rows: the probe's
    check (and --source-splits) looks at those rows only."""
    from midol_cli.errors import UsageError
    from midol_cli.eval.contamination import check_contamination

    pre = read_manifest(planted["pre"])[0]
    split_of = dict(zip(pre["path"].map(lambda p: Path(p).name), pre["split"], strict=True))
    want = {
        sp: sum(split_of[src] == sp for _, src in planted["planted"].values())
        for sp in ("train", "val", "test")
    }
    assert sum(want.values()) == 6
    for sp, n in want.items():
        assert (
            check_contamination([shard_dir], [planted["test"]], source_splits=[sp]).reports[0].overlaps == n
        )
    both = check_contamination([shard_dir], [planted["test"]], source_splits=["val", "test"])
    assert both.reports[0].overlaps == want["val"] + want["test"]
    assert both.pretrain_images == int(pre["split"].isin(["val", "test"]).sum())
    with pytest.raises(UsageError, match="--source-splits"):
        check_contamination([shard_dir], [planted["test"]], source_splits=["holdout"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"shards": str(shard_dir)}))
    for sp, n in want.items():
        (run / "recipe.yaml").write_text(f"data:\n  split: {sp}\n")
        lines: list[str] = []
        assert warn_if_contaminated(str(run), planted["test"], "planted", lines.append).overlaps == n
        assert len(lines) == (1 if n else 0)
    (run / "recipe.yaml").write_text("data:\n  split: null\n")  # a run over every split saw all six
    assert warn_if_contaminated(str(run), planted["test"], "planted", lambda _m: None).overlaps == 6


def test_shard_urls_in_every_data_shards_form(planted, shard_dir):
    """Issue 25.19: SOURCES take a brace list, file: and pipe: URLs and '::'-joined URLs as data.shards does;
    each finds the planted overlap (the URLs' own index lists the input manifest; through pipe: no index is
    known, so the stored images are hashed and the copies are near)."""
    from midol_cli.errors import UsageError

    names = sorted(p.name for p in shard_dir.glob("shard-*.tar"))
    assert len(names) >= 2
    last = names[-1][len("shard-"):-len(".tar")]
    brace = f"{shard_dir}/shard-{{000000..{last}}}.tar"
    files = "::".join(f"file://{shard_dir / n}" for n in names)
    for spec in (brace, files):
        rep = check_contamination([spec], [planted["test"]]).reports[0]
        assert (rep.checked, rep.exact, rep.near) == (N_TEST, 2, 4), spec
        assert found(rep) == planted["planted"]
    pipes = "::".join(f"pipe:cat '{shard_dir / n}'" for n in names)
    res = check_contamination([pipes], [planted["test"]])
    assert (res.reports[0].exact, res.reports[0].near, res.pretrain_images) == (0, 6, N_PRE)
    assert {k: v[0] for k, v in found(res.reports[0]).items()} == {k: "near" for k in planted["planted"]}
    for bad, needle in [("s3://b/set/shard-000000.tar", "pipe:aws s3 cp"), ("gs://b/x.tar", "pipe:gsutil"),
                        ("https://h/x.tar", "pipe:curl"), (f"{shard_dir}/shard-{{000000..000099}}.tar",
                                                          "does not exist")]:
        with pytest.raises(UsageError, match=needle):
            check_contamination([bad], [planted["test"]])

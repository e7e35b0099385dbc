"""midol_cli.data.synth: layouts, determinism, grouping, balance, and that classes live in structure.

Two generated data sets are shared by the tests of this module: a small one
(6 per class, 48 px, 5 damaged files) for layout checks, and a larger one
(40 per class, 64 px) for the statistical checks, which need enough images to
tell a leak from noise.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midol_cli.data.synth import CORRUPT_KINDS, MODALITIES, generate, group_sizes
from midol_cli.data.synth import dermoscopy as derm_mod
from midol_cli.data.synth import xray as xray_mod
from midol_cli.errors import UsageError

SMALL = dict(seed=3, per_class=6, size=48, corrupt=5)
BIG = dict(seed=11, per_class=40, size=64)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_small") / "raw"
    return out, generate(out, **SMALL)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_big") / "raw"
    return out, generate(out, **BIG)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_gray(path: Path) -> np.ndarray:
    """Display intensities in [0, 1], ``[H, W]``; DICOM through its modality and VOI LUTs."""
    if path.suffix == ".dcm":
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = pydicom.dcmread(path)
        a = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
        a = a / float(2**ds.BitsStored - 1)
        return 1.0 - a if ds.PhotometricInterpretation == "MONOCHROME1" else a
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def _read_rgb(path: Path) -> np.ndarray:
    if path.suffix == ".dcm":
        g = _read_gray(path)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def _dataset(root: Path, summary: dict, name: str, single_label: bool = True):
    """(paths, labels, groups) of the good images of one modality, from the summary."""
    items = []
    for rel in summary["modalities"][name]["files"]:
        items.append(root / name / rel)
    labels, groups = _labels_groups(root, name, items)
    keep = [i for i, lab in enumerate(labels) if not single_label or "|" not in lab]
    return [items[i] for i in keep], np.array([labels[i] for i in keep]), np.array([groups[i] for i in keep])


def _labels_groups(root: Path, name: str, paths: list[Path]) -> tuple[list[str], list[str]]:
    """Labels and groups read back from the layout itself (tables and file names), not from the plan."""
    base = root / name
    if name == "fundus":
        rows = {r["id_code"]: r["diagnosis"] for r in csv.DictReader(open(base / "train.csv"))}
        return [rows[p.stem] for p in paths], [p.stem for p in paths]
    if name == "dermoscopy":
        rows = {r["image_id"]: r for r in csv.DictReader(open(base / "HAM10000_metadata.csv"))}
        return [rows[p.stem]["dx"] for p in paths], [rows[p.stem]["lesion_id"] for p in paths]
    if name == "oct":
        return [p.parent.name for p in paths], [p.name.split("-")[1] for p in paths]
    if name == "xray":
        import pandas as pd

        df = pd.read_csv(base / "Data_Entry_2017.csv", dtype=str).set_index("Image Index")
        return [df.loc[p.name, "Finding Labels"] for p in paths], [
            df.loc[p.name, "Patient ID"] for p in paths
        ]
    return [p.parent.name for p in paths], [p.stem for p in paths]


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_for_any_worker_count(tmp_path):
    args = dict(seed=5, per_class=2, size=40, corrupt=3)
    summary = generate(tmp_path / "a", **args)
    generate(tmp_path / "b", workers=2, **args)
    generate(tmp_path / "c", **{**args, "seed": 6})
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(ha) == 5 * 8 + 3 + 5 + 1  # images, damaged files, tables and split lists, synth.json
    assert ha == hb
    # Another seed changes every image (damaged files are constant text or empty by design).
    good = {f"{m}/{f}" for m, info in summary["modalities"].items() for f in info["files"]}
    images = {h for p, h in ha.items() if p in good}
    assert len(images) == 5 * 8
    assert not images & set(hc.values())


# ---------------------------------------------------------------- layouts


def test_fundus_layout_is_aptos(small):
    root, summary = small
    base = root / "fundus"
    lines = (base / "train.csv").read_text().splitlines()
    assert lines[0] == "id_code,diagnosis"
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 4 * SMALL["per_class"] + sum(c["modality"] == "fundus" for c in summary["corrupt"])
    for id_code, diag in rows:
        assert re.fullmatch(r"[0-9a-f]{12}", id_code)
        assert diag in {"0", "1", "2", "3"}
        assert (base / "train_images" / f"{id_code}.png").is_file()
    assert len({r[0] for r in rows}) == len(rows)
    assert {p.name for p in (base / "train_images").iterdir()} == {f"{r[0]}.png" for r in rows}
    good = base / summary["modalities"]["fundus"]["files"][0]
    with Image.open(good) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (48, 48))
        # Black outside the circular field of view.
        assert np.asarray(im)[0, 0].max() < 40


def test_dermoscopy_layout_is_ham10000(small):
    root, summary = small
    base = root / "dermoscopy"
    text = (base / "HAM10000_metadata.csv").read_text().splitlines()
    assert text[0] == "lesion_id,image_id,dx,dx_type,age,sex,localization"
    rows = list(csv.DictReader(io.StringIO("\n".join(text))))
    parts = Counter()
    for r in rows:
        assert re.fullmatch(r"HAM_\d{7}", r["lesion_id"])
        assert re.fullmatch(r"ISIC_\d{7}", r["image_id"])
        assert r["dx"] in derm_mod.CLASSES
        assert r["dx_type"] in {"histo", "follow_up", "consensus", "confocal"}
        assert r["age"] == "" or re.fullmatch(r"\d{1,3}\.0", r["age"])
        assert r["sex"] in {"male", "female", "unknown"}
        assert r["localization"]
        found = [p for p in derm_mod.PART_FOLDERS if (base / p / f"{r['image_id']}.jpg").is_file()]
        assert len(found) == 1
        parts[found[0]] += 1
    assert len({r["image_id"] for r in rows}) == len(rows)
    # Split by image id, roughly in half.
    assert abs(parts[derm_mod.PART_FOLDERS[0]] - parts[derm_mod.PART_FOLDERS[1]]) <= 1
    ids1 = sorted(p.stem for p in (base / derm_mod.PART_FOLDERS[0]).iterdir())
    ids2 = sorted(p.stem for p in (base / derm_mod.PART_FOLDERS[1]).iterdir())
    assert ids1[-1] < ids2[0]
    good = base / summary["modalities"]["dermoscopy"]["files"][0]
    with Image.open(good) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (48, 48))


def test_oct_layout_is_oct2017(small):
    root, summary = small
    base = root / "oct"
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    assert len(files) == 4 * SMALL["per_class"] + sum(c["modality"] == "oct" for c in summary["corrupt"])
    split_of: dict[str, set[str]] = defaultdict(set)
    for f in files:
        m = re.fullmatch(r"OCT2017/(train|test)/(CNV|DME|DRUSEN|NORMAL)/(\2)-(\d+)-(\d+)\.jpeg", f)
        assert m, f
        split_of[m.group(4)].add(m.group(1))
    assert all(len(s) == 1 for s in split_of.values()), "a patient's scans sit in one of train/test"
    assert {next(iter(s)) for s in split_of.values()} == {"train", "test"}
    good = base / summary["modalities"]["oct"]["files"][0]
    with Image.open(good) as im:
        assert (im.format, im.mode) == ("JPEG", "L")


def test_pathology_layout_is_nct_crc(small):
    root, summary = small
    base = root / "pathology" / "NCT-CRC-HE-100K"
    files = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
    assert {f.split("/")[0] for f in files} == {"ADI", "LYM", "STR", "TUM"}
    for f in files:
        assert re.fullmatch(r"(ADI|LYM|STR|TUM)/\1-[A-Z]{8}\.tif", f), f
    good = root / "pathology" / summary["modalities"]["pathology"]["files"][0]
    with Image.open(good) as im:
        assert (im.format, im.mode, im.size) == ("TIFF", "RGB", (48, 48))


def test_xray_csv_and_split_lists_are_chestxray14(small):
    import pandas as pd

    root, summary = small
    base = root / "xray"
    lines = (base / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    assert len(lines[0].split(",")) == 12 and lines[0].split(",")[-1] == ""
    allowed = set(xray_mod.CLASSES)
    for ln in lines[1:]:
        vals = ln.split(",")
        assert len(vals) == 12 and vals[-1] == "", ln
        idx, labels, fu, pid, age, sex, view = vals[:7]
        m = re.fullmatch(r"(\d{8})_(\d{3})\.dcm", idx)
        assert m and m.group(1) == pid and int(m.group(2)) == int(fu)
        assert set(labels.split("|")) <= allowed
        assert "No Finding" not in labels or labels == "No Finding"
        assert re.fullmatch(r"\d{3}Y", age) and sex in {"M", "F"} and view in {"PA", "AP"}
        assert (base / "images" / idx).is_file()
    # Readers select by name; pandas sees the bracket quirk and the trailing empty column.
    df = pd.read_csv(base / "Data_Entry_2017.csv", dtype=str)
    assert {"Image Index", "Finding Labels", "Patient ID"} <= set(df.columns)
    assert df.iloc[:, -1].isna().all()
    train = (base / "train_val_list.txt").read_text().split()
    test = (base / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(df["Image Index"])
    assert test and not {t[:8] for t in train} & {t[:8] for t in test}, "split lists are patient-disjoint"


def test_xray_files_are_16bit_dicom_with_both_photometric_interpretations(big):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    root, summary = big
    base = root / "xray"
    pids = {r["Image Index"]: r["Patient ID"] for r in csv.DictReader(open(base / "Data_Entry_2017.csv"))}
    photometric = Counter()
    uids = set()
    for rel in summary["modalities"]["xray"]["files"]:
        ds = pydicom.dcmread(base / rel)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.Modality in {"DX", "CR"}
        assert ds.SOPClassUID == (xray_mod.DX_SOP_CLASS if ds.Modality == "DX" else xray_mod.CR_SOP_CLASS)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.PatientID == pids[Path(rel).name]
        for tag in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
            assert tag in ds
        arr = ds.pixel_array
        assert arr.dtype == np.uint16 and arr.shape == (64, 64)
        assert int(arr.max()) <= 2**ds.BitsStored - 1
        photometric[ds.PhotometricInterpretation] += 1
        uids.add(ds.SOPInstanceUID)
    n = sum(photometric.values())
    assert len(uids) == n
    assert set(photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert 0.2 <= photometric["MONOCHROME1"] / n <= 0.47


def test_monochrome1_is_stored_inverted(big):
    """After the LUTs, MONOCHROME1 films must look like MONOCHROME2 ones: lungs dark, spine bright."""
    import pydicom

    root, summary = big
    for pi in ("MONOCHROME1", "MONOCHROME2"):
        for rel in summary["modalities"]["xray"]["files"]:
            p = root / "xray" / rel
            if pydicom.dcmread(p, stop_before_pixels=True).PhotometricInterpretation == pi:
                g = _read_gray(p)
                lung = g[14:26, 8:18].mean()  # upper right lung field
                spine = g[14:26, 30:34].mean()
                assert spine > lung + 0.1, (pi, rel)
                break


# ---------------------------------------------------------------- damaged files


def test_corrupt_files_are_written_and_referenced_by_the_layout(small):
    import pydicom

    root, summary = small
    bad = summary["corrupt"]
    assert len(bad) == SMALL["corrupt"]
    assert {b["kind"] for b in bad} == set(CORRUPT_KINDS)
    assert {b["modality"] for b in bad} == set(MODALITIES)
    for b in bad:
        path = root / b["path"]
        data = path.read_bytes()
        if b["kind"] == "zero-byte":
            assert data == b""
        elif b["kind"] == "not-an-image":
            assert data.startswith(b"synthetic corrupt file")
        with pytest.raises(Exception):  # noqa: B017 - any decoder error is the point
            if path.suffix == ".dcm":
                pydicom.dcmread(path).pixel_array  # noqa: B018
            else:
                with Image.open(path) as im:
                    im.load()
        name, rel = b["modality"], b["path"].split("/", 1)[1]
        tables = {
            "fundus": "train.csv",
            "dermoscopy": "HAM10000_metadata.csv",
            "xray": "Data_Entry_2017.csv",
        }
        if name in tables:
            assert Path(rel).stem in (root / name / tables[name]).read_text()
        if name == "xray":
            assert Path(rel).name in (root / name / "train_val_list.txt").read_text().split()
        assert b["path"] not in {f"{name}/{f}" for f in summary["modalities"][name]["files"]}


# ---------------------------------------------------------------- groups and balance


def test_group_sizes_are_two_to_four_and_sum_up():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 50, 51):
        sizes = group_sizes(rng, n)
        assert sum(sizes) == n
        assert all(s >= 2 for s in sizes) or n < 2
        assert max(sizes) <= 5


@pytest.mark.parametrize("name", ["xray", "oct", "dermoscopy"])
def test_grouped_layouts_have_several_images_per_group(big, name):
    root, summary = big
    paths, labels, groups = _dataset(root, summary, name, single_label=False)
    counts = Counter(groups)
    assert sum(c >= 2 for c in counts.values()) / len(counts) >= 0.9
    assert max(counts.values()) <= 5
    if name in ("oct", "dermoscopy"):
        # A lesion / patient has one class.
        assert all(len(set(labels[groups == g])) == 1 for g in counts)


def test_xray_findings_can_change_between_follow_ups(big):
    root, summary = big
    paths, labels, groups = _dataset(root, summary, "xray", single_label=False)
    changed = [g for g in set(groups) if len(set(labels[groups == g])) > 1]
    assert len(changed) >= 5


def test_group_members_share_a_look(big):
    """Scans of one patient resemble each other more than scans of other patients with the same class.

    Checked on the aligned modalities (chest films, B-scans); dermoscopy views turn freely, so pixel
    correlation says nothing there.
    """
    root, summary = big
    for name in ("xray", "oct"):
        paths, labels, groups = _dataset(root, summary, name)
        vecs = []
        for p in paths:
            g = np.asarray(Image.fromarray(_read_gray(p)).resize((16, 16), Image.Resampling.BILINEAR))
            vecs.append((g - g.mean()).ravel() / (g.std() + 1e-6))
        # Subtract the modality's average film so the shared template does not dominate the correlation.
        v = np.array(vecs)
        corr = np.corrcoef(v - v.mean(axis=0))
        same, other = [], []
        for i, j in itertools.combinations(range(len(paths)), 2):
            if labels[i] != labels[j]:
                continue
            (same if groups[i] == groups[j] else other).append(corr[i, j])
        assert np.mean(same) > np.mean(other) + 0.1, name


def test_classes_are_balanced(big):
    root, summary = big
    n = BIG["per_class"]
    for name in MODALITIES:
        info = summary["modalities"][name]
        assert info["images"] == 4 * n
        if name == "xray":
            # The first finding is balanced by design; some abnormal films get a second one on top.
            assert info["classes"]["No Finding"] == n
            counts = list(info["classes"].values())
            assert min(counts) >= n and max(counts) <= 1.4 * n
            assert 0 < info["multi_label"] <= 0.3 * 3 * n
        else:
            assert info["classes"] == {c: n for c in info["classes"]}
            _, labels, _ = _dataset(root, summary, name)
            assert set(Counter(labels).values()) == {n}


# ---------------------------------------------------------------- the classes live in structure


def _heldout_1d(values: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Held-out accuracy of a statistic alone: 4-class (depth-2 tree) and the best pair (stump)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    x = values.reshape(-1, 1)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    four = cross_val_score(DecisionTreeClassifier(max_depth=2, random_state=0), x, y, cv=cv).mean()
    pair = 0.0
    for a, b in itertools.combinations(sorted(set(y)), 2):
        m = (y == a) | (y == b)
        stump = DecisionTreeClassifier(max_depth=1, random_state=0)
        pair = max(pair, cross_val_score(stump, x[m], y[m], cv=cv).mean())
    return float(four), float(pair)


# Chance is 0.25 (4 classes) and 0.5 (a pair). With 160 images the standard error of a held-out
# accuracy is ~0.035 (4-class) and ~0.056 (one pair of 80): 0.45 is ~6 SE above 4-class chance, and
# 0.78 leaves room for the best of 6 noisy pairs (~0.5 + 2.5 SE). A statistic whose class means sit
# one standard deviation apart already fails both (see the test of the detector below).
MAX_FOUR_CLASS, MAX_PAIR = 0.45, 0.78


def test_leak_detector_catches_a_leaky_statistic():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(list("abcd")), 40)
    # Class means one standard deviation apart: a moderate leak, like one class being darker.
    leaky = rng.normal(0, 1, len(y)) + 1.0 * np.searchsorted(np.array(list("abcd")), y)
    four, pair = _heldout_1d(leaky, y)
    assert four > MAX_FOUR_CLASS and pair > MAX_PAIR
    four, pair = _heldout_1d(rng.normal(0, 1, len(y)), y)
    assert four <= MAX_FOUR_CLASS and pair <= MAX_PAIR


@pytest.mark.parametrize("name", MODALITIES)
def test_no_global_statistic_gives_the_class_away(big, name):
    root, summary = big
    paths, labels, _ = _dataset(root, summary, name)
    grays = [_read_gray(p) for p in paths]
    for stat in (np.mean, np.std):
        four, pair = _heldout_1d(np.array([stat(g) for g in grays]), labels)
        assert four <= MAX_FOUR_CLASS, (name, stat.__name__, four)
        assert pair <= MAX_PAIR, (name, stat.__name__, pair)


def _augment(img: np.ndarray, rng: np.random.Generator, out: int = 64) -> np.ndarray:
    """The SSL view distribution in small: crop of 50-100 % of the area, flip, resize, brightness/contrast."""
    h, w, _ = img.shape
    s = np.sqrt(rng.uniform(0.5, 1.0))
    ch, cw = int(round(h * s)), int(round(w * s))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pil = Image.fromarray((crop * 255).astype(np.uint8)).resize((out, out), Image.Resampling.BILINEAR)
    a = np.asarray(pil, dtype=np.float32) / 255.0
    return np.clip((a - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0.0, 1.0)


def _box(a: np.ndarray, k: int) -> np.ndarray:
    c = np.cumsum(np.cumsum(np.pad(a, ((k, k + 1), (k, k + 1)), mode="edge"), 0), 1)
    n = 2 * k + 1
    return (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]) / (n * n)


def _features(a: np.ndarray) -> np.ndarray:
    """Features blind to brightness and contrast: a standardised-intensity histogram, gradient and
    blob (difference-of-box) statistics, chroma percentiles, and a 4x4 grid of gradient-orientation
    histograms (HOG-like)."""
    g = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    z = (g - g.mean()) / (g.std() + 1e-6)
    f = [np.histogram(np.clip(z, -3, 3), bins=12, range=(-3, 3))[0] / z.size]
    gy, gx = np.gradient(z)
    mag = np.hypot(gy, gx)
    f.append(np.histogram(np.clip(mag, 0, 3), bins=8, range=(0, 3))[0] / z.size)
    for k in (1, 2, 4):
        f.append(np.percentile(_box(z, k) - _box(z, 2 * k), [1, 5, 25, 50, 75, 95, 99]))
    s = a.sum(-1) + 1e-3
    for chroma in (a[..., 0] / s, a[..., 2] / s):
        cz = (chroma - chroma.mean()) / (chroma.std() + 1e-6)
        f.append(np.percentile(cz, [1, 5, 25, 75, 95, 99]))
    ang = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 8).astype(int), 7)
    cell = z.shape[0] // 4
    hog = np.zeros((4, 4, 8))
    for i in range(4):
        for j in range(4):
            sl = (slice(i * cell, (i + 1) * cell), slice(j * cell, (j + 1) * cell))
            hog[i, j] = np.bincount(ang[sl].ravel(), weights=mag[sl].ravel(), minlength=8)
    f.append(hog.ravel() / (hog.sum() + 1e-6))
    return np.concatenate(f)


# Chance is 0.25; seeds 1, 2 and 11 gave 0.59-0.65 for X-ray (hardest for a linear model on these
# features), 0.68-0.73 OCT, 0.72-0.78 fundus, 0.81-0.86 dermoscopy, 0.95-0.97 pathology.
MIN_CONTENT_ACCURACY = 0.5


@pytest.mark.parametrize("name", MODALITIES)
def test_classes_are_separable_from_image_content(big, name):
    """A linear model on crude, brightness-blind features of augmented 64 px views beats chance on
    held-out patients/lesions: the class is in the structure and survives crops, flips and jitter."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root, summary = big
    paths, labels, groups = _dataset(root, summary, name)
    rng = np.random.default_rng(0)
    feats = np.array([_features(_augment(_read_rgb(p), rng)) for p in paths])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    acc = cross_val_score(clf, feats, labels, groups=groups, cv=GroupKFold(3)).mean()
    assert acc >= MIN_CONTENT_ACCURACY, (name, acc)


# ---------------------------------------------------------------- arguments and the output folder


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(per_class=0), "--per-class"),
        (dict(size=16), "--size"),
        (dict(workers=0), "--workers"),
        (dict(corrupt=-1), "--corrupt"),
        (dict(modalities=["ct"]), "cannot draw modality 'ct'"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, kwargs, fragment):
    with pytest.raises(UsageError, match=re.escape(fragment)):
        generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_needs_force_which_replaces_only_drawn_modalities(tmp_path):
    out = tmp_path / "raw"
    generate(out, per_class=1, size=32, modalities=["oct", "pathology"])
    (out / "oct" / "stale.jpeg").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    before = _hashes(out / "pathology")
    with pytest.raises(UsageError, match="--force"):
        generate(out, per_class=1, size=32, modalities=["oct"])
    summary = generate(out, per_class=1, size=32, modalities=["oct"], seed=1, force=True)
    assert not (out / "oct" / "stale.jpeg").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert _hashes(out / "pathology") == before
    assert list(summary["modalities"]) == ["oct"]
    assert all((out / p).is_file() for p in summary["paths"])


def test_summary_lists_every_file_written(small):
    root, summary = small
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(summary["paths"]) == on_disk
    assert (root / "synth.json").is_file()


# ---------------------------------------------------------------- drawing helpers


def test_view_place_agrees_with_world_grid():
    """An object placed with View.place lands on the pixel whose world coordinates are the object's."""
    from midol_cli.data.synth.draw import View

    size = 64
    rng = np.random.default_rng(1)
    for mirror in (False, True):
        view = View(angle=0.7, scale=0.9, ty=0.05, tx=-0.08, mirror=mirror)
        v, u = view.world_grid(size)
        wy, wx = rng.uniform(-0.5, 0.5, 2)
        iy, ix, _ = view.place(np.array([wy]), np.array([wx]))
        row = int((iy[0] + 1.0) * size / 2.0)
        col = int((ix[0] + 1.0) * size / 2.0)
        assert abs(v[row, col] - wy) < 3.0 / size and abs(u[row, col] - wx) < 3.0 / size


def test_stamp_ellipses_covers_the_ellipse_area_and_turns_counter_clockwise():
    from midol_cli.data.synth.draw import stamp_ellipses

    size = 128
    a = stamp_ellipses(size, np.array([0.0]), np.array([0.0]), np.array([0.2]), np.array([0.5]))
    px = (size / 2.0) ** 2 * np.pi * 0.2 * 0.5
    assert abs(a.sum() - px) / px < 0.03
    assert a[64, 64 + 28] > 0.99 and a[64 + 28, 64] == 0.0  # wide along x
    b = stamp_ellipses(size, np.array([0.0]), np.array([0.0]), np.array([0.2]), np.array([0.5]), np.pi / 2)
    assert np.abs(b - a.T).max() < 1e-3
    d = stamp_ellipses(size, np.array([0.0]), np.array([0.0]), np.array([0.1]), np.array([0.5]), np.pi / 4)
    assert d[64 - 20, 64 + 20] > 0.99 and d[64 + 20, 64 + 20] == 0.0  # the long axis points up-right
    # Many objects at once, some off the canvas, combine by maximum and stay in [0, 1].
    rng = np.random.default_rng(0)
    n = 300
    c = stamp_ellipses(size, rng.uniform(-1.2, 1.2, n), rng.uniform(-1.2, 1.2, n), 0.05, 0.05)
    assert 0.0 <= c.min() and c.max() <= 1.0 and 0.3 < (c > 0.5).mean() < 0.95

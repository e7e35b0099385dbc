"""Synthetic chest radiographs in the ChestX-ray14 layout, stored as DICOM.

Layout: ``Data_Entry_2017.csv`` with the NIH header (two bracketed column
names that contain a comma, and a trailing comma on every line),
``train_val_list.txt`` and ``test_list.txt`` (one Image Index per line,
patient-disjoint, about a fifth of patients in test), and ``images/`` with one
DICOM file per ``<patient 8 digits>_<follow-up 3 digits>.dcm``.

DICOM files: Explicit VR Little Endian, Modality DX or CR with the matching SOP
class, 16-bit unsigned pixels with 12 or 16 bits stored, about a third
MONOCHROME1 (inverted: high value = dark), RescaleSlope/Intercept and a
WindowCenter/Width that frames the anatomy, UIDs derived from the seed.

Every film is a PA chest: soft-tissue body, two dark lung fields with
vascular texture, posterior ribs curving across them, clavicles, spine and
mediastinum, heart shadow, diaphragm domes. A patient's follow-ups share the
anatomy (body and lung size, rib spacing, heart size, exposure) and differ in
pose, exposure and noise; findings may change between follow-ups. Findings:

- ``No Finding``: the anatomy only.
- ``Nodule``: 3-7 round focal opacities (radius 2.5-4.3 % of the width)
  spread over both lungs.
- ``Effusion``: homogeneous soft-tissue haze filling the lower 30-55 % of one
  or both lung fields, with a concave meniscus rising toward the chest wall.
- ``Cardiomegaly``: the heart shadow widened to 52-73 % of the chest (normal:
  36-44 %).

Images are balanced on their first finding; about 15 % of the abnormal ones
carry a second finding (e.g. ``Effusion|Nodule``).

Nuisance shared by all findings: pose (shift, +-5 deg, scale), anatomy of
the patient, exposure (auto-levels to a random brightness and contrast),
the acquisition (``draw.acquire``: detector blur, tone curve, correlated grain),
quantum noise, photometric interpretation, bit depth, rescale and window.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from midol_cli.artifacts import write_text_atomic
from midol_cli.data.synth import Item, group_sizes, unique_values
from midol_cli.data.synth.draw import (
    View,
    acquire,
    add_noise,
    expose,
    random_wobble,
    rng_for,
    sample_field,
    smooth_noise,
    stamp_ellipses,
)

NAME = "xray"
DATASET = "chestxray14"
CLASSES: tuple[str, ...] = ("No Finding", "Nodule", "Effusion", "Cardiomegaly")
FINDINGS: tuple[str, ...] = ("Nodule", "Effusion", "Cardiomegaly")
CSV_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
SECOND_FINDING_P = 0.15
TEST_FRACTION = 0.2
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
# Acquisition (draw.acquire): detector blur (fraction of the width), tone curve, quantum noise.
FOCUS, GAMMA, GRAIN, NOISE = (0.002, 0.016), (0.7, 1.45), (0.0, 0.05), (0.006, 0.03)
_LABEL_ORDER = {name: i for i, name in enumerate(("Cardiomegaly", "Effusion", "Nodule"))}


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
    """Balanced first findings, shuffled into patients of 2-4 follow-ups; a fifth of patients in test."""
    first = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(first)
    label_sets: list[tuple[str, ...]] = []
    for f in first:
        labs = [CLASSES[int(f)]]
        if labs[0] != "No Finding" and rng.random() < SECOND_FINDING_P:
            labs.append(str(rng.choice([x for x in FINDINGS if x != labs[0]])))
        label_sets.append(tuple(labs))
    sizes = group_sizes(rng, len(label_sets)) + [1] * len(corrupt)
    label_sets += [("No Finding",)] * len(corrupt)
    # NIH ids run to 30805; stay in that range unless the run needs more patients.
    id_top = 31000 if len(sizes) < 3000 else 10**8
    pids = unique_values(rng, len(sizes), lambda r: f"{int(r.integers(1, id_top)):08d}")
    n_groups = len(sizes) - len(corrupt)
    n_test = max(1, round(TEST_FRACTION * n_groups)) if n_groups >= 2 else 0
    test = set(rng.permutation(n_groups)[:n_test].tolist())
    n_good = len(label_sets) - len(corrupt)
    items: list[Item] = []
    for g, k in enumerate(sizes):
        age0 = int(rng.integers(18, 86))
        sex = "M" if rng.random() < 0.56 else "F"
        view_pos = "PA" if rng.random() < 0.7 else "AP"
        width = int(rng.integers(2000, 3056))
        height = int(width + rng.integers(-100, 200))
        spacing = "0.139" if rng.random() < 0.3 else "0.143"
        start_fu = int(rng.integers(0, 4))
        for j in range(k):
            i = len(items)
            labs = label_sets[i]
            fu = start_fu + j
            # NIH sorts multiple findings alphabetically.
            text = "|".join(sorted(labs, key=lambda x: _LABEL_ORDER.get(x, -1)))
            idx = f"{pids[g]}_{fu:03d}.dcm"
            items.append(
                Item(
                    index=i,
                    rel=f"images/{idx}",
                    label=labs[0],
                    labels=labs,
                    group=pids[g],
                    group_index=g,
                    fields=(
                        ("Image Index", idx),
                        ("Finding Labels", text),
                        ("Follow-up #", str(fu)),
                        ("Patient ID", pids[g]),
                        ("Patient Age", f"{min(age0 + j // 2, 99):03d}Y"),
                        ("Patient Gender", sex),
                        ("View Position", view_pos),
                        ("OriginalImage[Width", str(width)),
                        ("Height]", str(height)),
                        ("OriginalImagePixelSpacing[x", spacing),
                        ("y]", spacing),
                        ("split", "test" if g in test else "train_val"),
                    ),
                    corrupt=corrupt[i - n_good] if i >= n_good else "",
                )
            )
    return items


def write_tables(root: Path, items: list[Item]) -> list[str]:
    """The data-entry CSV (file order = sorted Image Index, as released) and the two split lists."""
    rows = sorted(items, key=lambda it: it.rel)
    lines = [CSV_HEADER]
    for it in rows:
        vals = [v for k, v in it.fields if k != "split"]
        lines.append(",".join(vals) + ",")
    write_text_atomic(root / "Data_Entry_2017.csv", "\n".join(lines) + "\n")
    for split, fname in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        names = [dict(it.fields)["Image Index"] for it in rows if dict(it.fields)["split"] == split]
        write_text_atomic(root / fname, "".join(f"{n}\n" for n in names))
    return ["Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"]


class _Patient:
    """Chest anatomy shared by a patient's follow-ups (world units: the film spans [-1, 1])."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.body_w = float(rng.uniform(0.78, 0.95))
        self.lung_w = float(rng.uniform(0.33, 0.4))  # half-width of each lung field
        self.lung_gap = float(rng.uniform(0.1, 0.16))  # half-width of the mediastinum
        self.lung_top = float(rng.uniform(-0.78, -0.62))
        self.diaphragm = float(rng.uniform(0.45, 0.56))
        self.rib_gap = float(rng.uniform(0.11, 0.15))
        self.rib_bend = float(rng.uniform(0.5, 0.8))
        self.heart_ratio = float(rng.uniform(0.36, 0.44))
        self.heart_x = float(rng.uniform(0.04, 0.1))
        self.lung_dark = float(rng.uniform(0.12, 0.2))
        self.vessels = rng.standard_normal((28, 28)).astype(np.float32)
        self.age_haze = float(rng.uniform(0.0, 0.06))


def _lungs(p: _Patient, v: np.ndarray, u: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``[size, size]`` of the two lung fields and a height coordinate (0 apex, 1 base)."""
    cov = np.zeros_like(u)
    height = np.zeros_like(u)
    half_h = (p.diaphragm - p.lung_top) / 2.0
    for side in (-1.0, 1.0):
        cx = side * (p.lung_gap + p.lung_w)
        x = (u - cx) / p.lung_w
        y = (v - (p.lung_top + half_h)) / half_h
        # A superellipse: full flanks, rounded apex; the medial side is flattened by the mediastinum.
        rho = (np.abs(x) ** 2.6 + np.abs(y) ** 2.2) ** (1.0 / 2.4)
        edge = np.clip((1.0 - rho) * p.lung_w * size / 5.0, 0.0, 1.0)
        # The base follows the diaphragm dome: highest mid-lung, deepest at the costophrenic angle.
        dome = p.diaphragm - 0.12 * np.clip(1.0 - ((x * side) - 0.1) ** 2, 0.0, 1.0)
        c = edge * np.clip((dome - v) * size / 6.0, 0.0, 1.0)
        height = np.where(c > cov, np.clip((y + 1.0) / 2.0, 0.0, 1.0), height)
        cov = np.maximum(cov, c)
    return cov, height


def _film(item: Item, seed: int, size: int) -> np.ndarray:
    """Attenuation image ``[size, size]`` in [0, 1] (bright = dense), exposure already applied."""
    pat = _Patient(rng_for(seed, NAME, "patient", item.group_index))
    rng = rng_for(seed, NAME, "image", item.index)
    view = View.random(rng, 5.0, (0.85, 1.1), 0.06, mirror_p=0.0)
    v, u = view.world_grid(size)
    labels = set(item.labels)

    body = np.clip((pat.body_w - np.abs(u)) * (size / 8.0), 0.0, 1.0) * (v > -0.95)
    img = 0.08 + 0.45 * body * (1.0 - 0.25 * (np.abs(u) / pat.body_w) ** 2)
    lung, lung_t = _lungs(pat, v, u, size)
    vessel_tex = sample_field(pat.vessels, v, u, 1.2)
    lung_val = pat.lung_dark + 0.05 * vessel_tex + 0.08 * (1.0 - np.abs(u) / (pat.lung_gap + 2 * pat.lung_w))
    img = img * (1.0 - lung) + lung_val * lung

    # Posterior ribs: a periodic band pattern bent downwards laterally, visible across the lungs.
    phase = (v - pat.rib_bend * (np.abs(u) - 0.15) ** 2 - pat.lung_top) / pat.rib_gap
    rib = np.clip((np.abs(np.mod(phase, 1.0) - 0.5) - 0.3) * 10.0, 0.0, 1.0)
    img = img + 0.07 * rib * lung * (phase > 0)
    clav = np.exp(-(((v - (pat.lung_top + 0.05) + 0.25 * np.abs(u) - 0.08 * u * u) / 0.025) ** 2))
    img = img + 0.18 * clav * (np.abs(u) < 0.7) * body
    spine = np.clip((0.07 - np.abs(u)) * (size / 6.0), 0.0, 1.0)
    img = img + 0.12 * spine

    # Mediastinum and heart: dense, drawn over the lungs.
    med = np.clip((pat.lung_gap * 0.9 - np.abs(u)) * (size / 8.0), 0.0, 1.0) * (v > pat.lung_top - 0.1)
    img = np.maximum(img, 0.55 * med)
    trachea = np.clip((0.03 - np.abs(u - 0.01)) * (size / 4.0), 0.0, 1.0) * (v < pat.lung_top + 0.35)
    img = img - 0.15 * trachea
    ratio = pat.heart_ratio * (
        rng.uniform(1.45, 1.65) if "Cardiomegaly" in labels else rng.uniform(0.97, 1.03)
    )
    chest = 2.0 * (pat.lung_gap + 2.0 * pat.lung_w)
    hw = ratio * chest / 2.0
    hy = pat.diaphragm - 0.55 * hw  # the lower part hides behind the diaphragm dome
    hcy, hcx, hang = view.place(np.array([hy]), np.array([pat.heart_x + 0.15 * hw]), 0.25)
    heart = stamp_ellipses(size, hcy, hcx, hw * 0.8 * view.scale, hw * view.scale, hang, edge_px=2.5)
    img = img * (1.0 - heart) + 0.6 * heart
    dia = np.clip((v - pat.diaphragm - 0.08 * (1.0 - u * u)) * (size / 10.0), 0.0, 1.0) * body
    img = np.maximum(img, 0.58 * dia)

    if "Effusion" in labels:
        sides = [-1.0, 1.0] if rng.random() < 0.5 else [float(rng.choice([-1.0, 1.0]))]
        for side in sides:
            level = float(rng.uniform(0.45, 0.68))  # where the fluid stops, in lung height
            x = (u - side * (pat.lung_gap + pat.lung_w)) / pat.lung_w
            lateral = np.clip(x * side, -1.0, 1.0)
            # Meniscus: the fluid line climbs toward the chest wall.
            line = level - 0.4 * (lateral + 1.0) ** 2 / 4.0 * rng.uniform(0.7, 1.0)
            # Denser toward the base: fluid depth grows below the meniscus.
            fluid = np.clip((lung_t - line) * 6.0, 0.0, 1.0) * lung * (np.abs(x) < 1.05)
            img = img * (1.0 - 0.85 * fluid) + 0.85 * (0.5 + 0.03 * vessel_tex) * fluid
    if "Nodule" in labels:
        n = int(rng.integers(3, 8))
        side = rng.choice([-1.0, 1.0], n)
        ny = pat.lung_top + (pat.diaphragm - pat.lung_top) * rng.uniform(0.2, 0.75, n)
        nx = side * (pat.lung_gap + pat.lung_w * rng.uniform(0.35, 1.6, n))
        cy, cx, _ = view.place(ny, nx)
        r = rng.uniform(0.05, 0.085, n) * view.scale
        dome = stamp_ellipses(
            size,
            cy,
            cx,
            r,
            r * rng.uniform(0.85, 1.0, n),
            0.0,
            profile="dome",
            wobble=random_wobble(rng, n, 3, 0.12),
        )
        img = img + 0.38 * np.clip(dome * 1.6, 0.0, 1.0)

    img = img + pat.age_haze * smooth_noise(rng, size, 5)
    img = expose(img.astype(np.float32), rng, float(rng.uniform(0.33, 0.5)), (0.14, 0.26))
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    return add_noise(img, rng, rng.uniform(*NOISE))


def render(item: Item, size: int, seed: int) -> bytes:
    """DICOM bytes (Explicit VR Little Endian, 16-bit) of one chest film for ``item``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    film = _film(item, seed, size)
    rng = rng_for(seed, NAME, "dicom", item.index)
    fields = dict(item.fields)
    bits = 12 if rng.random() < 0.5 else 16
    top = (1 << bits) - 1
    lo = rng.uniform(0.03, 0.12) * top
    hi = rng.uniform(0.85, 0.98) * top
    stored = np.rint(lo + film * (hi - lo)).astype(np.uint16)
    mono1 = rng.random() < 1.0 / 3.0
    if mono1:
        stored = (top - stored).astype(np.uint16)
    slope = float(rng.choice([1.0, 1.0, 0.5, 2.0]))
    intercept = float(rng.choice([0.0, 0.0, -1024.0]))
    # Window on the anatomy in rescaled units; its placement is random, never derived from the class.
    mid = (top - (lo + hi) / 2.0) if mono1 else (lo + hi) / 2.0
    centre = (mid + rng.uniform(-0.04, 0.04) * (hi - lo)) * slope + intercept
    width = (hi - lo) * rng.uniform(0.9, 1.1) * slope

    modality = "DX" if rng.random() < 0.6 else "CR"
    sop_class = DX_SOP_CLASS if modality == "DX" else CR_SOP_CLASS
    ent = [str(seed), fields["Image Index"]]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[*ent, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[*ent, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*ent, "series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[*ent, "frame"])
    ds.Modality = modality
    ds.PatientID = fields["Patient ID"]
    ds.PatientName = f"SYNTH^{fields['Patient ID']}"
    ds.PatientSex = fields["Patient Gender"]
    ds.PatientAge = fields["Patient Age"]
    ds.StudyDate = f"20{10 + int(fields['Follow-up #']) % 10:02d}0101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(fields["Follow-up #"]) + 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = fields["View Position"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.Rows, ds.Columns = film.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    spacing = float(fields["OriginalImagePixelSpacing[x"]) * 2048 / film.shape[0]
    ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{centre:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

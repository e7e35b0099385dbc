"""Tiny on-disk copies of the raw dataset layouts, for the ingest tests.

Folder names, file-name patterns and CSV headers (with their quirks) follow
/work/shared/design/DATASETS.md; images are a few pixels of seeded noise so
every file has distinct bytes unless a test copies one on purpose.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image


def _rng(path: Path | str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16))


def write_image(
    path: Path, size: tuple[int, int] = (16, 12), mode: str = "RGB", fmt: str | None = None
) -> Path:
    """Seeded-noise image of ``size`` (W, H) in ``mode``; format from the extension unless ``fmt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = _rng(path)
    if mode == "RGB":
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif mode == "L":
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif mode == "I;16":
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    else:
        raise ValueError(mode)
    img = Image.fromarray(arr)
    if fmt == "JPEG" or path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, "JPEG", quality=90)
    else:
        img.save(path, fmt)
    return path


def write_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "DX",
    patient_id: str = "00000001",
    preamble: bool = True,
    transfer_syntax: str | None = None,
    pixel_bytes: bytes | None = None,
) -> Path:
    """Write a 16-bit (or 8-bit for uint8 ``arr``) single-frame grayscale DICOM with pydicom.

    ``pixel_bytes`` overrides the pixel data (encapsulated bytes for a compressed
    ``transfer_syntax``); ``preamble=False`` writes a bare dataset with no file meta.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    ts = UID(transfer_syntax or ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if arr.dtype == np.uint8 else 16
    ds.BitsStored = 8 if arr.dtype == np.uint8 else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.tobytes()
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        # No preamble, no file meta: what some old modalities export as "IMG0001".
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def xray_dicom(path: Path, patient_id: str, monochrome1: bool = False, size: int = 24) -> Path:
    rng = _rng(path)
    arr = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    return write_dicom(
        path,
        arr,
        photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
        bits_stored=12,
        window=(2048, 4096),
        rescale=(1, 0),
        patient_id=patient_id,
    )


# ---------------------------------------------------------------- dataset layouts


def make_aptos(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("0", "1", "2", "3")) -> list[str]:
    """``train.csv`` (id_code,diagnosis) + ``train_images/<id_code>.png``; returns the id codes."""
    ids = []
    lines = ["id_code,diagnosis"]
    for c in classes:
        for i in range(per_class):
            id_code = hashlib.sha1(f"aptos{c}{i}".encode()).hexdigest()[:12]
            write_image(root / "train_images" / f"{id_code}.png", (20, 20))
            lines.append(f"{id_code},{c}")
            ids.append(id_code)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return ids


def make_ham(
    root: Path, lesions_per_class: int = 3, images_per_lesion: int = 2
) -> list[tuple[str, str, str]]:
    """``HAM10000_metadata.csv`` + images split over ``HAM10000_images_part_{1,2}``; returns (lesion, image,
    dx)."""
    rows = []
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    n = 24306
    for k, dx in enumerate(("nv", "mel", "bkl", "vasc")):
        for le in range(lesions_per_class):
            lesion = f"HAM_{k * 1000 + le:07d}"
            for _ in range(images_per_lesion):
                image = f"ISIC_{n:07d}"
                part = 1 if n % 2 else 2
                write_image(root / f"HAM10000_images_part_{part}" / f"{image}.jpg", (24, 18))
                dx_type = ("histo", "follow_up", "consensus", "confocal")[n % 4]
                age = "" if n % 5 == 0 else f"{40 + n % 40}.0"
                lines.append(
                    f"{lesion},{image},{dx},{dx_type},{age},{('male', 'female', 'unknown')[n % 3]},back"
                )
                rows.append((lesion, image, dx))
                n += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return rows


def make_oct(
    root: Path, patients_per_class: int = 3, images_per_patient: int = 2
) -> list[tuple[str, str, str]]:
    """``OCT2017/{train,test}/<CLASS>/<CLASS>-<patient>-<n>.jpeg`` (grayscale); returns (path, patient,
    split)."""
    out = []
    pid = 1000001
    for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):
        for p in range(patients_per_class):
            split = "test" if p == 0 else "train"
            for n in range(images_per_patient):
                rel = f"OCT2017/{split}/{cls}/{cls}-{pid}-{n + 1}.jpeg"
                write_image(root / rel, (32, 16), mode="L")
                out.append((rel, str(pid), split))
            pid += 1
    return out


CXR_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def make_cxr14(
    root: Path, patients: int = 6, per_patient: int = 2, sex_column: str = "Patient Gender"
) -> list[dict]:
    """``Data_Entry_2017.csv`` (trailing comma quirk) + ``images/*.dcm`` + official split lists.

    Every third image is MONOCHROME1. Patients 0-1 are in test_list.txt, the rest in train_val_list.txt.
    """
    findings = ("No Finding", "Nodule", "Effusion|Nodule", "Cardiomegaly", "Effusion")
    header = CXR_HEADER.replace("Patient Gender", sex_column)
    lines = [header]
    train, test, rows = [], [], []
    k = 0
    for p in range(patients):
        pid = f"{p + 13:08d}"
        for f in range(per_patient):
            name = f"{pid}_{f:03d}.dcm"
            xray_dicom(root / "images" / name, pid, monochrome1=(k % 3 == 2))
            lab = findings[k % len(findings)]
            lines.append(f"{name},{lab},{f},{pid},0{40 + p}Y,{'MF'[p % 2]},PA,2992,2991,0.143,0.143,")
            (test if p < 2 else train).append(name)
            rows.append({"name": name, "labels": lab, "patient": pid, "split": "test" if p < 2 else "train"})
            k += 1
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return rows


def make_nct(root: Path, per_class: int = 4) -> list[str]:
    """``NCT-CRC-HE-100K/<CLASS>/<CLASS>-<8 letters>.tif`` RGB TIFFs; returns relative paths."""
    out = []
    for cls in ("ADI", "LYM", "STR", "TUM"):
        for i in range(per_class):
            tag = "".join(
                chr(65 + (ord(ch) % 26)) for ch in hashlib.sha1(f"{cls}{i}".encode()).hexdigest()[:8]
            )
            rel = f"NCT-CRC-HE-100K/{cls}/{cls}-{tag}.tif"
            write_image(root / rel, (16, 16), fmt="TIFF")
            out.append(rel)
    return out


def make_imagefolder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4, splits: tuple[str, ...] = ()
) -> list[str]:
    """``<class>/img_N.png`` or ``<split>/<class>/img_N.png``; returns relative paths."""
    out = []
    for split in splits or ("",):
        for c in classes:
            for i in range(per_class):
                rel = f"{split + '/' if split else ''}{c}/img_{i}.png"
                write_image(root / rel, (12, 12))
                out.append(rel)
    return out


def listing(root: Path) -> list[tuple[str, int, int]]:
    """Every path under ``root`` with size and mtime, to prove nothing was written there."""
    out = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def crash_on_marker(paths: list[str], max_pixels: int) -> list[dict]:
    """Worker chunk function that dies like a segfaulting decoder on any file named ``crash.*``."""
    import os

    from midol_cli.data.ingest import inspect_file

    if any(Path(p).stem == "crash" for p in paths):
        os._exit(139)
    return [inspect_file(p, max_pixels) for p in paths]


def abort_on_marker(paths: list[str], max_pixels: int) -> list[dict]:
    """Worker chunk function that dies as a native decoder's abort() does (SIGABRT, exit 134) on any file
    named ``crash.*``: the way a corrupt JPEG 2000 DICOM ends the process that decodes it."""
    import os

    from midol_cli.data.ingest import inspect_file

    if any(Path(p).stem == "crash" for p in paths):
        os.abort()
    return [inspect_file(p, max_pixels) for p in paths]


def sleepy_chunk(paths: list[str], max_pixels: int) -> list[dict]:
    """Worker chunk function that stands for a decode that takes a long time: writes ``<path>.pid`` (this
    worker's pid) and sleeps a minute."""
    import os
    import time

    for p in paths:
        Path(p + ".pid").write_text(str(os.getpid()))
    time.sleep(60)
    return [{} for _ in paths]

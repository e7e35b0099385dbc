"""Volumes (issue 26): multi-frame Ophthalmic Tomography DICOMs written by pydicom, and the real Heidelberg
.vol in $MIDOL_SHARED/data/oct (default: ../shared/data/oct) read through eyepy; frame choice, grouping,
laterality, rejects, shards."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from midol_cli.data.ingest import ingest_folder
from midol_cli.data.layouts import LayoutOptions, detect_layout
from midol_cli.data.manifest import read_manifest, row_meta
from midol_cli.data.volumes import OPHTHALMIC_TOMOGRAPHY, parse_frames, select_frames
from midol_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared test data's folder: $MIDOL_SHARED when set, else ``shared`` beside the repository
    (/work/shared for /work/main)."""
    env = os.environ.get("MIDOL_SHARED", "").strip()
    return Path(env).expanduser().resolve() if env else ROOT.parent / "shared"


SHARED_OCT = shared_dir() / "data" / "oct"
# eyepy's own test file (tests/data/filetypes/heyex_vol/test_volume.vol, eyepy commit 5dc5313, MIT licence).
# It cannot be generated here: eyepy 0.21's HeVolWriter fails on its own date fields (TypeError).
HEYEX_VOL = "heyex_test_volume.vol"


def frames_of(n: int, h: int = 40, w: int = 50) -> np.ndarray:
    """[n, h, w] uint8: frame i is a gradient plus 20 * i, so every frame differs."""
    base = (np.arange(w)[None, :] + np.arange(h)[:, None]).astype(np.int32) % 50
    return np.stack([(base + 20 * i) % 256 for i in range(n)]).astype(np.uint8)


def write_opt(
    path: Path,
    frames: np.ndarray | None,
    laterality: str | None = "R",
    patient: str | None = "P1",
    encapsulated: list[bytes] | None = None,
    n_frames: int | None = None,
) -> Path:
    """A multi-frame Ophthalmic Tomography DICOM (8-bit MONOCHROME2), native or JPEG-encapsulated."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(OPHTHALMIC_TOMOGRAPHY)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if encapsulated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "OPT", generate_uid()
    if patient:
        ds.PatientID = patient
    if laterality:
        ds.ImageLaterality = laterality
    h, w = (40, 50) if frames is None else frames.shape[1:]
    ds.Rows, ds.Columns = h, w
    ds.NumberOfFrames = n_frames if n_frames is not None else (len(frames) if frames is not None else 0)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if encapsulated:
        ds.PixelData = encapsulate(encapsulated)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = b"" if frames is None else frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _ingest(raw: Path, out: Path, **extra: str):
    s = ingest_folder(raw, "oct", out=out, workers=1, layout_options=LayoutOptions(extra=dict(extra)))
    df, _ = read_manifest(out)
    return df, s


def test_frame_choices():
    assert select_frames(10, parse_frames("all")) == list(range(10))
    assert select_frames(10, parse_frames("central:4")) == [3, 4, 5, 6]
    assert select_frames(3, parse_frames("central:5")) == [0, 1, 2]
    assert select_frames(10, parse_frames("every:3")) == [0, 3, 6, 9]
    for bad in ("middle", "central:0", "every:x", "central:"):
        with pytest.raises(UsageError, match="--frames must be all, central:N or every:K"):
            parse_frames(bad)


def test_every_frame_becomes_a_row_with_volume_frame_and_laterality(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    vol = frames_of(10)
    write_opt(raw / "v1.dcm", vol, laterality="R", patient="P1")
    write_opt(raw / "v2.dcm", 255 - frames_of(6), laterality="L", patient=None)  # other pixels than v1
    assert detect_layout(raw).name == "volumes"
    df, s = _ingest(raw, tmp_path / "m.parquet")
    assert s["layout"] == "volumes" and s["ok"] == 16 and s["rejected"] == 0
    v1 = df[df["path"].str.startswith("v1.dcm#")].copy()
    metas = [row_meta(m) for m in v1["meta"]]
    assert sorted(int(m["frame"]) for m in metas) == list(range(10))
    assert {(m["volume"], m["laterality"], m["eye"], m["n_frames"], m["frames"]) for m in metas} == {
        ("v1.dcm", "R", "right", "10", "all")
    }
    assert set(v1["group"]) == {"P1"}  # the patient when the header names one
    assert set(df[df["path"].str.startswith("v2.dcm#")]["group"]) == {"v2"}  # else the volume
    assert {row_meta(m)["eye"] for m in df[df["path"].str.startswith("v2.dcm#")]["meta"]} == {"left"}
    assert v1["sha256"].is_unique and (v1["width"] == 50).all() and (v1["height"] == 40).all()
    assert "volume v1.dcm: 10 of 10 frames (--frames all), laterality R" in s["lines"]
    assert "v1.dcm" not in set(df["path"])  # the file itself is not also an image row
    from midol_cli.data import readers

    assert np.array_equal(np.asarray(readers.read_image(raw / "v1.dcm#frame=7").image), vol[7])  # by path

    from midol_cli.data.shard_format import decode_image, iter_tar_samples
    from midol_cli.data.shards import write_shards

    idx = write_shards([tmp_path / "m.parquet"], tmp_path / "shards", workers=1)
    assert idx["totals"]["samples"] == 16 and idx["skipped"]["count"] == 0
    by_id = df.set_index("sample_id")
    checked = 0
    for shard in sorted((tmp_path / "shards").glob("shard-*.tar")):
        for sample in iter_tar_samples(shard):
            m = row_meta(by_id.loc[sample["__key__"], "meta"])
            if m["volume"] == "v1.dcm":
                got = np.asarray(decode_image(sample["png"], "png"))
                assert np.array_equal(got, vol[int(m["frame"])])  # the frame itself, losslessly
                checked += 1
    assert checked == 10


def test_subset_is_recorded_in_rows_and_summary(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_opt(raw / "v.dcm", frames_of(10))
    df, s = _ingest(raw, tmp_path / "c.parquet", frames="central:4")
    assert sorted(int(row_meta(m)["frame"]) for m in df["meta"]) == [3, 4, 5, 6]
    assert {row_meta(m)["frames"] for m in df["meta"]} == {"central:4"} and s["frames"] == "central:4"
    assert s["volumes"]["v.dcm"] == {
        "status": "ok",
        "frames": 4,
        "of": 10,
        "choice": "central:4",
        "laterality": "R",
    }
    df, s = _ingest(raw, tmp_path / "e.parquet", frames="every:3")
    assert sorted(int(row_meta(m)["frame"]) for m in df["meta"]) == [0, 3, 6, 9]
    with pytest.raises(UsageError, match="volumes layout has no option 'frame'"):
        _ingest(raw, tmp_path / "x.parquet", frame="all")


def test_zero_frames_and_differing_sizes_are_rejected(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_opt(raw / "empty.dcm", None)
    a, b = frames_of(1)[0], frames_of(1, h=30)[0]
    write_opt(raw / "mixed.dcm", frames_of(2), encapsulated=[_jpeg(a), _jpeg(b)], n_frames=2)
    df, s = _ingest(raw, tmp_path / "m.parquet")
    reasons = dict(zip(df["path"], df["reason"], strict=True))
    assert reasons["empty.dcm"] == "DICOM volume with 0 frames"
    assert reasons["mixed.dcm"].startswith("frames of differing size"), reasons
    assert s["ok"] == 0


def test_image_layouts_say_when_they_take_only_the_first_frame(tmp_path):
    raw = tmp_path / "raw"
    (raw / "cnv").mkdir(parents=True)
    write_opt(raw / "cnv" / "v.dcm", frames_of(3))
    s = ingest_folder(raw, "oct", layout="imagefolder", out=tmp_path / "m.parquet", workers=1)
    assert s["ok"] == 1 and any("first frame only" in w and "--layout volumes" in w for w in s["warnings"])


def test_heidelberg_vol_through_eyepy(tmp_path):
    pytest.importorskip("eyepy", reason="the oct extra (eyepy) is not installed")
    vol = SHARED_OCT / HEYEX_VOL
    if not vol.is_file():
        pytest.skip(
            f"the Heidelberg test volume {vol} is missing: copy eyepy's "
            "tests/data/filetypes/heyex_vol/test_volume.vol (eyepy commit 5dc5313) there as "
            f"{HEYEX_VOL}, or set MIDOL_SHARED to a folder holding data/oct/{HEYEX_VOL}"
        )
    df, s = _ingest(SHARED_OCT, tmp_path / "m.parquet", frames="all")
    rows = df[df["path"].str.startswith(f"{HEYEX_VOL}#")]
    assert len(rows) == 10 and (rows["status"] == "ok").all()
    assert (
        (rows["width"] == 50).all() and (rows["height"] == 40).all() and (rows["format"] == "HEYEX-VOL").all()
    )
    metas = [row_meta(m) for m in rows["meta"]]
    assert {m["laterality"] for m in metas} == {"OD"} and {m["eye"] for m in metas} == {"right"}
    assert set(rows["group"]) == {"heyex_test_volume"}

    from midol_cli.data.shards import write_shards

    idx = write_shards([tmp_path / "m.parquet"], tmp_path / "shards", workers=1)
    assert idx["totals"]["samples"] == 10 and idx["skipped"]["count"] == 0


def test_three_parts_give_the_rows_and_splits_of_one_run(tmp_path):
    """`--part I/N` over volumes: the parts' rows, groups (the header's patient) and splits are one run's."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(6):
        write_opt(raw / f"v{i}.dcm", frames_of(3), patient=f"P{i}")
    from PIL import Image

    for i in range(3):  # ordinary images beside the volumes: image rows, each in one part only
        Image.new("L", (32, 32), 40 * i).save(raw / f"scan{i}.png")
    whole, _ = _ingest(raw, tmp_path / "all.parquet")
    parts = [_ingest(raw, tmp_path / f"p{i}.parquet", part=f"{i}/3")[0] for i in range(3)]
    cols = ["sample_id", "path", "group", "meta", "status", "split", "split_source"]
    merged = pd.concat(parts).sort_values("path").reset_index(drop=True)
    assert merged[cols].equals(whole.sort_values("path").reset_index(drop=True)[cols])
    frames = whole[whole["path"].str.contains("#frame=")]
    assert set(frames["group"]) == {f"P{i}" for i in range(6)}
    assert set(whole["split"]) == {"train", "val", "test"}
    assert (whole["path"].str.endswith(".png").sum(), merged["path"].str.endswith(".png").sum()) == (3, 3)


def test_rehash_reads_a_volume_replaced_by_one_of_the_same_size_and_mtime(tmp_path):
    """Issue 25.5: `ingest --rehash` reads every volume again; one whose pixels changed under the same size
    and mtime (`cp -p`) gives its new frames, as a fresh ingest does."""
    import os

    raw = tmp_path / "raw"
    raw.mkdir()
    vol = frames_of(6)
    v1 = write_opt(raw / "v1.dcm", vol)
    first, _ = _ingest(raw, tmp_path / "m.parquet")
    st = v1.stat()
    with open(v1, "r+b") as fh:  # native pixel data ends the file: other pixels, same bytes count
        fh.seek(-vol.nbytes, os.SEEK_END)
        fh.write((255 - vol).tobytes())
    os.utime(v1, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (v1.stat().st_size, v1.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    s = ingest_folder(raw, "oct", out=tmp_path / "m.parquet", workers=1, rehash=True)
    again, _ = read_manifest(tmp_path / "m.parquet")
    fresh, _ = _ingest(raw, tmp_path / "fresh.parquet")
    assert again["sha256"].tolist() == fresh["sha256"].tolist() and s["ok"] == 6
    assert not set(again["sha256"]) & set(first["sha256"])

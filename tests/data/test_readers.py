from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import write_dicom, write_image
from PIL import Image

from midol_cli.data import readers
from midol_cli.data.readers import ImageRejected, read_image

HERE = Path(__file__).parent


def reason_of(path: Path, **kw) -> str:
    with pytest.raises(ImageRejected) as ei:
        read_image(path, **kw)
    return ei.value.reason


# ---------------------------------------------------------------- ordinary formats


@pytest.mark.parametrize(
    ("name", "mode", "fmt", "out_mode"),
    [
        ("a.png", "RGB", None, "RGB"),
        ("b.jpg", "L", None, "L"),
        ("c.tif", "RGB", "TIFF", "RGB"),
        ("d.bmp", "RGB", "BMP", "RGB"),
        ("e.webp", "RGB", "WEBP", "RGB"),
    ],
)
def test_8bit_formats_pass_through(tmp_path, name, mode, fmt, out_mode):
    p = write_image(tmp_path / name, (21, 13), mode=mode, fmt=fmt)
    r = read_image(p)
    assert (r.width, r.height) == (21, 13)
    assert r.image.mode == out_mode and r.image.size == (21, 13)
    assert r.channels == (1 if out_mode == "L" else 3)
    assert r.bit_depth == 8 and r.intensity == ""
    assert r.format == Path(name).suffix.lstrip(".").upper().replace("JPG", "JPEG").replace("TIF", "TIFF")
    if name.endswith(".png"):
        assert np.array_equal(np.asarray(r.image), np.asarray(Image.open(p)))


@pytest.mark.parametrize(
    ("mode", "expected"), [("RGBA", "RGB"), ("P", "RGB"), ("CMYK", "RGB"), ("LA", "L"), ("1", "L")]
)
def test_other_modes_become_L_or_RGB(tmp_path, mode, expected):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode)
    p = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(p)
    r = read_image(p)
    assert r.image.mode == expected
    assert r.channels == (1 if expected == "L" else 3)


def test_16bit_png_is_minmax_scaled(tmp_path):
    arr = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    r = read_image(p)
    assert r.bit_depth == 16 and r.intensity == "minmax16to8" and r.image.mode == "L"
    assert np.asarray(r.image).tolist() == [[0, 64], [128, 255]]


def test_16bit_tiff_reports_source_depth(tmp_path):
    p = write_image(tmp_path / "t16.tif", (9, 7), mode="I;16", fmt="TIFF")
    r = read_image(p)
    assert (r.bit_depth, r.intensity, r.image.mode) == (16, "minmax16to8", "L")
    a = np.asarray(r.image)
    assert a.min() == 0 and a.max() == 255


# ---------------------------------------------------------------- DICOM


RAMP = np.array([[0, 1000, 2048, 4095]] * 3, dtype=np.uint16)


def test_dicom_monochrome1_window_is_inverted(tmp_path):
    p = write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1", window=(2048, 4096), rescale=(1, 0))
    r = read_image(p)
    assert r.format == "DICOM" and r.bit_depth == 12 and r.image.mode == "L" and (r.width, r.height) == (4, 3)
    assert (
        r.intensity == "dicom:modality_lut(slope=1,intercept=0)+voi_window(c=2048,w=4096)+invert_monochrome1"
    )
    # PS3.3 C.11.2.1.2 linear window, then inverted: high stored values (dense) come out dark.
    expected = [255 - round(min(max((v - 2047.5) / 4095 + 0.5, 0), 1) * 255) for v in RAMP[0]]
    assert np.asarray(r.image)[0].tolist() == expected
    assert expected[0] == 255 and expected[-1] == 0


def test_dicom_monochrome2_same_pixels_not_inverted(tmp_path):
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1", window=(2048, 4096)))
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", RAMP, photometric="MONOCHROME2", window=(2048, 4096)))
    assert "invert" not in m2.intensity
    assert (np.asarray(m1.image).astype(int) + np.asarray(m2.image)).tolist() == [[255] * 4] * 3


def test_dicom_rescale_then_window_in_output_units(tmp_path):
    # CT-style: HU = 2 * stored - 1000; window centred at 0 HU, width 400.
    arr = np.array([[300, 400, 500, 600]], dtype=np.uint16)  # -> -400, -200, 0, 200 HU
    r = read_image(write_dicom(tmp_path / "ct.dcm", arr, window=(0, 400), rescale=(2, -1000), modality="CT"))
    assert r.intensity == "dicom:modality_lut(slope=2,intercept=-1000)+voi_window(c=0,w=400)"
    assert np.asarray(r.image)[0].tolist() == [0, 0, 128, 255]


def test_dicom_without_window_uses_minmax(tmp_path):
    r = read_image(write_dicom(tmp_path / "plain.dcm", RAMP))
    assert r.intensity == "dicom:minmax(lo=0,hi=4095)"
    assert np.asarray(r.image)[0].tolist() == [0, 62, 128, 255]


def test_dicom_voi_lut_sequence_wins_over_window(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    p = write_dicom(tmp_path / "lut.dcm", np.array([[0, 1, 2, 3]], dtype=np.uint16), window=(1, 1))
    ds = pydicom.dcmread(p)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input 0, 8-bit output
    item.add_new(0x00283006, "US", [0, 50, 200, 255])  # LUTData
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(p)
    r = read_image(p)
    assert r.intensity == "dicom:voi_lut"
    assert np.asarray(r.image).tolist() == [[0, 50, 200, 255]]


def test_multiframe_dicom_uses_first_frame(tmp_path):
    import pydicom

    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (100, 2000, 4000)])
    frames[0, 0, 0] = 0  # the first frame is the only one with any contrast
    p = write_dicom(tmp_path / "cine.dcm", frames[0], pixel_bytes=frames.tobytes())
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = 3
    ds["PixelData"].VR = "OW"
    ds.save_as(p)
    r = read_image(p)
    assert (r.width, r.height) == (5, 4)
    assert r.intensity == "dicom:minmax(lo=0,hi=100)+frame1of3"
    assert np.asarray(r.image)[0, 0] == 0 and np.asarray(r.image)[1, 1] == 255


def test_dicom_found_by_preamble_without_extension(tmp_path):
    p = write_dicom(tmp_path / "1.2.840.1234", RAMP, window=(2048, 4096))
    r = read_image(p)
    assert r.format == "DICOM" and readers.sniff_dicom(p)


def test_dcm_without_preamble_is_read_by_extension(tmp_path):
    p = write_dicom(tmp_path / "old.dcm", RAMP, preamble=False)
    assert not readers.sniff_dicom(p)
    assert read_image(p).intensity.startswith("dicom:minmax")


def test_compressed_dicom_decodes_like_uncompressed(tmp_path):
    import pydicom

    arr = (np.arange(64 * 64).reshape(64, 64) * 7 % 4096).astype(np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", arr, window=(2000, 3000))
    ref = np.asarray(read_image(plain).image)
    for ts in (pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless):
        ds = pydicom.dcmread(plain)
        ds.compress(ts)
        out = tmp_path / f"{ts.keyword}.dcm"
        ds.save_as(out)
        assert np.array_equal(np.asarray(read_image(out).image), ref), ts.name


def _jpeg_lossless_dicom(path: Path) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate

    return write_dicom(
        path,
        np.zeros((8, 8), np.uint16),
        transfer_syntax=pydicom.uid.JPEGLossless,
        pixel_bytes=encapsulate([b"\xff\xd8 not a real jpeg stream"]),
    )


def test_corrupt_compressed_dicom_is_rejected(tmp_path):
    assert reason_of(_jpeg_lossless_dicom(tmp_path / "bad.dcm")) == "unreadable DICOM pixel data"


def test_missing_dicom_plugin_is_named(tmp_path):
    p = _jpeg_lossless_dicom(tmp_path / "jl.dcm")
    # A fresh interpreter where pylibjpeg cannot be imported: what a user without the plugin sees.
    code = (
        "import sys\n"
        "for m in ('pylibjpeg', 'libjpeg', 'openjpeg', 'gdcm'): sys.modules[m] = None\n"
        "from midol_cli.data.readers import read_image, ImageRejected\n"
        f"try:\n    read_image({str(p)!r})\nexcept ImageRejected as e:\n    print(e.reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=HERE)
    assert out.stdout.strip() == (
        "JPEG lossless DICOM needs pylibjpeg-libjpeg: pip install 'midol[dicom]' "
        "(JPEG Lossless, Non-Hierarchical (Process 14))"
    )


def test_dicom_over_cap_checked_before_decoding(tmp_path):
    # The header claims 3000 x 2000 but only 8 bytes of pixels exist: reading them would
    # fail differently, so this reason proves the cap is checked on the header first.
    p = write_dicom(tmp_path / "big.dcm", RAMP, pixel_bytes=b"\x00" * 8)
    import pydicom

    ds = pydicom.dcmread(p)
    ds.Rows, ds.Columns = 2000, 3000
    ds.save_as(p)
    assert reason_of(p, max_pixels=1_000_000) == "over pixel cap (3000 x 2000)"
    assert reason_of(p) == "truncated image"


def test_dicom_garbage_truncated_and_missing_pixels(tmp_path):
    text = tmp_path / "report.dcm"
    text.write_text("not a dicom at all")
    assert reason_of(text) == "unreadable DICOM"
    p = write_dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint16))
    p.write_bytes(p.read_bytes()[:-100])
    assert reason_of(p) == "truncated image"
    import pydicom

    p = write_dicom(tmp_path / "nopix.dcm", RAMP)
    ds = pydicom.dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    assert reason_of(p) == "DICOM without pixel data"


# ---------------------------------------------------------------- rejects


def test_zero_byte(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    assert reason_of(tmp_path / "z.png") == "zero-byte file"


@pytest.mark.parametrize("name", ["t.jpg", "t.png", "t.tif"])
def test_truncated(tmp_path, name):
    p = write_image(tmp_path / name, (64, 64), fmt="TIFF" if name.endswith("tif") else None)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert reason_of(p) == "truncated image"


def test_corrupt_bytes(tmp_path):
    p = write_image(tmp_path / "c.png", (64, 64))
    data = bytearray(p.read_bytes())
    for i in range(200, 400):  # inside the IDAT stream: the header still parses
        data[i] ^= 0x55
    p.write_bytes(bytes(data))
    assert reason_of(p) == "corrupt image data"


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("patient list, not a picture\n")
    assert reason_of(tmp_path / "notes.jpg") == "not an image"


def test_pixel_cap_reports_size_and_sets_pil_limit(tmp_path):
    p = write_image(tmp_path / "s.png", (12, 12))  # 144 pixels
    assert reason_of(p, max_pixels=100) == "over pixel cap (12 x 12)"
    assert Image.MAX_IMAGE_PIXELS == 100
    # Beyond 2x the cap PIL itself raises DecompressionBombError: still a reject, not a crash.
    big = write_image(tmp_path / "b.png", (32, 32))
    assert reason_of(big, max_pixels=100) == "over pixel cap (1024 pixels)"
    assert read_image(p, max_pixels=144).width == 12
    assert Image.MAX_IMAGE_PIXELS == 144


def test_broken_symlink_and_loop(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert reason_of(tmp_path / "dangling.png") == "broken symlink"
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    assert reason_of(tmp_path / "loop_a.png") == "broken symlink"


def test_fifo_is_not_opened(tmp_path):
    # Opening a FIFO for reading would block forever; it must be refused from stat alone.
    os.mkfifo(tmp_path / "pipe.png")
    assert reason_of(tmp_path / "pipe.png") == "not a regular file"


def test_permission_denied(tmp_path):
    if os.geteuid() != 0:
        p = write_image(tmp_path / "locked.png")
        p.chmod(0)
        assert reason_of(p) == "permission denied"
        return
    # root reads anything: check in a forked child that drops to 'nobody', the way a
    # shared-cluster user meets a colleague's unreadable file.
    d = Path(tempfile.mkdtemp(prefix="midol-perm-"))
    try:
        d.chmod(0o755)
        p = write_image(d / "locked.png")
        p.chmod(0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    read_image(p)
                    msg = "read"
                except ImageRejected as e:
                    msg = e.reason
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                msg = f"error {e!r}"
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        msg = os.read(r, 200).decode()
        os.close(r)
        if msg.startswith("error PermissionError"):
            pytest.skip("this container cannot drop privileges (no CAP_SETUID)")
        assert msg == "permission denied"
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def test_candidate_names():
    assert readers.SUPPORTED_EXTENSIONS >= {
        ".jpg",
        ".jpeg",
        ".png",
        ".tif",
        ".tiff",
        ".bmp",
        ".webp",
        ".dcm",
        ".dicom",
    }
    assert readers.is_candidate_name("A.JPG") and readers.is_candidate_name("IMG0001")
    assert readers.is_candidate_name("1.2.840.113619.2.55")
    assert not readers.is_candidate_name("labels.csv") and not readers.is_candidate_name("notes.txt")


def test_draft_side_decodes_a_large_jpeg_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (800, 1200, 3), dtype=np.uint8)
    jpg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.fromarray(arr).save(jpg, quality=90)
    Image.fromarray(arr).save(png)
    full = read_image(jpg)
    assert (full.width, full.height) == (1200, 800)
    small = read_image(jpg, draft_side=150)  # DCT scale 1/4: shorter side 200 >= 150
    assert (small.width, small.height) == (300, 200) and small.image.mode == "RGB"
    assert read_image(jpg, draft_side=500).width == 1200  # no scale keeps the shorter side >= 500
    assert read_image(png, draft_side=150).width == 1200  # only JPEG has a DCT scale


def test_segmentation_reads_through_the_readers_decoder(tmp_path):
    """A 16-bit PNG is min-max scaled as at ingest (not clipped), and a damaged file is one reject."""
    from midol_cli.train.seg_data import open_rgb

    arr = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    img = open_rgb(str(tmp_path / "x16.png"), 10**6, None)
    assert img.mode == "RGB" and np.asarray(img)[..., 0].max() == 255
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageRejected):
        open_rgb(str(tmp_path / "bad.png"), 10**6, None)


def _lying_jpeg(claim: tuple[int, int], size: int = 64, **save) -> bytes:
    """A ``size`` x ``size`` JPEG whose frame header claims ``claim`` (width, height)."""
    import struct

    buf = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, "JPEG", **save)
    data = bytearray(buf.getvalue())
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    struct.pack_into(">HH", data, sof + 5, claim[1], claim[0])
    return bytes(data)


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"optimize": True, "subsampling": 0}])
def test_a_jpeg_whose_header_claims_more_than_its_data_is_rejected(tmp_path, save):
    """A 64 x 64 JPEG whose header says 13000 x 13000 decoded (libjpeg pads a short scan, Pillow drops
    the warning) into a 13000 x 13000 image of made-up pixels (issue 25.12). The pixel cap applies to the
    header's claim before any decoding, and data too short for the claimed frame is a reject."""
    data = _lying_jpeg((13000, 13000), **save)
    with pytest.raises(readers.ImageRejected) as e:
        readers.decode_bytes(data, "liar.jpg")
    assert e.value.reason.startswith("truncated image (its header claims 13000 x 13000, which needs at "
                                     "least ")
    with pytest.raises(readers.ImageRejected, match=r"^over pixel cap \((13000 x 13000|169000000 pixels)\)$"):
        readers.decode_bytes(data, "liar.jpg", max_pixels=10_000)
    (tmp_path / "raw" / "a").mkdir(parents=True)
    (tmp_path / "raw" / "a" / "liar.jpg").write_bytes(data)
    Image.new("RGB", (20, 20)).save(tmp_path / "raw" / "a" / "fine.jpg")
    from midol_cli.data.ingest import ingest_folder, reason_class
    from midol_cli.data.manifest import read_manifest

    ingest_folder(tmp_path / "raw", "fundus", out=tmp_path / "m.parquet", workers=1)
    df, _ = read_manifest(tmp_path / "m.parquet")
    rows = dict(zip(df["path"], zip(df["status"], df["reason"], df["width"], strict=True), strict=True))
    assert rows["a/fine.jpg"] == ("ok", "", 20)
    assert rows["a/liar.jpg"][0] == "rejected" and reason_class(rows["a/liar.jpg"][1]) == "truncated image"


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("save", [{}, {"optimize": True}, {"progressive": True, "optimize": True},
                                  {"subsampling": 0, "optimize": True}, {"quality": 5, "optimize": True}])
def test_the_data_check_never_refuses_a_real_jpeg(mode, save):
    """The cheapest real JPEGs (one flat colour, optimised tables: every block at the 1-2 bit floor) pass."""
    from midol_cli.data.jpeg_roi import coded_data_problem

    for size in ((1, 1), (17, 9), (1024, 768), (3000, 2000)):
        for value in (0, 128, 255):
            buf = io.BytesIO()
            Image.new(mode, size, value if mode == "L" else (value,) * 3).save(buf, "JPEG", **save)
            assert coded_data_problem(buf.getvalue()) == "", (size, value)
            assert readers.decode_bytes(buf.getvalue(), "x.jpg").width == size[0]

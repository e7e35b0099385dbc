"""Decoding only the restart intervals under a crop (midol_cli/data/jpeg_roi.py)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from midol_cli.data import jpeg_roi as J
from midol_cli.data.shards import encode_image, open_encoded
from midol_cli.data.transforms import crop_box


def _photo(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Strong colour detail everywhere: chroma upsampling differences would show."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    return img if mode == "RGB" else img.convert("L")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


@pytest.mark.parametrize(
    ("width", "expected"), [(512, 4), (500, 4), (48, 3), (112, 1), (16, 1), (1, 1), (96, 3)]
)
def test_restart_interval_divides_the_mcus_per_row(width: int, expected: int) -> None:
    assert J.restart_interval(width) == expected
    assert (-(-width // 16)) % J.restart_interval(width) == 0


def test_shard_jpegs_carry_a_cuttable_layout() -> None:
    ext, data = encode_image(_photo(500, 333), 512)
    assert ext == "jpg"
    layout = J.parse(data)
    assert layout is not None
    assert (layout.width, layout.height, layout.ncomp, layout.mcu_w, layout.mcu_h) == (500, 333, 3, 16, 16)
    assert layout.interval == 4 and layout.per_row == 8  # 32 MCUs per row
    assert len(layout.starts) == len(layout.ends) == 8 * 21  # 21 MCU rows
    assert all(s < e for s, e in zip(layout.starts, layout.ends, strict=True))
    # The restart markers cost about 1% of the bytes.
    assert (
        len(data) < 1.03 * len(_jpeg(Image.open(io.BytesIO(data)).convert("RGB"), subsampling="4:2:0")) + 64
    )


def test_files_that_cannot_be_cut_are_recognised() -> None:
    img = _photo(128, 96)
    assert J.parse(_jpeg(img)) is None  # no restart markers
    assert J.parse(_jpeg(img, progressive=True, restart_marker_blocks=2)) is None
    assert J.parse(_jpeg(img, restart_marker_blocks=3)) is None  # 8 MCUs per row: intervals straddle rows
    png = io.BytesIO()
    img.save(png, "PNG")
    assert J.parse(png.getvalue()) is None
    good = _jpeg(img, restart_marker_blocks=2)
    assert J.parse(good) is not None
    assert J.parse(good[: len(good) // 2]) is None  # truncated: no end of image
    assert J.parse(b"\xff\xd8\xff\xe0\x00") is None
    assert J.parse(good[:2] + b"\xff\xd0" + good[2:]) is None  # a stray restart marker in the header
    assert J.parse(b"") is None


@pytest.mark.parametrize(
    ("size", "mode"),
    [((512, 512), "RGB"), ((500, 333), "RGB"), ((112, 80), "RGB"), ((300, 77), "L"), ((17, 9), "RGB")],
)
def test_region_pixels_equal_the_full_decode(size: tuple[int, int], mode: str) -> None:
    data = _jpeg(_photo(*size, seed=size[0], mode=mode), restart_marker_blocks=J.restart_interval(
        size[0], 16 if mode == "RGB" else 8), subsampling="4:2:0")
    full = _pixels(Image.open(io.BytesIO(data)))
    rng = random.Random(size[0])
    cut = 0
    for _ in range(60):
        box = crop_box(*size, scale=(0.02, 0.9), rng=rng)
        enc = open_encoded(data, "jpg")
        assert enc.mode == mode and enc.size == size
        region, (x0, y0) = enc.decode_region(box)
        assert region.mode == mode
        cut += region.size != size
        got = _pixels(region.crop((box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)))
        assert np.array_equal(got, full[box[1] : box[3], box[0] : box[2]])
    if min(size) >= 64:
        assert cut > 30  # most boxes were decoded from a part of the file


def test_full_decode_equals_pil() -> None:
    data = encode_image(_photo(256, 200), 512)[1]
    enc = open_encoded(data, "jpg")
    assert np.array_equal(_pixels(enc.decode()), _pixels(Image.open(io.BytesIO(data))))
    assert enc.decode() is enc.decode()  # decoded once
    assert enc.decode_region((10, 10, 20, 20))[1] == (0, 0)  # once decoded, the whole image serves


def test_a_small_box_reads_a_small_part_of_the_file() -> None:
    data = encode_image(_photo(512, 512), 512)[1]
    layout = J.parse(data)
    stream, origin, size = J.region_stream(layout, (200, 300, 260, 340))
    assert origin == (192, 288) and size == (128, 64)  # 1-px margin, then whole 64 x 16 px pieces
    assert len(stream) < 0.1 * len(data)
    assert Image.open(io.BytesIO(stream)).size == size
    # The cut's restart markers are numbered afresh, in order, as a decoder counts them.
    big, _, _ = J.region_stream(layout, (70, 50, 400, 300))
    cut = J.parse(big)
    assert cut is not None and cut.per_row == 6 and len(cut.starts) == 6 * 16
    numbers = [cut.scan[e + 1] - 0xD0 for e in cut.ends[:-1].tolist()]
    assert numbers == [k & 7 for k in range(len(numbers))]


def test_other_images_decode_whole() -> None:
    img = _photo(120, 90)
    for data, ext in ((_jpeg(img), "jpg"), (_jpeg(img, progressive=True), "jpg")):
        enc = open_encoded(data, ext)
        region, origin = enc.decode_region((5, 5, 30, 30))
        assert origin == (0, 0) and region.size == (120, 90)
        assert np.array_equal(_pixels(region), _pixels(Image.open(io.BytesIO(data))))
    png = io.BytesIO()
    img.convert("L").save(png, "PNG")
    enc = open_encoded(png.getvalue(), "png")
    assert enc.mode == "L" and enc.decode_region((0, 0, 4, 4))[0].size == (120, 90)


def test_header_checks_come_before_any_decoding() -> None:
    data = encode_image(_photo(200, 100), 512)[1]
    with pytest.raises(ValueError, match="max side 64"):
        open_encoded(data, "jpg", max_side=64)
    with pytest.raises(ValueError, match="pixel cap"):
        open_encoded(data, "jpg", max_pixels=1000)
    plain = _jpeg(_photo(200, 100))
    with pytest.raises(ValueError, match="max side 64"):
        open_encoded(plain, "jpg", max_side=64)
    with pytest.raises(ValueError, match="not an image extension"):
        open_encoded(data, "gif")


def test_undecodable_pixels_raise_a_decode_error() -> None:
    data = encode_image(_photo(200, 100), 512)[1]
    truncated = open_encoded(data[: len(data) // 2], "jpg")  # header fine, scan cut short
    with pytest.raises(J.ImageDecodeError, match="truncated"):
        truncated.decode_region((0, 0, 50, 50))
    # The decoder that skips PIL's header parser reports short data the same way.
    broken = J.EncodedImage(data[: len(data) // 2], "jpg", layout=J.parse(data))
    with pytest.raises(J.ImageDecodeError, match="not enough image data"):
        broken.decode()
    with pytest.raises(ValueError, match="exactly one"):
        J.EncodedImage(data, "jpg")

"""Decode only the part of a JPEG that a crop needs, by cutting restart intervals.

A baseline JPEG written with restart markers every ``N`` MCUs (``midol shard``
writes them, see ``restart_interval``) is a grid of independently coded pieces:
at every RST marker the decoder resets its DC predictors and realigns to a byte.
When ``N`` divides the number of MCUs per row, each piece covers ``N`` MCUs of
one MCU row, so the pieces that cover a crop box, each re-labelled RST0..RST7 in
turn, under a frame header carrying the sub-grid's width and height, form a
valid JPEG of just that region. Decoding it costs in proportion to its area:
Huffman decoding, which dominates on medical photos, and the IDCT and colour
conversion. This is the region-of-interest decode that GPU loaders do (e.g.
NVIDIA DALI's fused decode + random crop), done on the compressed bytes so that
the standard decoder (Pillow's libjpeg-turbo) does the work.

The crop's pixels are exactly those of a full decode (tests/data/test_jpeg_roi.py):
the region is taken one pixel wider than the box on every side, because at the
region's own edges the chroma upsampling of a 4:2:0 file lacks the neighbour that
a full decode has.

Anything this module does not recognise (progressive or arithmetic coding, no
or misaligned restart markers, several scans, CMYK) is not an error: ``parse``
returns None and the caller decodes the whole image.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from typing import Any

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_SOF_HUFFMAN_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman coded
# Every other frame type: progressive, lossless, hierarchical, arithmetic coded.
_SOF_OTHER = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Below this fraction of the image, cutting pays for parsing the scan; above it decode it all.
FULL_DECODE_ABOVE = 0.85


def restart_interval(width: int, mcu_width: int = 16, max_mcus: int = 4) -> int:
    """MCUs per restart interval for a JPEG ``width`` px wide: the largest ``n <= max_mcus`` dividing
    the MCUs per row (so that no interval straddles two rows). 4 MCUs of a 4:2:0 file are 64 px:
    about 1% more bytes on a 512 px photo."""
    per_row = -(-int(width) // mcu_width)
    return next(n for n in range(max(1, max_mcus), 0, -1) if per_row % n == 0)


@dataclass(frozen=True)
class JpegLayout:
    """Where a restart-marked baseline JPEG's pieces are."""

    width: int
    height: int
    ncomp: int  # 1 (grayscale) or 3 (YCbCr or RGB)
    mcu_w: int
    mcu_h: int
    interval: int  # MCUs per restart interval
    per_row: int  # intervals per MCU row
    head: bytes  # SOI and every segment before the frame header (SOF)
    sof: bytes  # the frame header segment, marker included
    tail: bytes  # every segment after SOF up to and including the scan header (SOS)
    scan: bytes  # entropy-coded data, restart markers included
    starts: Any  # int64 numpy array: offset in ``scan`` where each interval starts
    ends: Any  # int64 numpy array: offset in ``scan`` where each interval ends


def parse(data: bytes) -> JpegLayout | None:
    """The restart-interval layout of a JPEG, or None if it cannot be cut (see module doc)."""
    try:
        return _parse(data)
    except (IndexError, struct.error, ValueError):
        return None


def _parse(data: bytes) -> JpegLayout | None:
    if not data.startswith(_SOI):
        return None
    i, n = 2, len(data)
    sof_at = sof_end = -1
    dims: tuple[int, int, int, int, int] | None = None
    interval = 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length have no place here
            return None
        length = struct.unpack_from(">H", data, i + 2)[0]
        if length < 2 or i + 2 + length > n:
            return None
        seg_end = i + 2 + length
        if marker in _SOF_OTHER:
            return None
        if marker in _SOF_HUFFMAN_SEQUENTIAL:
            if sof_at >= 0:
                return None
            height, width, ncomp = struct.unpack_from(">HHB", data, i + 5)
            if ncomp not in (1, 3) or length != 8 + 3 * ncomp or width == 0 or height == 0:
                return None
            factors = [data[i + 10 + 3 * c + 1] for c in range(ncomp)]
            hmax, vmax = max(f >> 4 for f in factors), max(f & 15 for f in factors)
            if ncomp == 1:  # a single-component scan is not interleaved: one 8x8 block per MCU
                hmax = vmax = 1
            dims = (width, height, 8 * hmax, 8 * vmax, ncomp)
            sof_at, sof_end = i, seg_end
        elif marker == 0xDD:  # DRI
            interval = struct.unpack_from(">H", data, i + 4)[0]
        elif marker == 0xDA:  # SOS: the one scan must carry every component
            if dims is None or data[i + 4] != data[sof_at + 9]:
                return None
            return _layout(data, sof_at, sof_end, seg_end, dims, interval)
        i = seg_end
    return None


def _layout(data: bytes, sof_at: int, sof_end: int, scan_at: int, dims: tuple[int, int, int, int, int],
            interval: int) -> JpegLayout | None:
    width, height, mcu_w, mcu_h, ncomp = dims
    mcus_x, mcus_y = -(-width // mcu_w), -(-height // mcu_h)
    if interval <= 0 or mcus_x % interval:
        return None
    # The scan runs to EOI: the file's last two bytes as midol writes it; otherwise the first EOI
    # after the scan header (never data: a data 0xFF is stuffed as FF 00).
    eoi = len(data) - 2 if data.endswith(_EOI) else data.find(_EOI, scan_at)
    if eoi < scan_at:
        return None
    scan = data[scan_at:eoi]
    starts, ends = _intervals(scan)
    per_row = mcus_x // interval
    if len(starts) != per_row * mcus_y:
        return None
    return JpegLayout(
        width=width, height=height, ncomp=ncomp, mcu_w=mcu_w, mcu_h=mcu_h, interval=interval, per_row=per_row,
        head=data[:sof_at], sof=data[sof_at:sof_end], tail=data[sof_end:scan_at], scan=scan,
        starts=starts, ends=ends,
    )


def _intervals(scan: bytes):
    """Start and end offsets of the restart intervals of entropy-coded data: split at its restart
    markers (FF D0..FF D7), found with numpy (a Python scan of ~70 kB costs more than a decode's tenth)."""
    import numpy as np

    a = np.frombuffer(scan, dtype=np.uint8)
    ff = np.flatnonzero(a[:-1] == 0xFF)  # few: stuffed data bytes and the markers
    marks = ff[(a[ff + 1] & 0xF8) == 0xD0]
    return np.concatenate(([0], marks + 2)), np.concatenate((marks, [len(scan)]))


def region_stream(
    layout: JpegLayout, box: tuple[int, int, int, int]
) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """A JPEG of the interval-aligned region covering ``box`` (left, top, right, bottom), the
    region's top-left corner in the image, and its size."""
    left, top, right, bottom = _clip(box, layout.width, layout.height)
    # One pixel of margin: a crop edge then never lies on the region's own edge, where chroma
    # upsampling would lack the neighbour a full decode has, so the crop's pixels are the same.
    left, top = max(0, left - 1), max(0, top - 1)
    right, bottom = min(layout.width, right + 1), min(layout.height, bottom + 1)
    span = layout.interval * layout.mcu_w
    c0, c1 = left // span, -(-right // span)
    r0, r1 = top // layout.mcu_h, -(-bottom // layout.mcu_h)
    x0, y0 = c0 * span, r0 * layout.mcu_h
    w = min(layout.width, c1 * span) - x0
    h = min(layout.height, r1 * layout.mcu_h) - y0
    body = _cut_scan(layout, r0, r1, c0, c1)
    sof = layout.sof[:5] + struct.pack(">HH", h, w) + layout.sof[9:]
    return b"".join((layout.head, sof, layout.tail, body, _EOI)), (x0, y0), (w, h)


def _cut_scan(layout: JpegLayout, r0: int, r1: int, c0: int, c1: int) -> bytearray:
    """The entropy-coded data of interval columns [c0, c1) of MCU rows [r0, r1), restart markers
    renumbered RST0, RST1, ... in order, as a decoder of the smaller image expects.

    Each row's intervals are one contiguous span of the scan (their own markers included), so the
    cut is one slice per row, joined by a marker; then every marker byte is renumbered at once.
    """
    import numpy as np

    starts, ends, cols = layout.starts, layout.ends, c1 - c0
    first = np.arange(r0, r1) * layout.per_row + c0  # each row's first interval
    span_start, span_end = starts[first], ends[first + cols - 1]
    scan = layout.scan
    body = bytearray(b"\xff\xd0".join([scan[a:b] for a, b in zip(span_start.tolist(), span_end.tolist(),
                                                                    strict=True)]))
    lens = span_end - span_start
    if len(first) * cols > 1:
        row_at = np.zeros(len(first), dtype=np.int64)
        row_at[1:] = np.cumsum(lens[:-1] + 2)
        inner = ends[first[:, None] + np.arange(cols - 1)] - span_start[:, None] + row_at[:, None]
        joins = (row_at + lens)[:, None]
        marks = np.concatenate((inner, joins), axis=1).ravel()[:-1]  # in order; the last row has no join
        out = np.frombuffer(body, dtype=np.uint8)
        out[marks + 1] = 0xD0 + (np.arange(marks.size) & 7)
    return body


def _clip(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(v) for v in box)
    left, top = min(max(0, left), width - 1), min(max(0, top), height - 1)
    right, bottom = min(max(left + 1, right), width), min(max(top + 1, bottom), height)
    return left, top, right, bottom


class ImageDecodeError(ValueError):
    """A shard image whose header was fine but whose pixels could not be decoded."""


class EncodedImage:
    """A shard image checked as far as its header and decoded on demand, in whole or in part.

    Made by ``shards.open_encoded``, which checks the pixel cap and max side first. Either
    ``layout`` (a restart-marked JPEG, see ``parse``) or ``opened`` (any other image, opened lazily
    by PIL) is given. ``decode()`` decodes it all (once); ``decode_region(box)`` returns
    ``(image, (x0, y0))``, an image covering ``box`` whose top-left pixel is ``(x0, y0)`` of the full
    image: with a layout and a box under ``FULL_DECODE_ABOVE`` of the image, only the intervals
    under the box are decoded; otherwise the whole image, at offset (0, 0). ``mode`` is "L" or
    "RGB", as the decoded image will be. A decoding failure raises ``ImageDecodeError``.
    """

    def __init__(
        self, data: bytes, ext: str, *, opened: Any = None, layout: JpegLayout | None = None
    ) -> None:
        if (opened is None) == (layout is None):
            raise ValueError("give exactly one of opened / layout")
        self.data, self.ext = data, ext
        self._opened, self._layout = opened, layout
        self._full: Any = None
        if layout is not None:
            self.size: tuple[int, int] = (layout.width, layout.height)
            self.mode = "L" if layout.ncomp == 1 else "RGB"
        else:
            self.size = tuple(opened.size)  # type: ignore[assignment]
            self.mode = opened.mode if opened.mode in ("L", "RGB") else "RGB"
        self.width, self.height = self.size

    def decode(self):
        """The whole image as PIL "L" or "RGB"."""
        if self._full is None:
            try:
                if self._layout is not None:
                    img = _decode_jpeg(self.data, self.mode, self.size)
                else:
                    img = self._opened
                    img.load()
                self._full = img if img.mode in ("L", "RGB") else img.convert("RGB")
            except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
                raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
            self._opened = None
        return self._full

    def decode_region(self, box: tuple[int, int, int, int]):
        """``(image, (x0, y0))``: pixels covering ``box``, decoded from as few restart intervals as
        possible."""
        plan = self._plan(box)
        if plan is None:
            return self.decode(), (0, 0)
        stream, origin, size = plan
        try:
            return _decode_jpeg(stream, self.mode, size), origin
        except Exception:  # noqa: BLE001 - a damaged piece: the full decode reports it properly
            return self.decode(), (0, 0)

    def region_pixels(self, box: tuple[int, int, int, int]):
        """As ``decode_region``, but a restart-marked JPEG comes as a writable numpy array decoded in
        place: ``(H, W, 4)`` uint8 RGB plus a padding byte (Pillow's own pixel layout), or
        ``(H, W, 1)`` for "L". No copy is made between the decoder and the caller (the transforms'
        fast path); any other image comes as PIL, as from ``decode_region``."""
        if self._layout is None or self._full is not None or not direct_decode_works():
            return self.decode_region(box)
        plan = self._plan(box)
        stream, origin, size = plan if plan is not None else (self.data, (0, 0), self.size)
        try:
            return _decode_jpeg_pixels(stream, self.mode, size), origin
        except Exception:  # noqa: BLE001 - as in decode_region: the full decode reports a damaged file
            return self.decode(), (0, 0)

    def _plan(self, box: tuple[int, int, int, int]):
        """``(stream, origin, size)`` of the region to decode for ``box``, or None for the whole image."""
        layout = self._layout
        left, top, right, bottom = _clip(box, self.width, self.height)
        if (layout is None or self._full is not None
                or (right - left) * (bottom - top) > FULL_DECODE_ABOVE * self.width * self.height):
            return None
        return region_stream(layout, (left, top, right, bottom))


def _decode_jpeg(data: bytes, mode: str, size: tuple[int, int]):
    """Pillow's JPEG decoder (libjpeg-turbo) straight into a new image: the header was parsed already,
    so PIL's Python-level header parser (a tenth of a millisecond per call) is skipped."""
    from PIL import Image

    return Image.frombytes(mode, size, data, "jpeg", mode, "")


def _decode_jpeg_pixels(data: bytes, mode: str, size: tuple[int, int]):
    """Decode a JPEG into a new numpy array: ``(H, W, 4)`` (RGB + padding) or ``(H, W, 1)`` ("L").

    Pillow maps an "RGBX" or "L" image onto the array's memory (``Image.frombuffer``) and its
    JPEG decoder writes there (``Image.frombytes``), so the pixels are never copied: PIL's own
    ``tobytes`` copy alone cost more than a tenth of a millisecond per 400 px crop.
    """
    import numpy as np
    from PIL import Image

    w, h = size
    pil_mode = "RGBX" if mode == "RGB" else "L"
    arr = np.empty((h, w, 4 if mode == "RGB" else 1), dtype=np.uint8)
    img = Image.frombuffer(pil_mode, size, arr, "raw", pil_mode, 0, 1)
    if not img.readonly:  # Pillow copied instead of mapping: the decoder would not write into arr
        raise RuntimeError("Pillow did not map the array")
    img.frombytes(data, "jpeg", mode, "")
    return arr


@functools.cache
def direct_decode_works() -> bool:
    """Whether this Pillow decodes into a mapped numpy array (checked once per process against its
    ordinary decode, so that a Pillow that copies or converts differently falls back, never
    returns wrong pixels)."""
    import numpy as np
    from PIL import Image

    try:
        for mode in ("RGB", "L"):
            grad = np.add.outer(np.arange(24, dtype=np.uint16) * 9, np.arange(40, dtype=np.uint16) * 5)
            src = Image.fromarray(
                np.stack([grad % 256, (grad * 3) % 256, 255 - grad % 256], axis=2).astype(np.uint8)
            )
            buf = io.BytesIO()
            (src if mode == "RGB" else src.convert("L")).save(buf, "JPEG", quality=90)
            ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
            got = _decode_jpeg_pixels(buf.getvalue(), mode, (40, 24))
            got = got[..., :3] if mode == "RGB" else got[..., 0]
            if not np.array_equal(got, ref):
                return False
    except Exception:  # noqa: BLE001 - any failure means: use the ordinary decode
        return False
    return True


# ---------------------------------------------------------------- does the data fill the frame?

# Fewest bits a block can take: sequential Huffman codes a DC difference and an EOB (each a code of at
# least 1 bit); progressive Huffman at least the DC difference of its first scan (its AC scans can skip
# runs of empty blocks). Arithmetic and lossless coding have no such floor: not checked.
_MIN_BITS_PER_BLOCK = {0xC0: 2, 0xC1: 2, 0xC2: 1}


def coded_data_problem(data: bytes) -> str:
    """Why a JPEG's entropy-coded data cannot hold the frame its header claims ("" when it can, or when
    the file is not one this check reads). libjpeg pads a scan that ends early and reports it only as a
    warning that Pillow drops, so a 64 x 64 image whose header claims 13000 x 13000 decodes, without an
    error, into 13000 x 13000 mostly made-up pixels. Every block costs at least
    ``_MIN_BITS_PER_BLOCK`` bits, so a file with fewer coded bytes than that is cut short."""
    try:
        frame, coded = _frame_and_coded_bytes(data)
    except (IndexError, struct.error, ValueError):
        return ""
    if frame is None or frame[0] not in _MIN_BITS_PER_BLOCK:
        return ""
    marker, width, height, factors = frame
    hmax, vmax = max(f[0] for f in factors), max(f[1] for f in factors)
    # Each component's own size (ITU T.81 A.1.1: ceil(X * H / Hmax)), in 8 x 8 blocks.
    blocks = sum(_ceil(_ceil(width * hs, hmax), 8) * _ceil(_ceil(height * vs, vmax), 8) for hs, vs in factors)
    need = blocks * _MIN_BITS_PER_BLOCK[marker] // 8
    if coded >= need:
        return ""
    return (f"truncated image (its header claims {width} x {height}, which needs at least {need} bytes of "
            f"image data; the file holds {coded})")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _frame_and_coded_bytes(data: bytes) -> tuple[tuple[int, int, int, list[tuple[int, int]]] | None, int]:
    """((SOF marker, width, height, [(h, v) sampling per component]) or None, entropy-coded bytes)."""
    if not data.startswith(_SOI):
        return None, 0
    frame = None
    coded = 0
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None, 0  # not a marker where one belongs: the decoder will say what is wrong
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_end = i + 2 + struct.unpack_from(">H", data, i + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and frame is None:
            height, width, ncomp = struct.unpack_from(">HHB", data, i + 5)
            factors = [(data[i + 11 + 3 * c] >> 4, data[i + 11 + 3 * c] & 15) for c in range(ncomp)]
            if not factors or min(min(f) for f in factors) < 1:
                return None, 0
            frame = (marker, width, height, factors)
        if marker == 0xDA:
            end = _entropy_end(data, seg_end)
            coded += end - seg_end
            i = end
            continue
        i = seg_end
    return frame, coded


def _entropy_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data starting at ``pos`` (a data 0xFF is followed
    by 00, a restart marker by D0..D7: both belong to the data)."""
    n = len(data)
    while True:
        j = data.find(b"\xff", pos)
        if j < 0 or j + 1 >= n:
            return n
        nxt = data[j + 1]
        if nxt == 0 or 0xD0 <= nxt <= 0xD7:
            pos = j + 2
            continue
        return j

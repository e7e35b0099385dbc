"""Decode one image file (JPEG/PNG/TIFF/BMP/WEBP/DICOM) into an 8-bit PIL image, or reject it.

Used by ``ingest`` (to validate and describe every file) and by the shard
writer (to get the pixels). Every failure a user's folder can produce
(zero-byte, truncated, corrupt, not an image, unreadable DICOM, decompression
bomb, permission denied, broken symlink) becomes ``ImageRejected`` with a short
stable ``reason``; nothing else escapes ``read_image``.

Pixel policy (what ``ReadResult.intensity`` records):

- 8-bit sources are returned as they are ("L" or "RGB"); ``intensity`` is "".
- 16/32-bit PNG/TIFF are min-max scaled to 8 bits per image: "minmax16to8".
- DICOM grayscale: Modality LUT (RescaleSlope/Intercept or a LUT sequence),
  then the VOI LUT sequence, else the first WindowCenter/WindowWidth (with
  its VOILUTFunction), else min-max over the pixel values; MONOCHROME1 is
  inverted so bone is bright. E.g.
  ``dicom:modality_lut(slope=1,intercept=0)+voi_window(c=2048,w=4096)+invert_monochrome1``.

The pixel cap is checked on the header (PIL size, DICOM Rows x Columns x
frames) before any pixel is decoded.

HDF5 members: datasets such as PCam ship images as one array per file
(``x`` of shape [N, H, W, C] or [N, H, W]). A manifest names one of them with
a member path ``<file>.h5#<index>`` (``member_path``); ``read_file_bytes``
returns that patch serialized as ``.npy`` bytes (dtype/shape header + the
C-order pixels, so equal patches hash equally) with the container's stat, and
``decode_bytes`` turns them into an image (format "HDF5"). h5py is imported
only when such a path is read; without it (it comes with the ``hdf5`` extra) the member is rejected
with "HDF5 image needs h5py: pip install 'midol[hdf5]'".
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midol_cli.data.decoded import ImageRejected, ReadResult, _minmax_to_uint8  # noqa: F401  (public here)
from midol_cli.data.dicom import _decode_dicom

if TYPE_CHECKING:
    from PIL import Image

# PIL's own bomb threshold (89,478,485) times two: a 13k x 13k slide tile still passes.
DEFAULT_MAX_PIXELS: int = 178_956_970

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})
HDF5_EXTENSIONS: frozenset[str] = frozenset({".h5", ".hdf5"})
# Separates an HDF5 container from the index of one image inside it: "x.h5#12".
MEMBER_SEP = "#"

# A file larger than this is refused before it is read into memory: no
# supported format at the pixel cap needs more than ~8 bytes per pixel.
_BYTES_PER_PIXEL_CAP = 8
_MIN_BYTE_CAP = 256 << 20

# PIL formats under the names the manifest uses (cameras write JPEG as MPO).
_FORMAT_NAMES = {"MPO": "JPEG", "JPEG2000": "JPEG2000"}

def byte_cap(max_pixels: int) -> int:
    """Largest file (bytes) ``read_file_bytes`` will load for a given pixel cap."""
    return max(_MIN_BYTE_CAP, _BYTES_PER_PIXEL_CAP * max_pixels)


def is_candidate_name(name: str) -> bool:
    """True when a file name is worth opening: a supported extension, or a name that
    DICOM exports often use instead (no extension, or a numeric UID tail like ``1.2.840.5``)."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in SUPPORTED_EXTENSIONS or suffix == "" or suffix[1:].isdigit()


def has_dicom_preamble(data: bytes) -> bool:
    """True when ``data`` starts with the 128-byte DICOM preamble and ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def sniff_dicom(path: str | os.PathLike[str]) -> bool:
    """Peek at 132 bytes of a regular file: does it carry the DICOM preamble? False on any error."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            return has_dicom_preamble(fh.read(132))
    except OSError:
        return False


def split_member(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``"dir/x.h5#12"`` -> ``("dir/x.h5", 12)``; None for an ordinary file path.

    Only a decimal index after the last "#" of a path whose container ends in
    .h5/.hdf5 counts, so image files that merely contain "#" stay files.
    """
    p = os.fspath(path)
    base, sep, index = p.rpartition(MEMBER_SEP)
    if not sep or not index.isascii() or not index.isdigit():
        return None
    if os.path.splitext(base)[1].lower() not in HDF5_EXTENSIONS:
        return None
    return base, int(index)


def member_path(container: str, index: int) -> str:
    """The path naming image ``index`` of an HDF5 ``container`` (inverse of ``split_member``)."""
    return f"{container}{MEMBER_SEP}{int(index)}"


def _stat_regular(p: str) -> os.stat_result:
    """``os.stat`` of a regular file, or ImageRejected with the reason a user can act on."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ImageRejected("broken symlink" if os.path.islink(p) else "file not found") from None
    except PermissionError:
        raise ImageRejected("permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageRejected("broken symlink") from None
        raise ImageRejected(f"unreadable file ({errno.errorcode.get(e.errno or 0, 'OSError')})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected("not a regular file")
    return st


def read_file_bytes(
    path: str | os.PathLike[str], max_bytes: int | None = None
) -> tuple[bytes, os.stat_result]:
    """Read a whole regular file once; return (bytes, stat). Raises ImageRejected.

    Refuses what would hang or mislead a reader: FIFOs/devices ("not a regular
    file"), dangling or looping links ("broken symlink"), unreadable files
    ("permission denied"), empty files ("zero-byte file"). An HDF5 member path
    (``x.h5#12``) returns that image as .npy bytes and the container's stat.
    """
    p = os.fspath(path)
    member = split_member(p)
    if member is not None:
        return _read_hdf5_member(member[0], member[1], max_bytes)
    st = _stat_regular(p)
    if st.st_size == 0:
        raise ImageRejected("zero-byte file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageRejected(f"file too large ({st.st_size} bytes)")
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except PermissionError:
        raise ImageRejected("permission denied") from None
    except OSError as e:
        raise ImageRejected(f"unreadable file ({errno.errorcode.get(e.errno or 0, 'OSError')})") from None
    if not data:
        raise ImageRejected("zero-byte file")
    return data, st


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_side: int | None = None) -> ReadResult:
    """Read and fully decode one image file; raise ImageRejected with a reason if it cannot be used.

    ``draft_side``: see ``decode_bytes``. A slide tile or volume frame path (``data.parts``) is read from
    its slide or volume."""
    from midol_cli.data.parts import read_path

    part = read_path(os.fspath(path), max_pixels)
    if part is not None:
        return part
    data, _ = read_file_bytes(path, byte_cap(max_pixels))
    return decode_bytes(data, os.fspath(path), max_pixels, draft_side=draft_side)


def decode_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_side: int | None = None) -> ReadResult:
    """Decode in-memory file contents. ``name`` only chooses DICOM/HDF5 handling by its form.

    HDF5 member paths (``x.h5#12``, bytes from ``read_file_bytes``) are .npy arrays;
    files ending in .dcm/.dicom, or carrying the DICM preamble, go to pydicom;
    everything else to PIL. Raises ImageRejected.

    ``draft_side``: a reader that will shrink the image anyway (segmentation's source images) lets a
    JPEG be decoded at a reduced DCT scale (1/2, 1/4, 1/8) whose shorter side stays >= ``draft_side``;
    several times faster on large photos. ``width``/``height`` are then the reduced size. Other
    formats, and ingest (which records the true size), decode at full size.
    """
    if not data:
        raise ImageRejected("zero-byte file")
    suffix = Path(name).suffix.lower()
    try:
        if split_member(name) is not None:
            return _decode_array(data, max_pixels)
        if has_dicom_preamble(data) or suffix in DICOM_EXTENSIONS:
            return _decode_dicom(data, max_pixels, force=suffix in DICOM_EXTENSIONS)
        return _decode_pil(data, max_pixels, draft_side)
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("out of memory while decoding") from None
    except Exception:
        # Hostile bytes reach corners of the decoders no reason above covers; one bad
        # file must still be one reject, never a crashed run.
        raise ImageRejected("corrupt image data") from None


# ---------------------------------------------------------------- HDF5 members


def _image_dataset(fh: Any) -> Any:
    """The file's image array: dataset ``x`` (PCam), else its only top-level dataset, else None."""
    import h5py

    x = fh.get("x")
    if isinstance(x, h5py.Dataset):
        return x
    found = [v for v in fh.values() if isinstance(v, h5py.Dataset)]
    return found[0] if len(found) == 1 else None


def _read_hdf5_member(container: str, index: int, max_bytes: int | None) -> tuple[bytes, os.stat_result]:
    """Image ``index`` of ``container`` as .npy bytes (dtype/shape header + pixels) and the file's stat."""
    import numpy as np

    st = _stat_regular(container)
    # h5py reports an unreadable file as a generic OSError: check first to keep the reason precise.
    if not os.access(container, os.R_OK):
        raise ImageRejected("permission denied")
    from midol_cli.extras import require

    h5py = require("h5py", "hdf5", "HDF5 image", error=ImageRejected)
    try:
        with h5py.File(container, "r") as fh:
            ds = _image_dataset(fh)
            if ds is None:
                raise ImageRejected("HDF5 file without an image dataset 'x'")
            if ds.ndim not in (3, 4) or ds.dtype.kind not in "biuf":
                raise ImageRejected(f"unsupported HDF5 image array ({ds.dtype}, shape {tuple(ds.shape)})")
            if index >= ds.shape[0]:
                raise ImageRejected(f"HDF5 index out of range ({index} of {ds.shape[0]})")
            # Refuse before reading: one item of a hostile array can be arbitrarily large.
            item_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
            if max_bytes is not None and item_bytes > max_bytes:
                raise ImageRejected(f"file too large ({item_bytes} bytes)")
            arr = np.ascontiguousarray(ds[index])
    except ImageRejected:
        raise
    except PermissionError:
        raise ImageRejected("permission denied") from None
    except MemoryError:
        raise ImageRejected("out of memory while decoding") from None
    except Exception:
        # h5py reports a non-HDF5 or damaged file as OSError/KeyError/RuntimeError.
        raise ImageRejected("unreadable HDF5") from None
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), st


def _decode_array(data: bytes, max_pixels: int) -> ReadResult:
    """.npy bytes of one [H, W], [H, W, 1|3|4] image -> 8-bit "L"/"RGB" (non-uint8 is min-max scaled)."""
    import numpy as np
    from PIL import Image

    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise ImageRejected("corrupt image data") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.dtype.kind not in "biuf":
        raise ImageRejected(f"unsupported HDF5 image array ({arr.dtype}, shape {tuple(arr.shape)})")
    h, w = int(arr.shape[0]), int(arr.shape[1])
    if h <= 0 or w <= 0:
        raise ImageRejected("not an image")
    if w * h > max_pixels:
        raise ImageRejected(f"over pixel cap ({w} x {h})")
    intensity = ""
    if arr.dtype == np.bool_:
        bits, arr = 1, arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        bits = 8
    else:
        bits = arr.dtype.itemsize * 8
        arr = _minmax_to_uint8(arr)
        intensity = f"minmax{bits}to8"
    if arr.ndim == 2:
        img = Image.fromarray(arr, mode="L")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")
    return ReadResult(
        image=img,
        width=w,
        height=h,
        channels=1 if img.mode == "L" else 3,
        bit_depth=bits,
        format="HDF5",
        intensity=intensity,
    )


# ---------------------------------------------------------------- PIL formats


def _pil_source_bits(img: Image.Image, data: bytes) -> int:
    # The PNG header (IHDR) and the TIFF BitsPerSample tag hold the true depth;
    # PIL's mode alone cannot tell a 12-bit TIFF from a 16-bit one.
    if img.format == "PNG" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return int(data[24])
    if img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258)
        if bits:
            return int(bits[0] if isinstance(bits, tuple) else bits)
    if img.mode == "1":
        return 1
    if img.mode.startswith("I;16"):
        return 16
    if img.mode in ("I", "F"):
        return 32
    return 8


def _to_8bit(img: Image.Image, bits: int) -> tuple[Image.Image, str]:
    """Return (8-bit "L"/"RGB" image, intensity note)."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img, ""
    if mode in ("1", "LA", "La"):
        return img.convert("L"), ""
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np
        from PIL import Image

        arr = np.asarray(img)
        return Image.fromarray(_minmax_to_uint8(arr), mode="L"), f"minmax{bits}to8"
    # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV: colour, alpha dropped.
    return img.convert("RGB"), ""


def _decode_pil(data: bytes, max_pixels: int, draft_side: int | None = None) -> ReadResult:
    from PIL import Image, ImageOps, UnidentifiedImageError

    # PIL refuses (DecompressionBombError) above 2x this; the explicit check
    # below reports W x H for everything between.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageRejected(f"over pixel cap ({_bomb_pixels(str(e))})") from None
        except UnidentifiedImageError:
            raise ImageRejected("not an image") from None
        except Exception:  # a plugin choking on a damaged header
            raise ImageRejected("not an image") from None
        w, h = img.size
        if w * h > max_pixels:  # the header's claim, before a byte is decoded
            raise ImageRejected(f"over pixel cap ({w} x {h})")
        if w <= 0 or h <= 0:
            raise ImageRejected("not an image")
        fmt = _FORMAT_NAMES.get(img.format or "", img.format or "UNKNOWN")
        if img.format == "JPEG":
            from midol_cli.data.jpeg_roi import coded_data_problem

            problem = coded_data_problem(data)  # a header claiming more pixels than its data holds
            if problem:
                raise ImageRejected(problem)
        if draft_side and img.format == "JPEG" and min(w, h) >= 2 * draft_side:
            f = draft_side / min(w, h)
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB",
                      (max(1, math.ceil(w * f)), max(1, math.ceil(h * f))))
        try:
            img.load()
        except MemoryError:
            raise ImageRejected("out of memory while decoding") from None
        except Exception as e:
            msg = str(e).lower()
            raise ImageRejected("truncated image" if "truncat" in msg else "corrupt image data") from None
        if img.size != (w, h) and img.format != "JPEG":  # (a JPEG draft decodes smaller on purpose)
            raise ImageRejected(f"corrupt image data (decoded {img.width} x {img.height}, its header claims "
                                f"{w} x {h})")
        bits = _pil_source_bits(img, data)
        try:
            # Phone-camera photos (dermoscopy) store rotation in EXIF; honour it
            # so width/height match what a viewer shows.
            if img.getexif().get(0x0112, 1) not in (0, 1):
                img = ImageOps.exif_transpose(img)
            out, intensity = _to_8bit(img, bits)
        except MemoryError:
            raise ImageRejected("out of memory while decoding") from None
        except Exception:
            raise ImageRejected("corrupt image data") from None
    return ReadResult(
        image=out,
        width=out.width,
        height=out.height,
        channels=1 if out.mode == "L" else 3,
        bit_depth=bits,
        format=fmt,
        intensity=intensity,
    )


def _bomb_pixels(message: str) -> str:
    # "Image size (400000000 pixels) exceeds limit of ..." -> "400000000 pixels"
    start = message.find("(")
    end = message.find(")", start)
    return message[start + 1 : end] if 0 <= start < end else "too many pixels"

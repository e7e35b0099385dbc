"""DICOM decoding: the pixel cap on the header, the transfer syntax and its decoder plugin, the
Modality LUT, VOI LUT or window, MONOCHROME1 inversion (the policy in ``readers``' docstring)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from midol_cli.data.decoded import ImageRejected, ReadResult, _minmax_to_uint8

if TYPE_CHECKING:
    import numpy as np

# The compressed transfer syntaxes whose decoder plugins come with the ``dicom`` extra: the family a user
# recognises and the package that decodes it, for a reject reason a user can act on. The base install
# still decodes some of them through Pillow (JPEG baseline; JPEG 2000 up to 16-bit grey or 8-bit colour)
# and RLE through pydicom's own decoder.
_DICOM_PLUGINS = {
    "1.2.840.10008.1.2.4.50": ("JPEG baseline", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.51": ("JPEG extended", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.57": ("JPEG lossless", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.70": ("JPEG lossless", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.201": ("HTJ2K", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.202": ("HTJ2K", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": ("RLE", "pylibjpeg-rle"),
}
# The plugins tried, in this order (pydicom's own order puts gdcm first): pylibjpeg, then the built-in
# and Pillow decoders, with python-gdcm as the fallback for what they cannot decode.
_PLUGIN_ORDER = ("pylibjpeg", "pydicom", "pillow", "gdcm", "pyjpegls")


def _missing_plugin(tsyntax: Any, detail: str) -> ImageRejected:
    """``JPEG 2000 DICOM needs pylibjpeg-openjpeg: pip install 'midol[dicom]' (<detail>)``; the part
    before `` (`` is the reject class of the ingest summary, so the hint survives there too."""
    from midol_cli.extras import missing_message

    family, package = _DICOM_PLUGINS.get(str(tsyntax), (getattr(tsyntax, "name", str(tsyntax)), "a decoder"))
    return ImageRejected(f"{missing_message(family + ' DICOM', package, 'dicom')} ({detail})")


def _num(v: Any) -> float:
    """First value of a DICOM number that may be multi-valued (WindowCenter "40\\400")."""
    try:
        from pydicom.multival import MultiValue

        if isinstance(v, (MultiValue, list, tuple)):
            v = v[0]
    except ImportError:  # pragma: no cover - pydicom always ships multival
        pass
    return float(v)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _decode_dicom(data: bytes, max_pixels: int, force: bool) -> ReadResult:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception:
        raise ImageRejected("unreadable DICOM") from None
    rows, cols, frames, spp, bits_stored, photometric = _header(ds)
    if rows * cols * max(frames, 1) > max_pixels:
        raise ImageRejected(f"over pixel cap ({cols} x {rows})")
    return _frame_image(ds, 0, rows, cols, frames, spp, bits_stored, photometric)


def _header(ds: Any) -> tuple[int, int, int, int, int, str]:
    """(rows, cols, frames, samples per pixel, bits stored, photometric) or ImageRejected. ``frames`` is
    NumberOfFrames (1 when absent; 0 when the header says 0)."""
    try:
        if "PixelData" not in ds:
            # force=True parses any bytes into an empty dataset: only call it DICOM if it says so.
            known = any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID"))
            raise ImageRejected("DICOM without pixel data" if known else "unreadable DICOM")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        nf = ds.get("NumberOfFrames", 1)
        frames = 1 if nf is None or str(nf).strip() == "" else int(nf)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected("unreadable DICOM") from None
    if rows <= 0 or cols <= 0:
        raise ImageRejected("unreadable DICOM")
    return rows, cols, frames, spp, bits_stored, photometric


def read_volume(path: str, max_pixels: int) -> tuple[Any, int, dict[str, str]]:
    """A multi-frame DICOM's dataset, its frame count and what identifies it: ``{"laterality",
    "patient", "series", "sop_class"}`` (present keys only). ImageRejected for an unreadable file, 0
    frames, or a frame over the pixel cap."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception:
        raise ImageRejected("unreadable DICOM") from None
    rows, cols, frames, *_ = _header(ds)
    if frames < 1:
        raise ImageRejected("DICOM volume with 0 frames")
    if rows * cols > max_pixels:
        raise ImageRejected(f"over pixel cap ({cols} x {rows})")
    info = {
        # Image Laterality (0020,0062) describes this image; Laterality (0020,0060) the series.
        "laterality": str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper(),
        "patient": str(ds.get("PatientID", "") or "").strip(),
        "series": str(ds.get("SeriesInstanceUID", "") or "").strip(),
        "sop_class": str(ds.get("SOPClassUID", "") or "").strip(),
    }
    return ds, frames, {k: v for k, v in info.items() if v}


def decode_frame(ds: Any, index: int) -> ReadResult:
    """Frame ``index`` of a dataset from ``read_volume`` as an 8-bit ReadResult; ImageRejected when it
    cannot be decoded or its size differs from the header's."""
    rows, cols, frames, spp, bits_stored, photometric = _header(ds)
    if not 0 <= index < max(frames, 1):
        raise ImageRejected(f"frame {index} out of range (the volume has {frames})")
    return _frame_image(ds, index, rows, cols, frames, spp, bits_stored, photometric)


def _frame_image(ds: Any, index: int, rows: int, cols: int, frames: int, spp: int, bits_stored: int,
                 photometric: str) -> ReadResult:
    """Frame ``index`` of a parsed dataset as an 8-bit ReadResult (the intensity policy of ``readers``).
    A multi-frame file's intensity records which frame (``frame1of3``); a decoded frame whose size is not
    the header's Rows x Columns is rejected."""
    import numpy as np
    from PIL import Image

    tsyntax = _transfer_syntax(ds)
    _check_decoder(tsyntax)
    if not tsyntax.is_compressed:
        bits_alloc = int(ds.get("BitsAllocated", 8) or 8)
        expected = rows * cols * spp * max(frames, 1) * bits_alloc // 8
        if len(ds.PixelData) < expected:
            raise ImageRejected("truncated image")
    try:
        arr = _pixels(ds, tsyntax, frames, index)
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("out of memory while decoding") from None
    except Exception:
        size = _encapsulated_size(ds, index, frames) if tsyntax.is_compressed else None
        if size is not None and size != (cols, rows):  # the decoder refused a frame of another size
            raise ImageRejected(f"frames of differing size (frame {index}: {size[0]} x {size[1]}, "
                                f"header {cols} x {rows})") from None
        raise ImageRejected("unreadable DICOM pixel data") from None
    if arr.ndim == 4:  # frames x rows x cols x samples, if the frame index was ignored
        arr = arr[0]
    elif arr.ndim == 3 and spp == 1:
        arr = arr[0]
    if tuple(arr.shape[:2]) != (rows, cols):
        raise ImageRejected(f"frames of differing size (frame {index}: {arr.shape[1]} x {arr.shape[0]}, "
                            f"header {cols} x {rows})")

    steps: list[str] = []
    try:
        if spp == 1 and photometric != "PALETTE COLOR":
            out8 = _dicom_gray_to_8bit(arr, ds, bits_stored, photometric, steps)
            img = Image.fromarray(out8, mode="L")
        else:
            if photometric == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, ds)
                steps.append("palette_color")
            if arr.dtype != np.uint8:
                arr = _minmax_to_uint8(arr)
                steps.append("minmax")
            if arr.ndim == 2:
                img = Image.fromarray(arr, mode="L")
            else:
                img = Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("out of memory while decoding") from None
    except Exception:
        raise ImageRejected("unreadable DICOM pixel data") from None
    if frames > 1:
        steps.append(f"frame{index + 1}of{frames}")
    return ReadResult(
        image=img,
        width=img.width,
        height=img.height,
        channels=1 if img.mode == "L" else 3,
        bit_depth=bits_stored,
        format="DICOM",
        intensity="dicom:" + "+".join(steps) if steps else "",
    )


def _encapsulated_size(ds: Any, index: int, frames: int) -> tuple[int, int] | None:
    """(width, height) that frame ``index``'s own codestream declares (Pillow reads JPEG and JPEG 2000
    headers without decoding), or None when it cannot tell."""
    try:
        from PIL import Image
        from pydicom.encaps import get_frame

        data = get_frame(ds.PixelData, index, number_of_frames=max(frames, 1))
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:
        return None


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax; for a headerless file (read with force), the encoding it was read in."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return uid.UID(str(ts))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        ts = uid.ExplicitVRBigEndian
    else:
        ts = uid.ExplicitVRLittleEndian if implicit is False else uid.ImplicitVRLittleEndian
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    return ts


def _check_decoder(tsyntax: Any) -> None:
    """Reject before decoding when no installed plugin can decode this transfer syntax."""
    from pydicom.pixels import get_decoder

    name = getattr(tsyntax, "name", str(tsyntax))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageRejected(f"unsupported DICOM transfer syntax: {name}") from None
    except Exception:
        raise ImageRejected("unreadable DICOM") from None
    if not decoder.is_available:
        raise _missing_plugin(tsyntax, name)


def _pixels(ds: Any, tsyntax: Any, frames: int, index: int = 0) -> np.ndarray:
    """Frame ``index``'s pixels (the first by default), trying the available plugins in ``_PLUGIN_ORDER``.
    When every plugin
    fails and none of the dicom extra's is installed, the reject names the extra: Pillow, the base
    install's fallback, cannot decode all of a syntax (JPEG 2000 over 8 bits in colour, 12-bit JPEG)."""
    # One frame: decoding a whole cine loop or volume to use one frame wastes memory.
    opts: dict[str, Any] = {"index": index} if frames > 1 else {}
    plugins: list[str] = [""]
    if tsyntax.is_compressed:
        from pydicom.pixels import get_decoder

        available = set(get_decoder(tsyntax).available_plugins)
        plugins = [p for p in _PLUGIN_ORDER if p in available] + sorted(available - set(_PLUGIN_ORDER))
    failed: Exception | None = None
    for plugin in plugins:
        try:
            ds.pixel_array_options(**opts, **({"decoding_plugin": plugin} if plugin else {}))
            return ds.pixel_array
        except MemoryError:
            raise
        except Exception as e:
            failed = e
    if tsyntax.is_compressed and str(tsyntax) in _DICOM_PLUGINS and plugins == ["pillow"]:
        raise _missing_plugin(tsyntax, "Pillow could not decode it")
    raise failed or ImageRejected("unreadable DICOM pixel data")


def _dicom_gray_to_8bit(
    arr: np.ndarray, ds: Any, bits_stored: int, photometric: str, steps: list[str]
) -> np.ndarray:
    """Modality LUT -> VOI (LUT, window, or min-max) -> MONOCHROME1 inversion; returns uint8 [H, W]."""
    import numpy as np
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    x: np.ndarray = arr
    has_rescale = "RescaleSlope" in ds or "RescaleIntercept" in ds
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        x = apply_modality_lut(arr, ds)
        steps.append("modality_lut(lut)")
    elif has_rescale:
        slope = _num(ds.get("RescaleSlope", 1) or 1)
        intercept = _num(ds.get("RescaleIntercept", 0) or 0)
        x = arr.astype(np.float64) * slope + intercept
        steps.append(f"modality_lut(slope={_fmt(slope)},intercept={_fmt(intercept)})")
    x = x.astype(np.float64, copy=False)

    y: np.ndarray | None = None  # in [0, 1]
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq is not None and len(voi_seq) and "LUTDescriptor" in voi_seq[0]:
        lut_bits = int(voi_seq[0].LUTDescriptor[2]) or 16
        # LUT inputs are integer indices (modality-LUT output is integral for LUT data).
        lut_in = np.rint(x).astype(np.int64)
        y = apply_voi_lut(lut_in, ds, index=0, prefer_lut=True).astype(np.float64) / float(
            (1 << lut_bits) - 1
        )
        steps.append("voi_lut")
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        try:
            c, w = _num(ds.WindowCenter), _num(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            c, w = 0.0, 0.0  # an unparseable window is ignored: min-max below
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        y = _window(x, c, w, func)
        if y is not None:
            extra = "" if func == "LINEAR" else f",{func.lower()}"
            steps.append(f"voi_window(c={_fmt(c)},w={_fmt(w)}{extra})")
    if y is None:
        if bits_stored <= 8 and not steps and x.min() >= 0 and x.max() <= 255:
            y = x / 255.0
        else:
            lo, hi = float(x.min()), float(x.max())
            y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
            steps.append(f"minmax(lo={_fmt(lo)},hi={_fmt(hi)})")
    if photometric == "MONOCHROME1":
        # MONOCHROME1 stores high values as dark; flip so bone is bright like MONOCHROME2.
        y = 1.0 - y
        steps.append("invert_monochrome1")
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _window(x: np.ndarray, c: float, w: float, func: str) -> np.ndarray | None:
    """VOI window per DICOM PS3.3 C.11.2.1.2 mapped to [0, 1]; None for an invalid width."""
    import numpy as np

    if func == "SIGMOID":
        if w <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if func == "LINEAR_EXACT":
        if w <= 0:
            return None
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if w < 1:
        return None
    if w == 1:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)

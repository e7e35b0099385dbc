"""Volumes: a multi-frame DICOM (Ophthalmic Tomography, or any multi-frame image) or a Heidelberg .vol
becomes one row per frame (B-scan), or per frame of a chosen subset.

Frame choice (``frames``): ``all``; ``central:N`` (the N frames around the middle: an OCT volume's
edge B-scans are the least informative); ``every:K`` (frames 0, K, 2K, ...). The choice is recorded in
every row's meta (``frames``) and in the ingest summary, never silent.

Heidelberg .vol is read through eyepy (the ``oct`` extra), which gives the B-scans as 8-bit images after
Heidelberg's own intensity transform. Formats not read here, for want of a real file to test on: .e2e
(Heidelberg), .fda/.fds (Topcon), Zeiss .img and Optovue exports.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from midol_cli.data.decoded import ImageRejected, ReadResult
from midol_cli.errors import UsageError

VOL_EXTENSIONS = frozenset({".vol"})
OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
_EYE = {"R": "right", "OD": "right", "L": "left", "OS": "left"}


def parse_frames(text: str | None) -> tuple[str, int]:
    """``all`` | ``central:N`` | ``every:K`` -> (kind, number); one-line UsageError otherwise."""
    t = (text or "all").strip().lower()
    if t == "all":
        return "all", 0
    kind, _, n = t.partition(":")
    if kind in ("central", "every") and n.strip().isdigit() and int(n) >= 1:
        return kind, int(n)
    raise UsageError(f"--frames must be all, central:N or every:K (N, K >= 1), got '{text}'")


def select_frames(n: int, choice: tuple[str, int]) -> list[int]:
    """The frame indices ``choice`` keeps of ``n`` frames, in order."""
    kind, k = choice
    if kind == "central" and k < n:
        start = (n - k) // 2
        return list(range(start, start + k))
    if kind == "every":
        return list(range(0, n, k))
    return list(range(n))


def eye(laterality: str) -> str:
    """``right`` / ``left`` from a DICOM (R/L) or vendor (OD/OS) laterality; "" otherwise."""
    return _EYE.get(laterality.strip().upper(), "")


def frame_record(res: ReadResult, st: os.stat_result) -> dict[str, Any]:
    """The manifest's decoded fields of one frame: sha256 of its 8-bit pixels (identical B-scans are
    exact duplicates), its perceptual hash, the volume file's size and mtime."""
    from midol_cli.data.ingest_workers import _phash_or_empty

    img = res.image
    digest = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode() + img.tobytes()).hexdigest()
    return {
        "width": res.width,
        "height": res.height,
        "channels": res.channels,
        "bit_depth": res.bit_depth,
        "format": res.format,
        "intensity": res.intensity,
        "sha256": digest,
        "phash": _phash_or_empty(img),
        "bytes": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "status": "ok",
        "reason": "",
    }


# ---------------------------------------------------------------- readers


def _vol(path: str) -> Any:
    """The eyepy EyeVolume of a Heidelberg .vol; ImageRejected for a missing extra or a bad file."""
    import contextlib
    import io
    import logging

    from midol_cli.extras import require

    eyepy = require("eyepy", "oct", "Heidelberg .vol volume", error=ImageRejected)
    logging.getLogger("eyepy").setLevel(logging.ERROR)  # layer-naming notes are not the user's concern
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return eyepy.import_heyex_vol(path)
    except Exception as e:
        raise ImageRejected(f"unreadable .vol volume ({type(e).__name__})") from None


def vol_frames(path: str) -> tuple[Any, int, dict[str, str]]:
    """(volume, frame count, {"laterality", "patient"}) of a .vol file."""
    ev = _vol(path)
    n = int(ev.data.shape[0]) if getattr(ev.data, "ndim", 0) == 3 else 0
    if n < 1:
        raise ImageRejected("volume with 0 frames")
    lat = str(getattr(ev, "laterality", "") or ev.meta.get("laterality", "") or "").strip().upper()
    pid = str(ev.meta.get("patient_id", "") or ev.meta.get("pid", "") or "").strip()
    return ev, n, {k: v for k, v in {"laterality": lat, "patient": pid}.items() if v}


def vol_frame(ev: Any, index: int) -> ReadResult:
    """B-scan ``index`` of an eyepy volume as an 8-bit grey ReadResult."""
    import numpy as np
    from PIL import Image

    from midol_cli.data.decoded import _minmax_to_uint8

    arr = np.asarray(ev.data[index])
    intensity = "vol"
    if arr.dtype != np.uint8:
        arr, intensity = _minmax_to_uint8(arr), "vol+minmax"
    img = Image.fromarray(np.ascontiguousarray(arr), mode="L")
    return ReadResult(
        image=img,
        width=img.width,
        height=img.height,
        channels=1,
        bit_depth=8,
        format="HEYEX-VOL",
        intensity=intensity,
    )


def open_volume(path: str, max_pixels: int) -> tuple[Any, int, dict[str, str], Any]:
    """(volume, frames, info, frame reader ``f(volume, index) -> ReadResult``) for a .vol or DICOM."""
    if os.path.splitext(path)[1].lower() in VOL_EXTENSIONS:
        ev, n, info = vol_frames(path)
        return ev, n, info, vol_frame
    from midol_cli.data.dicom import decode_frame, read_volume

    ds, n, info = read_volume(path, max_pixels)
    return ds, n, info, decode_frame


_CACHE: dict[str, tuple[tuple[int, int], Any, Any]] = {}


def frame_result(path: str, index: int, max_pixels: int | None, expected_mtime: int = 0) -> ReadResult:
    """Frame ``index`` of a volume (kept open per process: the shard plan visits frames in shuffled
    order, and a volume is small beside a slide). A volume whose mtime differs from ingest's is refused."""
    from midol_cli.data.readers import DEFAULT_MAX_PIXELS

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    key = (int(st.st_size), int(st.st_mtime_ns))
    if expected_mtime and expected_mtime != key[1]:
        raise ImageRejected("volume changed since ingest (mtime differs); re-run `midol ingest`")
    hit = _CACHE.get(path)
    if hit is None or hit[0] != key:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        vol, _n, _info, reader = open_volume(path, max_pixels or DEFAULT_MAX_PIXELS)
        hit = _CACHE[path] = (key, vol, reader)
    return hit[2](hit[1], int(index))

"""What a decode produces or refuses (``ReadResult``, ``ImageRejected``) and the helpers the PIL and
DICOM decoders share; the bottom of the readers (``readers`` and ``dicom`` import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


class ImageRejected(Exception):
    """A file that cannot become a training image. ``reason`` is short and stable
    (e.g. "truncated image", "over pixel cap (20000 x 20000)") and never contains pixel data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadResult:
    """One decoded image.

    ``image`` is 8-bit, mode "L" (1 channel) or "RGB" (3 channels), ``width`` x ``height``
    pixels; ``channels`` describes ``image``; ``bit_depth`` is the SOURCE's bits per
    sample (16 for a 16-bit PNG, BitsStored for DICOM); ``format`` is JPEG, PNG, TIFF,
    BMP, WEBP or DICOM; ``intensity`` says how the pixels became 8-bit ("" if they were).
    """

    image: Image.Image
    width: int
    height: int
    channels: int
    bit_depth: int
    format: str
    intensity: str


def _minmax_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linear map of [min, max] to [0, 255]; a constant image becomes all zeros."""
    import numpy as np

    a = arr.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)

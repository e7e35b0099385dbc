"""A 64-bit DCT perceptual hash (pHash) of a decoded image, and fast Hamming-distance search.

The hash: the image in grayscale, resized to 32 x 32 (Lanczos, after a box reduce for large
images), its 2-D DCT-II, and the 8 x 8 block of lowest frequencies (top-left, DC included). Each of
those 64 coefficients gives one bit, set when the coefficient is above the median of the 63 AC
coefficients. The DC term is left out of the median because it is the image's mean brightness,
one to two orders of magnitude above the rest; it still gets a bit (in practice always set, so the
hash has 63 informative bits). A coefficient must exceed the median by more than a tiny tolerance,
so that a flat image hashes to ``8000000000000000`` (only DC) and not to rounding noise. Bits are
packed row-major, most significant first, as 16 hex digits.

Re-encoding (JPEG at quality 75), resizing and mild brightness/contrast changes move a few bits;
unrelated images differ in about half of them (~32). Crops, rotations, flips and heavy edits move
many bits and are not found at small radii.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

HASH_SIZE = 8  # the 8 x 8 low-frequency block: 64 bits
IMG_SIZE = 32  # the image is reduced to 32 x 32 before the DCT
HEX_DIGITS = HASH_SIZE * HASH_SIZE // 4

# A coefficient counts as above the median only by more than this (pixel units are 0-255).
_TOL = 1e-6

# Memory per block of pairwise distances: ~32 MB of uint64 XORs (plus as much for the counts).
_BLOCK_PAIRS = 4 << 20


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C (n x n): ``C @ x`` is the DCT of the column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


# Only the first HASH_SIZE frequencies are needed: D = C8 @ X @ C8.T (8 x 32 @ 32 x 32 @ 32 x 8).
_C8 = _dct_matrix(IMG_SIZE)[:HASH_SIZE]


def _gray32(img: Any) -> np.ndarray:
    """``img`` (a PIL image) as a 32 x 32 float64 grayscale array."""
    from PIL import Image

    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    gray = img.convert("L") if img.mode != "L" else img
    small = gray.resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(small, dtype=np.float64)


def phash_bits(img: Any) -> np.ndarray:
    """The 64 hash bits of a PIL image as a bool array (row-major over the 8 x 8 block)."""
    low = _C8 @ _gray32(img) @ _C8.T
    flat = low.reshape(-1)
    # The tolerance keeps rounding noise (~1e-12 on a flat image) from setting bits.
    return flat - np.median(flat[1:]) > _TOL


def phash(img: Any) -> str:
    """The 64-bit perceptual hash of a PIL image as 16 lowercase hex digits."""
    return np.packbits(phash_bits(img)).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {len(a)} and {len(b)} hex digits")
    return (int(a, 16) ^ int(b, 16)).bit_count() if a else 0


def is_valid(h: object) -> bool:
    """True for a 16-hex-digit hash (an empty or malformed cell, e.g. an old manifest's, is not)."""
    if not isinstance(h, str) or len(h) != HEX_DIGITS:
        return False
    try:
        int(h, 16)
    except ValueError:
        return False
    return True


def to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes -> a uint64 array (every hash must be valid: filter with ``is_valid``)."""
    return np.fromiter((int(h, 16) for h in hashes), dtype=np.uint64, count=len(hashes))


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array (numpy's ``bitwise_count``, else a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8)
    bytes_ = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return _POPCOUNT8[bytes_].sum(axis=-1, dtype=np.uint8)


def iter_near(
    a: np.ndarray, b: np.ndarray, radius: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs (i, j) with ``hamming(a[i], b[j]) <= radius``, as blocks of (i, j, distance) arrays.

    ``a`` and ``b`` are uint64 hash arrays; the distance matrix is computed in blocks of at most
    ``_BLOCK_PAIRS`` entries, so memory stays flat for any N x M.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if not len(a) or not len(b):
        return
    cols = min(len(b), _BLOCK_PAIRS)
    rows = max(1, _BLOCK_PAIRS // cols)
    for j0 in range(0, len(b), cols):
        bj = b[j0 : j0 + cols]
        for i0 in range(0, len(a), rows):
            d = popcount64(a[i0 : i0 + rows, None] ^ bj[None, :])
            ii, jj = np.nonzero(d <= radius)
            if len(ii):
                yield ii + i0, jj + j0, d[ii, jj].astype(np.int64)


def nearest(a: np.ndarray, b: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each hash in ``a``: the index of its closest hash in ``b`` within ``radius`` (-1 if none),
    that distance (-1 if none) and how many hashes of ``b`` lie within ``radius``."""
    best = np.full(len(a), -1, dtype=np.int64)
    dist = np.full(len(a), 65, dtype=np.int64)
    count = np.zeros(len(a), dtype=np.int64)
    for ii, jj, dd in iter_near(a, b, radius):
        np.add.at(count, ii, 1)
        # Keep, per row, the smallest distance (ties: the lowest index of b, as blocks come in order).
        order = np.lexsort((jj, dd, ii))
        ii, jj, dd = ii[order], jj[order], dd[order]
        first = np.r_[True, ii[1:] != ii[:-1]]
        ii, jj, dd = ii[first], jj[first], dd[first]
        better = dd < dist[ii]
        best[ii[better]], dist[ii[better]] = jj[better], dd[better]
    dist[best < 0] = -1
    return best, dist, count

"""The 64-bit DCT perceptual hash: stable under re-encoding and resizing, far apart for distinct images,
and a chunked Hamming search that agrees with the one-pair definition."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from midol_cli.data import phash as ph
from tests.eval.test_contamination import half_size, jpeg_bytes, natural_image

SEEDS = range(24)


def test_hamming_known_answers():
    assert ph.hamming("0000000000000000", "0000000000000000") == 0
    assert ph.hamming("0000000000000000", "ffffffffffffffff") == 64
    assert ph.hamming("0000000000000001", "0000000000000003") == 1
    assert ph.hamming("f0f0f0f0f0f0f0f0", "0f0f0f0f0f0f0f0f") == 64
    assert ph.hamming("8000000000000000", "0000000000000001") == 2
    with pytest.raises(ValueError):
        ph.hamming("00", "000")


def test_hash_format_and_identity():
    img = natural_image(0)
    h = ph.phash(img)
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()
    assert ph.phash(img.copy()) == h
    assert ph.phash(Image.fromarray(np.asarray(img))) == h
    assert ph.is_valid(h) and not ph.is_valid("") and not ph.is_valid("zz" * 8) and not ph.is_valid(None)
    # Grayscale and palette images hash too; a flat image has only its DC bit (none when black),
    # whatever its size and level: rounding noise sets no bit.
    assert ph.is_valid(ph.phash(img.convert("L"))) and ph.is_valid(ph.phash(img.convert("P")))
    for size, level in (((40, 30), 128), ((33, 97), 7), ((512, 512), 255)):
        assert ph.phash(Image.new("L", size, level)) == "8" + "0" * 15
    assert ph.phash(Image.new("RGB", (64, 64))) == "0" * 16


def test_dct_matches_scipy():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).random((32, 32))
    ours = ph._dct_matrix(32) @ x @ ph._dct_matrix(32).T
    assert np.allclose(ours, scipy_fft.dctn(x, norm="ortho"))


def test_reencode_and_resize_stay_within_4_bits():
    jpeg, half = [], []
    for s in SEEDS:
        img = natural_image(s)
        h = ph.phash(img)
        jpeg.append(ph.hamming(h, ph.phash(Image.open(io.BytesIO(jpeg_bytes(img, 75))))))
        half.append(ph.hamming(h, ph.phash(half_size(img))))
    assert max(jpeg) <= 4 and max(half) <= 4, (jpeg, half)


def test_distinct_images_are_far_apart():
    hashes = [ph.phash(natural_image(s)) for s in SEEDS]
    dists = [ph.hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(dists) > 10 and 24 <= np.mean(dists) <= 40, (min(dists), np.mean(dists))


def test_popcount_lookup_table_agrees_with_bitwise_count(monkeypatch):
    x = np.random.default_rng(1).integers(0, 2**63, size=1000, dtype=np.uint64) * np.uint64(2)
    want = np.array([bin(int(v)).count("1") for v in x])
    assert (ph.popcount64(x) == want).all()
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert (ph.popcount64(x) == want).all()


def test_chunked_search_agrees_with_brute_force(monkeypatch):
    monkeypatch.setattr(ph, "_BLOCK_PAIRS", 7)  # many small blocks, rows and columns
    rng = np.random.default_rng(2)
    b = rng.integers(0, 2**63, size=23, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=(23, 3)).astype(np.uint64)
    a = np.concatenate(
        [b[:10] ^ flips[:10, 0] ^ flips[:10, 1], rng.integers(0, 2**63, size=9, dtype=np.uint64)]
    )
    hex_a, hex_b = [f"{int(v):016x}" for v in a], [f"{int(v):016x}" for v in b]
    pairs = {
        (int(i), int(j), int(d))
        for ii, jj, dd in ph.iter_near(a, b, 4)
        for i, j, d in zip(ii, jj, dd, strict=True)
    }
    want = {(i, j, ph.hamming(x, y)) for i, x in enumerate(hex_a) for j, y in enumerate(hex_b)}
    assert pairs == {p for p in want if p[2] <= 4}
    best, dist, count = ph.nearest(a, b, 4)
    for i in range(len(a)):
        near = sorted((d, j) for (k, j, d) in pairs if k == i)
        assert count[i] == len(near)
        assert (best[i], dist[i]) == ((near[0][1], near[0][0]) if near else (-1, -1))
    assert (best[:10] == np.arange(10)).all()
    assert (ph.to_uint64(hex_a) == a).all()

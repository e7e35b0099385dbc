"""One slide -> its tiles: pixel size, tissue mask, grid, tissue fractions, the seeded sample, and a QC
thumbnail (mask and kept tiles drawn on the slide). Runs in ingest's worker processes, one slide a task;
the result is a small JSON-able dict (coordinates, never pixels), cached beside the manifest so that a
killed or repeated ingest redoes only the slides that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from midol_cli.data.decoded import ImageRejected

# Bumped when the same slide and settings would give other tiles (cached results are then redone).
TILER_VERSION = 2


@dataclass(frozen=True)
class TileSettings:
    """How slides become tiles (the ``slides`` layout's options)."""

    mpp: float = 0.5  # micrometres per pixel of the tiles (0.5 ~ 20x)
    tile: int = 224  # tile side in pixels
    min_tissue: float = 0.5  # least tissue fraction a tile keeps
    slide_mpp: float | None = None  # the pixel size of slides that record none
    max_tiles: int = 0  # per slide; 0 keeps every tile
    seed: int = 0  # of the per-slide sample

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "tiler_version": TILER_VERSION}


def sha256_of(path: str, chunk: int = 8 << 20) -> str:
    """The file's sha256, read in chunks (slides are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sample_tiles(n: int, k: int, seed: int, rel: str) -> list[int]:
    """Indices of a uniform sample of ``k`` of ``n`` tiles, seeded by ``seed`` and the slide's path, in
    grid order; all of them when ``k`` is 0 or at least ``n``."""
    import numpy as np

    if k <= 0 or k >= n:
        return list(range(n))
    s = int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:16], 16)
    return sorted(int(i) for i in np.random.default_rng(s).choice(n, size=k, replace=False))


def tile_slide(abs_path: str, rel: str, settings: TileSettings, qc_png: str | None) -> dict[str, Any]:
    """``{"status": "ok", "tiles": [[x, y, fraction, phash], ...], ...}``, or ``{"status": "rejected",
    "reason": ...}``."""
    rec: dict[str, Any] = {"status": "rejected", "reason": "", "tiles": []}
    try:
        st = os.stat(abs_path)
        rec.update(bytes=int(st.st_size), mtime_ns=int(st.st_mtime_ns))
        rec.update(_tile(abs_path, rel, settings, qc_png))
        rec["sha256"] = sha256_of(abs_path)
        rec["status"] = "ok"
    except ImageRejected as e:
        rec["reason"] = e.reason
    except MemoryError:
        rec["reason"] = "out of memory while tiling"
    except OSError as e:
        rec["reason"] = f"unreadable file ({e.strerror or type(e).__name__})"
    except Exception as e:  # a corrupt slide must cost only itself
        rec["reason"] = f"truncated or corrupt slide ({type(e).__name__})"
    return rec


def _tile(abs_path: str, rel: str, s: TileSettings, qc_png: str | None) -> dict[str, Any]:
    from midol_cli.data import tissue, wsi, wsi_jpeg

    slide = wsi.open_slide(abs_path)
    try:
        mpp, source = wsi.slide_mpp(slide, s.slide_mpp)
        grid = wsi.make_grid(slide, mpp, s.mpp, s.tile)
        box = wsi.bounds(slide)
        scale = tissue.mask_scale(slide, grid.span, box)
        try:
            rgb = tissue.low_res(slide, scale, box)
        except Exception as e:
            raise ImageRejected(f"truncated or corrupt slide ({wsi._short(e)})") from None
        mask = tissue.tissue_mask(rgb, min_area=max(4, tissue.MASK_PER_TILE**2 // 4))
        frac = tissue.tile_fractions(mask, grid, scale)
        keep = [(c, r) for r in range(grid.rows) for c in range(grid.cols) if frac[r, c] >= s.min_tissue]
        chosen = [keep[i] for i in sample_tiles(len(keep), s.max_tiles, s.seed, rel)]
        tiles = [[*grid.origin(c, r), round(float(frac[r, c]), 4)] for c, r in chosen]
        fast = wsi_jpeg.open_tiles(abs_path, slide)
        try:
            for t in tiles:
                t.append(tile_phash(slide, t[0], t[1], grid.span, fast=fast))
        finally:
            if fast is not None:
                fast.close()
        if qc_png:
            write_qc(qc_png, rgb, mask, grid, scale, chosen)
        return {
            "vendor": wsi.slide_format(abs_path) or "",
            "slide_mpp": mpp,
            "mpp_source": source,
            "magnification": wsi.magnification(slide, mpp),
            "level": grid.level,
            "read": grid.read,
            "span": grid.span,
            "width": int(slide.dimensions[0]),
            "height": int(slide.dimensions[1]),
            "tissue": round(float(mask.mean()), 4),
            "grid": [grid.cols, grid.rows],
            "tiles": tiles,
        }
    finally:
        slide.close()


def tile_phash(slide: Any, x: int, y: int, span: float, side: int = 64, fast: Any = None) -> str:
    """The tile's perceptual hash (``midol contamination``), from the coarsest level where the tile still
    spans ``side`` pixels: the hash only sees a 32 x 32 reduction, so reading the full tile is not needed."""
    from midol_cli.data import wsi
    from midol_cli.data.phash import phash

    level = 0
    for i, d in enumerate(slide.level_downsamples):
        if span / float(d) >= side:
            level = i
    read = max(1, int(round(span / float(slide.level_downsamples[level]))))
    try:
        return phash(wsi.read_tile(slide, x, y, level, read, side, fast))
    except Exception:  # the hash is optional: a tile is never rejected for it
        return ""


def write_qc(path: str, rgb: Any, mask: Any, grid: Any, scale: float, chosen: list[tuple[int, int]]) -> None:
    """The QC thumbnail: the slide, tissue tinted green, each kept tile outlined in blue (PNG, atomic)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from midol_cli.artifacts import atomic_path

    tint = rgb.astype(np.float32)
    tint[mask] = tint[mask] * 0.6 + np.array([0, 255, 0], np.float32) * 0.4
    img = Image.fromarray(tint.astype(np.uint8))
    up = max(1, 768 // max(img.size))  # small slides: drawn larger so a person can see the grid
    if up > 1:
        img = img.resize((img.width * up, img.height * up), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    k = up / scale
    for c, r in chosen:
        x = round(c * grid.span) * k
        y = round(r * grid.span) * k
        draw.rectangle([x, y, x + grid.span * k - 1, y + grid.span * k - 1], outline=(0, 60, 255))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def cached(cache: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A slide's earlier result when it was made with ``key`` (settings and the slide's size and mtime)."""
    try:
        rec = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return rec.get("result") if rec.get("key") == key else None

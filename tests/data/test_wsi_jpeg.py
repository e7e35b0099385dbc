"""The direct JPEG-tile path of slide reads (data/wsi_jpeg.py): the same pixels as OpenSlide's read_region,
a fallback for everything it does not serve, and the shard writer's read-order dispatch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openslide")
pytest.importorskip("tifffile")
pytest.importorskip("imagecodecs")

sys.path.insert(0, str(Path(__file__).parent))
from wsi_fixtures import slide_pixels, write_generic_tiff, write_svs  # noqa: E402

from midol_cli.data import wsi, wsi_jpeg  # noqa: E402
from midol_cli.data.parts import read_order, tile_path  # noqa: E402


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = slide_pixels(1536, 1280, (100, 80, 1300, 1100), seed=3)
    return write_svs(tmp_path_factory.mktemp("svs") / "a.svs", img)


def _openslide_rgb(slide, x: int, y: int, level: int, size: int) -> np.ndarray:
    return np.asarray(slide.read_region((x, y), level, (size, size)))[..., :3]


@pytest.mark.parametrize(
    ("x", "y", "level", "size"), [(0, 0, 0, 448), (300, 517, 0, 448), (200, 128, 1, 112)]
)
def test_region_equals_openslide_pixel_for_pixel(svs: Path, x: int, y: int, level: int, size: int) -> None:
    slide = wsi.open_slide(svs)
    fast = wsi_jpeg.open_tiles(str(svs), slide)
    assert fast is not None and set(fast.levels) >= {0, 1}
    mine = fast.region(level, x, y, size)
    assert mine is not None
    assert np.array_equal(mine, _openslide_rgb(slide, x, y, level, size))


def test_read_tile_is_identical_with_and_without_the_fast_path(svs: Path, tmp_path: Path) -> None:
    slide = wsi.open_slide(svs)
    fast = wsi_jpeg.open_tiles(str(svs), slide)
    for x, y, read, tile in ((0, 0, 448, 224), (640, 320, 448, 224), (100, 100, 300, 224)):
        a = np.asarray(wsi.read_tile(slide, x, y, 0, read, tile))
        b = np.asarray(wsi.read_tile(slide, x, y, 0, read, tile, fast))
        assert np.array_equal(a, b)
    assert fast.checked == {0: True}
    # a generic pyramidal TIFF is served too
    tif = write_generic_tiff(tmp_path / "g.tif", slide_pixels(1024, 1024, (0, 0, 1024, 1024), seed=1))
    gs = wsi.open_slide(tif)
    gf = wsi_jpeg.open_tiles(str(tif), gs)
    assert gf is not None
    assert np.array_equal(gf.region(0, 256, 300, 448), _openslide_rgb(gs, 256, 300, 0, 448))


def test_what_the_fast_path_does_not_serve_falls_back(svs: Path) -> None:
    slide = wsi.open_slide(svs)
    fast = wsi_jpeg.open_tiles(str(svs), slide)
    w, h = slide.dimensions
    assert fast.region(0, w - 100, 0, 448) is None  # past the right edge: OpenSlide composites on white
    assert fast.region(1, 2, 0, 64) is None  # not on the level's pixel grid (downsample 4)
    assert fast.region(7, 0, 0, 64) is None  # no such level
    edge = wsi.read_tile(slide, w - 100, 0, 0, 448, 224, fast)  # read through OpenSlide instead
    assert np.array_equal(np.asarray(edge), np.asarray(wsi.read_tile(slide, w - 100, 0, 0, 448, 224)))


def test_a_level_whose_colours_disagree_with_openslide_is_never_read_directly(svs: Path) -> None:
    slide = wsi.open_slide(svs)
    fast = wsi_jpeg.open_tiles(str(svs), slide)

    class Shifted:  # an OpenSlide that decodes the JPEG in another colour space
        level_dimensions, level_downsamples = slide.level_dimensions, slide.level_downsamples

        def read_region(self, xy, level, size):
            from PIL import Image

            rgba = np.asarray(slide.read_region(xy, level, size)).copy()
            rgba[..., 0] = 255 - rgba[..., 0]
            return Image.fromarray(rgba, "RGBA")

    assert wsi_jpeg.fast_region(fast, Shifted(), 0, 0, 0, 448) is None
    assert fast.checked == {0: False}
    assert wsi_jpeg.fast_region(fast, slide, 256, 256, 0, 448) is None  # decided once, for the level


def test_a_file_that_is_no_jpeg_tiff_has_no_fast_path(tmp_path: Path) -> None:
    class NoSlide:
        level_dimensions, level_downsamples = ((10, 10),), (1.0,)

    p = tmp_path / "x.svs"
    p.write_bytes(b"not a tiff at all")
    assert wsi_jpeg.open_tiles(str(p), NoSlide()) is None


def test_tile_rows_are_dispatched_in_read_order_and_written_in_plan_order() -> None:
    from midol_cli.data.parts import in_read_order

    paths = [tile_path("b.svs", 0, 448, 0, 448, 224), tile_path("a.svs", 448, 0, 0, 448, 224),
             "plain/x.png", tile_path("a.svs", 0, 0, 0, 448, 224), tile_path("b.svs", 0, 0, 0, 448, 224)]
    tasks = [(str(i), p) for i, p in enumerate(paths)]
    seen: list[str] = []

    def run(it):
        for t in it:
            seen.append(t[1])
            yield t[0]

    assert list(in_read_order(tasks, run, window=4)) == ["0", "1", "2", "3", "4"]
    # the first window of 4 is read sorted by file, level, row, column; the last window holds one task
    assert seen == [paths[3], paths[1], paths[0], paths[2], paths[4]]
    assert read_order(paths[0]) == ("b.svs", 0, 448, 0)
    plain = [(str(i), f"img/{i}.png") for i in range(5)]
    seen.clear()
    assert list(in_read_order(plain, run, window=2)) == ["0", "1", "2", "3", "4"]
    assert seen == [p for _, p in plain]

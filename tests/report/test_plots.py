from __future__ import annotations

import numpy as np
from PIL import Image

from midol_cli.plotting import plot_confusion_matrix
from midol_cli.report.plots import plot_bars


def test_confusion_matrix_and_bars_are_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    path = tmp_path / "cm.png"
    plot_confusion_matrix(cm, ["akiec", "bcc", "mel"], path, title="t")
    img = Image.open(path)
    assert img.format == "PNG" and min(img.size) > 100
    bars = tmp_path / "sub" / "bars.png"
    plot_bars(["t1", "t2"], ["a", "b"], {("t1", "a"): 80.0, ("t2", "b"): 70.0}, {("t1", "a"): (1.0, 2.0)},
              bars, "accuracy (x100)")
    assert Image.open(bars).format == "PNG"
    assert not list(tmp_path.glob("*.tmp")) and not list((tmp_path / "sub").glob(".*.tmp"))

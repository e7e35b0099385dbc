from __future__ import annotations

import pytest

from midol_cli.report.reference import PAPER, PAPER_LABEL, reference_for


def test_published_numbers_are_percent_and_converted_explicitly():
    assert reference_for("paper", "rsna-pneumonia", "accuracy").percent == 85.13
    assert reference_for("paper", "rsna-pneumonia", "accuracy").fraction == pytest.approx(0.8513)
    assert reference_for("paper", "isic2018-seg", "dice").fraction == pytest.approx(0.8859)
    assert reference_for("paper", "rsna-pneumonia", "auroc") is None  # different metric: not shown
    assert reference_for("paper", "chexpert", "auroc") is None  # listed without a value
    assert set(PAPER) == {"retina", "rsna-pneumonia", "isic2018-seg", "ham10000", "breakhis-binary",
                          "breakhis-8class", "mitosis"}
    assert "2604.08936" in PAPER_LABEL
    with pytest.raises(KeyError):
        reference_for("blog", "retina", "accuracy")

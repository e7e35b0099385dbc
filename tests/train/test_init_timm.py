"""issue 25.27: ``--init`` (``model.weights``) takes ``timm:ARCH=FILE`` as ``--weights`` does (one grammar,
``eval.models.parse_weights``); ARCH must be the recipe's ``model.arch``."""

from __future__ import annotations

import pytest
import torch

from midol_cli.errors import UsageError
from midol_cli.train.pretrain import build_model
from tests.train.test_init import ARCH, _recipe, _released


def test_timm_arch_file_starts_the_encoder_from_the_file(tmp_path):
    weights = tmp_path / "swin_t_released.pth"
    init = _released(weights)
    model = build_model(_recipe(tmp_path / "no-shards", f"timm:{ARCH}={weights}"))
    enc = model.student.encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in init.items() if k in enc)
    assert model.init["file"] == str(weights.resolve()) and model.init["load_report"]["complete"]


def test_timm_init_refuses_another_arch_and_a_missing_file(tmp_path):
    weights = tmp_path / "w.pth"
    _released(weights)
    with pytest.raises(
        UsageError, match=r"names timm:resnet18 but model.arch is swin_tiny.*model.arch=resnet18"
    ):
        build_model(_recipe(tmp_path, f"timm:resnet18={weights}"))
    with pytest.raises(UsageError, match=r"weights file '.*nope.pth' does not exist"):
        build_model(_recipe(tmp_path, f"timm:{ARCH}={tmp_path / 'nope.pth'}"))

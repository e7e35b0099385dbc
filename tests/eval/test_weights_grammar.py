"""The --weights grammar is read in one place (eval.models.parse_weights); the contamination check's
run lookup reads it through the same function (issue 24.5)."""

from __future__ import annotations

import pytest

from midol_cli.errors import UsageError
from midol_cli.eval.contamination import run_json_of
from midol_cli.eval.models import WeightsRef, parse_weights


def test_every_form_of_the_grammar(tmp_path):
    assert parse_weights("random:resnet10t") == WeightsRef("random", "resnet10t")
    assert parse_weights("timm:vit_small=/w/a.pth") == WeightsRef("timm", "vit_small", "/w/a.pth")
    assert parse_weights("imagenet-swinb=/w/s.pth") == WeightsRef("registry", "imagenet-swinb", "/w/s.pth")
    assert parse_weights(f"midol={tmp_path}") == WeightsRef("midol", str(tmp_path))
    assert parse_weights(str(tmp_path)) == WeightsRef("midol", str(tmp_path))
    odd = tmp_path / "a=b"  # a run dir whose name holds '=' is a path, not NAME=FILE
    odd.mkdir()
    assert parse_weights(str(odd)) == WeightsRef("midol", str(odd))
    with pytest.raises(UsageError, match="random: needs a model name"):
        parse_weights("random:")
    with pytest.raises(UsageError, match="timm:<model_name>=<local weights file>"):
        parse_weights("timm:vit_small")


def test_the_contamination_lookup_follows_the_same_grammar(tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert run_json_of(str(run)) == run / "run.json"
    assert run_json_of(f"midol={run}") == run / "run.json"
    assert run_json_of(f"random:{run}") is None and run_json_of(f"timm:x={run}") is None
    assert run_json_of(f"imagenet-swinb={run}") is None

"""eval/protocols.py: the one writer of trained protocols into summary.json, for classification and
segmentation alike. It never drops a protocol already in the file."""

import json

import pytest

from midol_cli.eval.protocols import write_protocol
from midol_cli.eval.results import Task, load_summary
from midol_cli.recipes import FinetuneRecipe

MODEL = {"id": "m", "weights": "w", "weights_hash": "abc", "arch": "swin"}


def _block(v):
    return {"metrics": {"dice": {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}}}


def _write(out, protocol, v, data_hash):
    task = Task("isic2018-seg", "dermoscopy", "segmentation", ("background", "lesion"), "dice", "official")
    return write_protocol(
        out,
        protocol,
        _block(v),
        task,
        MODEL,
        data_hash=data_hash,
        n={"train": 4, "val": 2, "test": 2},
        val_source="split",
        notes=[],
        recipe=FinetuneRecipe(),
        task_extra={"split_source": "official"},
    )


def test_a_new_protocol_joins_the_ones_already_there(tmp_path):
    _write(tmp_path, "linear", 0.7, "h1")
    s = _write(tmp_path, "finetune", 0.8, "h1")
    assert set(s["protocols"]) == {"linear", "finetune"}
    assert set(load_summary(tmp_path / "summary.json")["protocols"]) == {"linear", "finetune"}


def test_other_data_is_warned_about_and_nothing_is_dropped(tmp_path, capsys):
    _write(tmp_path, "linear", 0.7, "h1")
    s = _write(tmp_path, "finetune", 0.8, "h2")
    assert set(s["protocols"]) == {"linear", "finetune"}
    assert "other data (hash h1)" in capsys.readouterr().err


def test_a_damaged_summary_is_moved_aside_not_overwritten(tmp_path, capsys):
    (tmp_path / "summary.json").write_text('{"schema": 1, "protocols": ')
    s = _write(tmp_path, "finetune", 0.8, "h1")
    assert set(s["protocols"]) == {"finetune"}
    assert (tmp_path / "summary.json.invalid").read_text().startswith('{"schema": 1')
    assert json.loads((tmp_path / "summary.json").read_text())["task"]["split_source"] == "official"
    assert "moved it to summary.json.invalid" in capsys.readouterr().err


def test_the_written_summary_validates(tmp_path):
    s = _write(tmp_path, "finetune", 0.8, "h1")
    assert s["primary_metric"] == "dice" and s["n"]["test"] == 2
    assert s["provenance"]["protocol"] == "finetune"
    with pytest.raises(KeyError):
        s["protocols"]["linear"]

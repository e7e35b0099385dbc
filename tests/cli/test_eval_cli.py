"""Embedding a model without a router through the real CLI. The whole chain (pretrain -> embed -> probe
-> report) is checked end to end by tests/cli/test_quickstart_cli.py."""

import json
import sys

import pandas as pd
import pytest

from tests.pipeline import build_pipeline


def test_embed_a_no_moe_model(tmp_path, monkeypatch, capsys):
    """One shared expert has nothing to route: embed reports no router instead of failing."""
    from midol_cli import api
    from midol_cli.cli import main

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    p = build_pipeline(tmp_path / "data", per_class=4, modalities=("oct", "pathology"))
    run = tmp_path / "runs" / "nomoe"
    api.pretrain("recipes/smoke.yaml", run, overrides=[
        f"data.shards={p['shards']}", "data.modalities=[oct,pathology]", "projector.shared_expert=true",
        "train.steps=2", "optim.global_batch_size=8", "data.num_workers=0", "projector.hidden_dim=32",
        "projector.n_prototypes=16", "loss.queue_size=8"])
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("router_acc") or k.startswith("expert_router_acc") for k in metrics[-1])
    emb = tmp_path / "emb.parquet"
    monkeypatch.setattr(sys, "argv", ["midol", "embed", "--weights", str(run), "--data", str(p["shards"]),
                                      "--out", str(emb), "--workers", "0"])
    with pytest.raises(SystemExit) as ex:
        main.run()
    err = capsys.readouterr().err
    assert ex.value.code in (0, None), err
    assert "router accuracy: n/a (no router)" in err
    df = pd.read_parquet(emb)
    assert df["router_probs"].isna().all() and len(df) == 32

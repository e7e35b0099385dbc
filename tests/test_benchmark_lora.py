"""The LoRA benchmark (benchmarks/lora.py) runs end to end on a tiny ViT and prints both ratios; its
figures at full size belong in docs/performance.md. Run in this process (its ``main`` with the
command line set), not through tests/benchmark_runner.py: a fresh process spends seconds importing
torch, timm and peft, which the suite's 15-minute budget cannot spare."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_lora_benchmark_runs_and_prints_both_ratios(monkeypatch, capsys):
    pytest.importorskip("peft", reason="the peft extra is not installed")
    spec = importlib.util.spec_from_file_location("bench_lora", ROOT / "benchmarks" / "lora.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", [
        "lora.py", "--arch", "vit_base_patch16_224", "--arch-kwargs",
        '{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}', "--img-size", "32", "--batch", "2",
        "--blocks", "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "lora.rank=2"])
    bench.main()
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["step_time_ratio"] > 0 and len(figures["step_time_ratio_range"]) == 2
    # adapters (rank 2 on qkv and proj of 2 blocks) + head, against every weight of the model
    assert 0 < figures["trainable_lora"] < figures["trainable_full"]
    assert figures["trainable_ratio"] == figures["trainable_lora"] / figures["trainable_full"]
    assert figures["lora"]["rank"] == 2 and "ratio lora/full" in out

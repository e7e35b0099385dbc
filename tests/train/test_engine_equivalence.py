"""The training engine's move (issue 24.1-24.2) changed no number: pre-training's loss at every step,
its exported weights and a fine-tuning run's test predictions match a reference recorded with the code
before the move (``tests/train/reference/*.json``, written by this file run as a script:
``PYTHONPATH=<checkout> python tests/train/test_engine_equivalence.py``).

Tolerances are a millionth (relative): on the machine that recorded the reference the runs are
bit-identical (one thread, deterministic algorithms); the margin only absorbs another CPU's rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REF = Path(__file__).resolve().parent / "reference"
RTOL = 1e-6


def _tensor_print(path: Path) -> dict[str, list[float]]:
    """Per tensor of a safetensors file: (sum, sum of squares) in float64 -- a fingerprint that a
    tolerance can compare (a sha256 cannot)."""
    from safetensors.torch import load_file

    out = {}
    for k, v in sorted(load_file(str(path)).items()):
        a = v.double()
        out[k] = [float(a.sum()), float((a * a).sum())]
    return out


def _sha(path: Path) -> str:
    """sha256 of the tensors (names and bytes; the file's metadata carries a date)."""
    import hashlib

    from safetensors.torch import load_file

    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode() + v.contiguous().numpy().tobytes())
    return h.hexdigest()


def pretrain_reference(root: Path) -> dict:
    """The smoke recipe at a toy size: 6 steps, a checkpoint every 3, a record every step."""
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import run_pretrain
    from tests.pipeline import build_pipeline

    shards = build_pipeline(root / "data", per_class=2, modalities=("xray", "fundus"), min_shards=2)["shards"]
    recipe = load_recipe(
        PretrainRecipe,
        Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml",
        [
            f"data.shards={shards}",
            "data.modalities=[xray, fundus]",
            "train.steps=6",
            "train.ckpt_every=3",
            "train.log_every=1",
            "optim.global_batch_size=4",
            "data.num_workers=0",
            "data.shuffle_buffer=10",
            "projector.hidden_dim=16",
            "projector.n_prototypes=8",
            "projector.bottleneck_dim=8",
            "loss.queue_size=8",
            "train.deterministic=true",
        ],
    )
    summary = run_pretrain(recipe, root / "run")
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    enc = Path(summary["export"]["encoder"])
    return {
        "steps": [r["step"] for r in rows],
        "loss": [r["loss"] for r in rows],
        "loss_intra": [r["loss_intra"] for r in rows],
        "grad_norm": [r["grad_norm"] for r in rows],
        "export_sha256": _sha(enc),
        "export": _tensor_print(enc),
    }


def finetune_reference(root: Path) -> dict:
    """Two epochs of fine-tuning a random tiny Swin on 4 classes x 8 synthetic images."""
    import pyarrow.parquet as pq

    from tests.train.test_finetune import finetune, synth_manifest, tiny_export

    export = tiny_export(root / "export")
    manifest = synth_manifest(root / "data", per_class=8)
    finetune(export, manifest, root, "epochs=2", "optim.batch_size=4", "n_boot=20")
    out = root / "results" / "tiny" / "synth-pathology"
    pred = pq.read_table(out / "predictions.parquet").to_pandas().sort_values("sample_id")
    rows = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "sample_id": pred["sample_id"].tolist(),
        "probs": [list(map(float, p)) for p in pred["probs"]],
        "train_loss": [r["train_loss"] for r in rows],
    }


def test_pretraining_losses_and_export_are_unchanged(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The reference was recorded on one thread; earlier tests in the same process set torch's own count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_pretraining(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_pretraining(tmp_path):
    want = json.loads((REF / "pretrain.json").read_text())
    got = pretrain_reference(tmp_path)
    assert got["steps"] == want["steps"] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "loss_intra", "grad_norm"):
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=0, err_msg=key)
    assert set(got["export"]) == set(want["export"])
    for k, (total, squares) in want["export"].items():
        # A tensor's sum can cancel to near 0 (a BatchNorm bias: -3e-6 from entries of 1e-6), where a
        # relative tolerance on the sum alone is ill-conditioned: its scale is the tensor's L2 norm.
        got_total, got_squares = got["export"][k]
        assert abs(got_total - total) <= RTOL * max(abs(total), np.sqrt(squares)) + 1e-12, k
        np.testing.assert_allclose(got_squares, squares, rtol=RTOL, atol=1e-12, err_msg=k)


def test_finetuning_test_predictions_are_unchanged(tmp_path):
    want = json.loads((REF / "finetune.json").read_text())
    got = finetune_reference(tmp_path)
    assert got["sample_id"] == want["sample_id"] and len(want["sample_id"]) > 0
    np.testing.assert_allclose(got["probs"], want["probs"], rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=RTOL, atol=0)


if __name__ == "__main__":  # record the reference (see the module docstring)
    import tempfile

    import torch

    torch.set_num_threads(1)
    REF.mkdir(exist_ok=True)
    for name, fn in (("pretrain", pretrain_reference), ("finetune", finetune_reference)):
        with tempfile.TemporaryDirectory() as d:
            (REF / f"{name}.json").write_text(json.dumps(fn(Path(d)), indent=1) + "\n")

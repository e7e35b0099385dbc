"""2-process CPU torchrun (gloo) gives the same trajectory and parameters as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("dist"), per_class=3)["shards"]


def _run(cmd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _final(run):
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    return torch.load(ckpts[-1], weights_only=True)


@pytest.mark.parametrize("intra", ["distill", "contrastive"])
def test_two_ranks_match_one_process(shards, tmp_path, intra):
    args = [
        str(ROOT / "recipes" / "smoke.yaml"),
        f"data.shards={shards}",
        f"loss.intra={intra}",
        "train.steps=4",
        "train.log_every=1",
        "train.ckpt_every=100",
        "optim.global_batch_size=8",
        "projector.hidden_dim=32",
        "projector.n_prototypes=16",
        "loss.queue_size=8",
        "loss.inter_ramp_frac=0",
        "train.deterministic=true",
        # An encoder without batch norm: per-rank batch statistics (DDP without SyncBatchNorm, as on CPU)
        # are a property of the model, not of the engine this test checks.
        "model.arch=swin_base_patch4_window7_224",
        "model.arch_kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], window_size: 4}",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(WORKER), args[0], str(one), *args[1:]])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(WORKER), args[0], str(two), *args[1:]])
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 4
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    a, b = _final(one), _final(two)
    assert a["step"] == b["step"] == 4
    for key in ("student", "teacher", "intra"):
        for name, ta in a[key].items():
            torch.testing.assert_close(ta, b[key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    # sanity: training moved the parameters
    init_like = [k for k, v in a["student"].items() if v.dtype.is_floating_point]
    assert init_like


def test_cleanup_releases_ddp_before_destroying_the_group(tmp_path):
    """A DDP wrapper lives in reference cycles; left to interpreter exit after the group is gone,
    gloo's teardown aborts the process now and then. ``cleanup`` must collect it first."""
    import gc
    import weakref

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from midol_cli.distributed import cleanup

    def train_briefly():
        net = DDP(torch.nn.Linear(4, 4))
        net(torch.randn(2, 4)).sum().backward()
        holder: list = [net]
        holder.append(holder)  # reachable only through a garbage cycle once we return, as in a real run
        return weakref.ref(net)

    was_enabled = gc.isenabled()
    gc.disable()  # only the explicit collection in cleanup may free the cycle
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        ref = train_briefly()
        assert ref() is not None  # still held by its own cycle after the function returned
        cleanup()
        assert ref() is None and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if was_enabled:
            gc.enable()

"""``train.strategy=fsdp`` (FSDP2 + DCP checkpoints) on CPU with gloo: the real loop under torchrun.

One uninterrupted 2-rank FSDP run (4 steps, a checkpoint at step 2) is compared with
- the same run under DDP: losses, parameters and the export agree (FSDP changes where the weights
  live, not the arithmetic: only the order of a few float sums differs);
- itself resumed from its step-2 checkpoint by 2 ranks (``--resume auto``): bit-for-bit;
- itself resumed from that checkpoint by 1 process (DCP reshards 2 -> 1): the same trajectory within
  the tolerance of one process against two (test_distributed.py's).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

ARGS = [
    "train.steps=4",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.keep_last=2",
    "optim.global_batch_size=8",
    "optim.accum_steps=2",  # the gradient accumulation path (DDP's no_sync, FSDP's requires_gradient_sync)
    "projector.hidden_dim=32",
    "projector.n_prototypes=16",
    "loss.queue_size=8",
    "loss.inter_ramp_frac=0",
    "loss.intra=distill",
    "train.deterministic=true",
    # As in test_distributed.py: no batch norm, whose per-rank statistics DDP broadcasts and FSDP does not.
    "model.arch=swin_base_patch4_window7_224",
    "model.arch_kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], window_size: 4}",
]


def _run(launcher, run, shards, *extra, resume=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    head = [f"--resume={resume}"] if resume else []
    cmd = [
        *launcher,
        str(WORKER),
        *head,
        str(ROOT / "recipes" / "smoke.yaml"),
        str(run),
        f"data.shards={shards}",
        *ARGS,
        *extra,
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    return [r["loss"] for r in rows]


def _state(path):
    from midol_cli.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    shards = build_pipeline(root, per_class=3)["shards"]
    _run(TORCHRUN, root / "fsdp", shards, "train.strategy=fsdp")
    return {"root": root, "shards": shards, "fsdp": root / "fsdp"}


def _interrupted_copy(runs, name):
    """The uninterrupted run as a run killed after its step-2 checkpoint, mid-way through writing step 4."""
    run = runs["root"] / name
    shutil.copytree(runs["fsdp"], run)
    shutil.rmtree(run / "checkpoints" / "ckpt-00000004.dcp")
    shutil.rmtree(run / "export")
    stale = run / "checkpoints" / ".ckpt-00000004.dcp.tmp"  # what a kill during a sharded save leaves
    stale.mkdir()
    (stale / "__0_0.distcp").write_bytes(b"partial")
    return run


def _compare(a, b, rtol, atol):
    for key in ("student", "teacher", "intra"):
        assert set(a[key]) == set(b[key]), key
        for name, ta in a[key].items():
            torch.testing.assert_close(ta, b[key][name], rtol=rtol, atol=atol, msg=f"{key}.{name}")


@pytest.mark.slow  # the module's torchrun runs: ~2-3 min on 2 cores together
def test_fsdp_matches_ddp(runs):
    """Tolerance rel 1e-5 / abs 1e-6 (measured: 3e-8 after 4 steps). Both reduce gradients over the same
    two ranks and divide by two; they differ only in summation order (DDP's all-reduce of whole buckets,
    FSDP's reduce-scatter of shards; the clipped norm summed from per-shard norms), a few ulp per step
    that AdamW's normalisation can enlarge slightly on near-zero gradients."""
    ddp = runs["root"] / "ddp"
    _run(TORCHRUN, ddp, runs["shards"])
    assert _losses(runs["fsdp"]) == pytest.approx(_losses(ddp), rel=1e-5, abs=1e-6)

    ckpts = sorted(p.name for p in (runs["fsdp"] / "checkpoints").iterdir())
    assert ckpts == ["ckpt-00000002.dcp", "ckpt-00000004.dcp"]  # a DCP directory per checkpoint, no temps
    shard_files = sorted(
        p.name for p in (runs["fsdp"] / "checkpoints" / "ckpt-00000004.dcp").glob("*.distcp")
    )
    assert len(shard_files) == 2  # each rank wrote its own shards
    a = torch.load(ddp / "checkpoints" / "ckpt-00000004.pt", weights_only=True)
    b = _state(runs["fsdp"] / "checkpoints" / "ckpt-00000004.dcp")
    assert b["step"] == 4 and b["strategy"] == "fsdp"
    _compare(a, b, rtol=1e-5, atol=1e-6)
    moved = [n for n, t in b["student"].items() if t.dtype.is_floating_point
             and not torch.equal(t, _state(runs["fsdp"] / "checkpoints" / "ckpt-00000002.dcp")["student"][n])]
    assert len(moved) > len(b["student"]) // 2  # training moved the parameters between the checkpoints

    # The export is a full, ordinary state dict that the one-process loader reads.
    from safetensors.torch import load_file

    from midol_cli.models.export import load_exported_encoder

    ea, eb = (
        load_file(ddp / "export" / "encoder.safetensors"),
        load_file(runs["fsdp"] / "export" / "encoder.safetensors"),
    )
    assert set(ea) == set(eb)
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=1e-5, atol=1e-6, msg=k)
    load_exported_encoder(runs["fsdp"] / "export" / "encoder.safetensors")


@pytest.mark.slow  # the module's torchrun runs: ~2-3 min on 2 cores together
def test_fsdp_resume_same_world_is_exact(runs):
    """Killed after step 2 and resumed by 2 ranks with --resume auto: the same run, to 1e-6."""
    run = _interrupted_copy(runs, "resumed2")
    res = _run(TORCHRUN, run, runs["shards"], "train.strategy=fsdp", resume="auto")
    assert "resumed from" in res.stderr and "ckpt-00000002.dcp" in res.stderr
    assert not (run / "checkpoints" / ".ckpt-00000004.dcp.tmp").exists()  # the kill's leftovers removed
    assert _losses(run) == pytest.approx(_losses(runs["fsdp"]), rel=0, abs=1e-6)
    _compare(
        _state(run / "checkpoints" / "ckpt-00000004.dcp"),
        _state(runs["fsdp"] / "checkpoints" / "ckpt-00000004.dcp"),
        rtol=0,
        atol=1e-6,
    )
    assert (run / "export" / "encoder.safetensors").is_file()


@pytest.mark.slow  # the module's torchrun runs: ~2-3 min on 2 cores together
def test_fsdp_checkpoint_of_two_ranks_resumes_in_one_process(runs):
    """DCP reshards the 2-rank checkpoint for 1 process; steps 3-4 then follow the 2-rank run within
    the tolerance of one process against two (rel 1e-4 / abs 1e-5, as test_distributed.py): the
    losses' all-reduces and the gradient average over two ranks sum in another order than one process."""
    run = _interrupted_copy(runs, "resumed1")
    res = _run([sys.executable], run, runs["shards"], "train.strategy=fsdp", resume="auto")
    assert "resumed from" in res.stderr
    assert _losses(run) == pytest.approx(_losses(runs["fsdp"]), rel=1e-4, abs=1e-5)
    one = _state(run / "checkpoints" / "ckpt-00000004.dcp")
    assert len(list((run / "checkpoints" / "ckpt-00000004.dcp").glob("*.distcp"))) == 1
    _compare(one, _state(runs["fsdp"] / "checkpoints" / "ckpt-00000004.dcp"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the module's torchrun runs: ~2-3 min on 2 cores together
def test_ddp_refuses_a_sharded_checkpoint(runs, tmp_path):
    """A strategy that cannot read the checkpoint says so in one sentence (no traceback, no training)."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import run_pretrain

    r = load_recipe(
        PretrainRecipe, str(ROOT / "recipes" / "smoke.yaml"), [f"data.shards={runs['shards']}", *ARGS]
    )
    with pytest.raises(UsageError, match="train.strategy=fsdp"):
        run_pretrain(r, tmp_path / "run", resume=str(runs["fsdp"] / "checkpoints" / "ckpt-00000002.dcp"))


# ---------------------------------------------------------------- the checkpoint directory, in one process


@pytest.fixture()
def group():
    """A process group of one, as ``train.strategy=fsdp`` makes in a single process."""
    import torch.distributed as dist

    from midol_cli.distributed import cleanup, init_single_group

    init_single_group(torch.device("cpu"))
    try:
        yield
    finally:
        cleanup()
    assert not dist.is_initialized()


def test_sharded_save_is_atomic_pruned_and_read_back(group, tmp_path):
    from midol_cli import checkpoint as ckpt

    for step in (2, 4, 6):
        ckpt.save_sharded(tmp_path, step, {"teacher": {"w": torch.full((3, 2), float(step))}, "intra": {}},
                          {"rng": ckpt.rng_state(), "n_experts": 1}, keep_last=2, is_main=True)
    names = sorted(p.name for p in ckpt.ckpt_dir(tmp_path).iterdir())
    assert names == ["ckpt-00000004.dcp", "ckpt-00000006.dcp"]  # pruned, no temporary left
    # The same step saved again (a finished run resumed) replaces the directory whole.
    ckpt.save_sharded(tmp_path, 6, {"teacher": {"w": torch.full((3, 2), 7.0)}, "intra": {}}, {"n_experts": 1},
                      keep_last=2, is_main=True)
    state = ckpt.load_checkpoint(ckpt.ckpt_dir(tmp_path) / "ckpt-00000006.dcp")
    assert state["step"] == 6 and state["format"] == ckpt.FORMAT
    assert torch.equal(state["teacher"]["w"], torch.full((3, 2), 7.0))
    out = {"teacher": {"w": torch.zeros(3, 2)}, "intra": {}}
    ckpt.load_sharded(ckpt.ckpt_dir(tmp_path) / "ckpt-00000004.dcp", out)  # in place, into laid-out tensors
    assert torch.equal(out["teacher"]["w"], torch.full((3, 2), 4.0))


def test_resume_auto_takes_the_newest_complete_directory(group, tmp_path, capsys):
    from midol_cli import checkpoint as ckpt
    from midol_cli.errors import UsageError

    ckpt.save_sharded(tmp_path, 2, {"teacher": {"w": torch.ones(2)}}, {}, keep_last=3, is_main=True)
    d = ckpt.ckpt_dir(tmp_path)
    (d / "ckpt-00000004.dcp").mkdir()  # a directory under a real name without its meta.pt (copied in part)
    (d / ".ckpt-00000006.dcp.tmp").mkdir()  # a kill during a sharded save
    (d / ".ckpt-00000006.dcp.tmp" / "__0_0.distcp").write_bytes(b"x")
    assert ckpt.resolve_resume(tmp_path, "auto") == d / "ckpt-00000002.dcp"
    assert "ckpt-00000004.dcp" in capsys.readouterr().err
    assert not (d / ".ckpt-00000006.dcp.tmp").exists()
    assert ckpt.resolve_resume(tmp_path, str(d / "ckpt-00000002.dcp")) == d / "ckpt-00000002.dcp"
    with pytest.raises(UsageError, match="not a complete sharded checkpoint"):
        ckpt.load_checkpoint(d / "ckpt-00000004.dcp")

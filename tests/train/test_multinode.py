"""Two torchrun launchers ("nodes") meeting through a c10d rendezvous give one process's trajectory.

Both launchers run on this host, 1 process each, gloo on CPU: what a 2-node job does except the network
(rendezvous across separate agents, global ranks assigned by c10d, a process group spanning both).
As in test_distributed.py only the data source is replaced, so the comparison isolates the engine:
this file is also the worker (``python test_multinode.py RECIPE OUT overrides...``), whose stream
gives global sample j the same seeded pixels on any world size; rank r takes r's slice of each step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # a hung rendezvous fails the test instead of hanging CI


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tests.pipeline import build_pipeline

    return build_pipeline(tmp_path_factory.mktemp("multinode"), per_class=3)["shards"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _tail(text: str, n: int = 2500) -> str:
    return text[-n:] if text else "(empty)"


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher's own session: it and the workers it started
    for p in procs:
        p.wait()


@pytest.mark.slow
def test_two_nodes_match_one_process(shards, tmp_path):
    args = [
        str(ROOT / "recipes" / "smoke.yaml"),
        f"data.shards={shards}",
        "loss.intra=contrastive",
        "train.steps=4",
        "train.log_every=1",
        "train.ckpt_every=100",
        "optim.global_batch_size=8",
        "projector.hidden_dim=32",
        "projector.n_prototypes=16",
        "loss.queue_size=8",
        "loss.inter_ramp_frac=0",
        "train.deterministic=true",
        "data.num_workers=0",  # the seeded stream in the training process: batches are exactly the slices
        "model.arch=swin_base_patch4_window7_224",  # no batch norm, as in test_distributed.py
        "model.arch_kwargs={embed_dim: 32, depths: [1, 1, 2, 1], num_heads: [1, 2, 4, 8], window_size: 4}",
    ]
    one, two = tmp_path / "one", tmp_path / "two"  # `two` is the run dir on the "shared file system"
    res = subprocess.run([sys.executable, __file__, args[0], str(one), *args[1:]], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]

    port, rdzv_id = _free_port(), f"midol-test-{uuid.uuid4().hex[:12]}"
    launcher = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
        "--rdzv-conf", "join_timeout=120",
        "--local-addr", "127.0.0.1",  # the workers' master address: this host, whatever its name resolves to
        "--max-restarts", "0",
        __file__, args[0], str(two), *args[1:],
    ]
    t0 = time.monotonic()
    procs = [subprocess.Popen(launcher, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(2)]
    outs: list[tuple[int | None, str]] = []
    try:
        for p in procs:
            left = max(1.0, TIMEOUT_S - (time.monotonic() - t0))
            _, err = p.communicate(timeout=left)
            outs.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        _stop(procs)
        errs = [p.stderr.read() if p.stderr and not p.stderr.closed else "" for p in procs]
        pytest.fail(f"2-node rendezvous/run did not finish in {TIMEOUT_S} s\n"
                    + "\n".join(f"--- node {i} stderr ---\n{_tail(e)}" for i, e in enumerate(errs)))
    finally:
        _stop(procs)
    msg = "\n".join(f"--- node {i} (exit {rc}) stderr ---\n{_tail(err)}" for i, (rc, err) in enumerate(outs))
    assert all(rc == 0 for rc, _ in outs), msg

    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 4, msg
    assert l1 == pytest.approx(l2, rel=1e-4, abs=1e-5)
    a, b = _final(one), _final(two)
    assert a["step"] == b["step"] == 4
    for key in ("student", "teacher", "intra"):
        for name, ta in a[key].items():
            torch.testing.assert_close(ta, b[key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    run = json.loads((two / "run.json").read_text())
    assert run["world_size"] == 2  # one process group over both launchers, not two 1-rank runs


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _final(run: Path) -> dict:
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    return torch.load(ckpts[-1], weights_only=True)


# ------------------------------------------------------------------ the worker


class _SeededViews(torch.utils.data.IterableDataset):
    """MultiViewTransform-shaped samples (2 uint8 global views, modality, key) from a seed: global sample j
    of step i is ``i * global_batch + j``, and this rank yields its ``global_batch / world`` slice of each
    step."""

    def __init__(self, n_modalities: int, size: int, seed: int, global_batch: int) -> None:
        self.k, self.size, self.seed, self.gb = n_modalities, size, seed, global_batch

    def stats(self) -> dict[str, int]:
        return {}

    def __iter__(self):
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        micro, step = self.gb // world, 0
        while True:
            for j in range(step * self.gb + rank * micro, step * self.gb + (rank + 1) * micro):
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
                views = [torch.randint(0, 256, (3, self.size, self.size), generator=g, dtype=torch.uint8)
                         for _ in range(2)]
                yield views, [], int(torch.randint(0, self.k, (1,), generator=g)), j
            step += 1


def _main() -> None:
    sys.path.insert(0, str(ROOT))
    import midol_cli.data.mix as mix
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import run_pretrain

    recipe_path, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    r = load_recipe(PretrainRecipe, recipe_path, overrides)

    def fake_mixed_dataset(shard_dir, transform, *, modalities, seed=0, **kw):
        return _SeededViews(len(modalities), transform.global_aug[modalities[0]].size, seed,
                            r.optim.global_batch_size)

    mix.make_mixed_dataset = fake_mixed_dataset
    torch.set_num_threads(1)
    run_pretrain(r, out)


if __name__ == "__main__":
    _main()

"""The shared training engine (train/engine.py) on a toy task: learning, resume, early stopping, the
non-finite guards, damaged-sample totals, and the rank-0 error relay under 2-process torchrun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from midol_cli.data.rows import RowDataset
from midol_cli.distributed import DistInfo
from midol_cli.errors import RunFailed, UsageError
from midol_cli.recipes import FinetuneRecipe
from midol_cli.train import engine
from midol_cli.train.data import make_loader
from midol_cli.train.supervised import fit_supervised

ROOT = Path(__file__).resolve().parents[2]


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 2)).astype(np.float32) + np.where(y[:, None] == 1, 2.0, -2.0).astype(np.float32)
    return x, y


class Toy:
    """Two Gaussian blobs, a linear classifier; ``poison`` rows load as NaN, ``broken`` rows as unreadable."""

    kind, title, best_format, metric = "toy", "toy", "toy-best-1", "accuracy"

    def __init__(self, poison=(), broken=(), val_values=None, shuffle=True, kill_at=None):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(2, 2)
        self.x, self.y = _data()
        self.poison, self.broken, self.val_values = set(poison), set(broken), val_values
        self.calls, self.shuffle, self.kill_at = 0, shuffle, kill_at

    def load(self, row):
        if row in self.broken:
            raise OSError("gone")
        x = self.x[row].copy()
        if row in self.poison:
            x[:] = np.nan
        return torch.from_numpy(x), int(self.y[row])

    def loader(self):
        ds = RowDataset(range(64), self.load, lambda r: f"img{r}.png")
        return make_loader(ds, 16, 0, DistInfo(), shuffle=self.shuffle, seed=0)

    def train_loss(self, net, batch):
        logits = net(batch["x"])
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, {"train_loss": loss.detach() * len(batch["y"])}

    def blank_batch(self):
        return {"x": torch.zeros(1, 2), "y": torch.zeros(1, dtype=torch.long), "bad": []}

    def validate(self, autocast):
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt  # killed mid-run, after the previous epoch's checkpoint
        if self.val_values is not None:
            return self.val_values[self.calls - 1], {}, []
        with torch.no_grad():
            pred = self.model(torch.from_numpy(self.x[64:])).argmax(1).numpy()
        return float((pred == self.y[64:]).mean()), {}, [("val0.png", "corrupt image data")]

    def identity(self):
        return {"task": "toy", "protocol": "toy"}

    def extra(self):
        return {"data_hash": "h"}


def _fit(task, run_dir, epochs=4, resume=None, lr=0.5, early=0, max_epochs=None):
    loader, sampler = task.loader()
    opt = torch.optim.SGD(task.model.parameters(), lr=lr)
    for g in opt.param_groups:
        g["lr_scale"] = 1.0
    cfg = engine.FitConfig(
        run_dir=run_dir,
        epochs=epochs,
        peak_lr=lr,
        min_lr=0.0,
        warmup_frac=0.0,
        clip_grad=None,
        early_stopping=early,
        ckpt_every=1,
        seed=0,
    )
    cfg.precision = "fp32"
    resume_path = engine.check_run_dir(run_dir, resume)
    return fit_supervised(task, task.model, opt, loader, sampler, cfg, DistInfo(), recipe=FinetuneRecipe(),
                          run_info={"stage": "toy"}, resume_path=resume_path)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_learns_and_writes_the_run_dir(tmp_path):
    t = Toy(broken={3})
    st = _fit(t, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert st.best is not None and st.best > 0.9
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # one unreadable training image and one unreadable val image each epoch, totalled over the run
    assert all(r["skipped_unreadable"] == 2 and r["train_n"] == 63 for r in rows)
    assert st.skipped == 8
    for name in ("recipe.yaml", "run.json", "best.pt"):
        assert (tmp_path / "run" / name).is_file()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["format"] == "toy-best-1" and best["epoch"] == st.best_epoch
    # a second fresh run over the same dir is refused; --resume auto continues it
    with pytest.raises(UsageError, match="already holds"):
        engine.check_run_dir(tmp_path / "run", None)


def test_resume_replays_an_uninterrupted_run(tmp_path):
    a = Toy()
    _fit(a, tmp_path / "a", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        _fit(Toy(kill_at=3), tmp_path / "b", epochs=4)
    b2 = Toy()  # a new process: fresh model, state from the checkpoint
    st = _fit(b2, tmp_path / "b", epochs=4, resume="auto")
    assert st.epoch == 4
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b2.model.state_dict()[k], atol=1e-6), k
    assert [r["epoch"] for r in _rows(tmp_path / "b")] == [1, 2, 3, 4]


def test_early_stopping_is_decided_after_validation_and_survives_resume(tmp_path):
    t = Toy(val_values=[0.5, 0.6, 0.55, 0.55, 0.4, 0.9, 0.9, 0.9])
    st = _fit(t, tmp_path / "run", epochs=8, early=2)
    assert (st.epoch, st.best_epoch, st.stopped) == (4, 2, True)
    assert t.calls == 4
    t2 = Toy(val_values=[0.99] * 8)
    st2 = _fit(t2, tmp_path / "run", epochs=8, early=2, resume="auto")
    assert st2.stopped and st2.epoch == 4 and t2.calls == 0  # a stopped run does not train again


def test_a_non_finite_loss_skips_the_step_and_leaves_parameters_finite(tmp_path, capsys):
    t = Toy(poison={5})
    st = _fit(t, tmp_path / "run", epochs=2)
    assert engine.finite_parameters(t.model)
    assert "non-finite loss" in capsys.readouterr().err
    assert st.best > 0.9


def test_many_non_finite_losses_in_a_row_fail_the_run(tmp_path):
    t = Toy(poison=set(range(64)))
    with pytest.raises(RunFailed, match="not finite for 5 steps"):
        _fit(t, tmp_path / "run", epochs=3)


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    t = Toy()
    with pytest.raises(RunFailed, match="parameters are not finite") as e:
        _fit(t, tmp_path / "run", epochs=2, lr=float("inf"))
    assert "no checkpoint was written" in str(e.value)
    assert not (tmp_path / "run" / "best.pt").exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_a_failure_after_a_good_epoch_names_the_checkpoint_that_exists(tmp_path, monkeypatch):
    t = Toy()
    _fit(t, tmp_path / "run", epochs=1)
    with pytest.raises(RunFailed, match="parameters are not finite") as e:
        _fit(Toy(), tmp_path / "run", epochs=3, resume="auto", lr=float("inf"))
    named = str(e.value).split("the last good checkpoint is ", 1)[1].split(")")[0]
    assert Path(named).is_file()


def test_metrics_rows_are_json_with_null_for_nan(tmp_path):
    row = engine.json_row({"a": float("nan"), "b": {"c": float("inf"), "d": 1.5}, "e": [float("nan")]})
    assert json.loads(row) == {"a": None, "b": {"c": None, "d": 1.5}, "e": [None]}
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    engine.truncate_metrics(p, 2)
    assert [json.loads(x)["epoch"] for x in p.read_text().splitlines()] == [1, 2]


def test_better_never_lets_nan_win():
    assert engine.better(0.1, None) and engine.better(0.2, 0.1) and not engine.better(0.1, 0.2)
    assert not engine.better(math.nan, 0.1) and engine.better(0.1, math.nan)


def test_an_empty_batch_in_one_process_is_skipped(tmp_path):
    t = Toy(broken=set(range(16)), shuffle=False)  # the first batch of 16 is wholly unreadable
    st = _fit(t, tmp_path / "run", epochs=1)
    assert _rows(tmp_path / "run")[0]["train_n"] == 48 and st.epoch == 1


RELAY = r"""
import sys, torch.distributed as dist
from midol_cli.errors import MidolError, UsageError
from midol_cli.distributed import init_distributed, on_main, cleanup
di = init_distributed(prefer_cuda=False)
def bad():
    raise UsageError("no labels in 'x.parquet'")
try:
    assert on_main(lambda: 7) == 7
    on_main(bad)
except MidolError as e:
    print(f"rank {di.rank}: {type(e).__name__} {e.exit_code}: {e}", flush=True)
    cleanup()
    sys.exit(e.exit_code)
"""


def test_a_usage_error_on_rank_zero_reaches_every_rank(tmp_path):
    script = tmp_path / "relay.py"
    script.write_text(RELAY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "rank 0: UsageError 2: no labels in 'x.parquet'" in res.stdout, res.stderr[-2000:]
    assert "rank 1: MidolError 2: no labels in 'x.parquet'" in res.stdout, res.stderr[-2000:]

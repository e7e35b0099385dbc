"""Experiment trackers (train/trackers.py): wandb offline and MLflow's local store receive the metrics.jsonl
names and the recipe + provenance, a resumed run continues the same tracked run, a named backend without
its package stops the run, and the TensorBoard-only default is as before. Nothing here reaches the
network or $HOME: wandb runs offline and MLflow writes a SQLite file in the run dir."""

from __future__ import annotations

import json
import re
import struct
import sys

import pytest
import torch

from midol_cli.distributed import DistInfo
from midol_cli.errors import UsageError
from midol_cli.extras import has
from midol_cli.recipes import FinetuneRecipe, LoggingCfg, PretrainRecipe, load_recipe
from midol_cli.train import engine
from midol_cli.train.trackers import EXTRA, check_backends, local_mlflow_uri, make_trackers

# Checked without importing: importing mlflow here, before the fixture moves $HOME, writes its telemetry id
# there.
pytestmark = pytest.mark.skipif(not (has("wandb") and has("mlflow") and has("sqlalchemy")),
                                reason="needs the tracking extra")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for k, v in {
        "HOME": home,
        "WANDB_MODE": "offline",
        "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": home / "wandb_cfg",
        "WANDB_CACHE_DIR": home / "wandb_cache",
        "WANDB_DATA_DIR": home / "wandb_data",
    }.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for k in ("WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)


def wandb_records(run_dir):
    """Every record of the offline runs under ``run_dir/wandb`` (oldest first), read from the ``.wandb``
    files: a 7-byte header, then LevelDB log records (crc, length, type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        b, pos, buf = f.read_bytes(), 7, b""
        assert b[:4] == b":W&B"
        while pos + 7 <= len(b):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _, n, kind = struct.unpack("<IHB", b[pos:pos + 7])
            if kind == 0 and n == 0:
                break
            buf += b[pos + 7:pos + 7 + n]
            pos += 7 + n
            if kind in (1, 4):  # FULL or LAST
                r = pb.Record()
                r.ParseFromString(buf)
                out.append((f, r))
                buf = b""
    return out


def wandb_history(run_dir):
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for _, r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def wandb_runs(run_dir):
    """(run id, config) of each offline run: the config given to init and every later update."""
    runs = {}
    for f, r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            rid, cfg = runs.setdefault(f, (r.run.run_id, {}))
            cfg.update(
                {
                    i.key: json.loads(i.value_json)
                    for i in (r.run.config if kind == "run" else r.config).update
                }
            )
    return list(runs.values())


ROWS = [
    {"step": s, "loss": 1.0 / s, "teacher_entropy/xray": 0.5, "lr": float("nan"), "note": "text"}
    for s in (1, 2)
]
PARAMS = {"recipe": {"name": "tiny", "optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "long": "x" * 10_000,
                     "many": {f"k{i}": i for i in range(250)}},
          "run": {"midol_version": "0.test", "shards": {"hash": "abc"}}}


def _run(cfg, run_dir, rows, params=PARAMS):
    lines = []
    t = make_trackers(cfg, run_dir, params, lines.append)
    for rec in rows:
        t.log(rec)
    t.close()
    return t, lines


def test_wandb_offline_run_holds_the_metrics_and_config_and_resumes_the_same_id(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    t, lines = _run(LoggingCfg(backends=["wandb"], tags=["t1"]), run, ROWS)
    assert t.names == [] and not lines  # closed, no warnings
    rid = json.loads((run / "trackers.json").read_text())["wandb"]
    (first_id, config), = wandb_runs(run)
    assert first_id == rid and config["recipe"]["optim"] == {"lr": 0.001, "betas": [0.9, 0.99]}
    assert config["run"]["midol_version"] == "0.test" and config["recipe"]["name"] == "tiny"
    # metrics.jsonl's names; the step key is the x axis; NaN and text are left out
    assert wandb_history(run) == [{"step": 1, "loss": 1.0, "teacher_entropy/xray": 0.5},
                                  {"step": 2, "loss": 0.5, "teacher_entropy/xray": 0.5}]

    _run(LoggingCfg(backends=["wandb"]), run, [{"step": 3, "loss": 0.25}])  # killed and resumed: same run id
    assert [i for i, _ in wandb_runs(run)] == [rid, rid]
    assert [h["step"] for h in wandb_history(run)] == [1, 2, 3]


def test_mlflow_local_store_holds_metrics_and_flat_params_and_resumes_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    run.mkdir()
    _, lines = _run(LoggingCfg(backends=["mlflow"]), run, ROWS)
    assert not lines
    client = MlflowClient(local_mlflow_uri(run))
    rid = json.loads((run / "trackers.json").read_text())["mlflow"]
    got = client.get_run(rid)
    assert got.info.status == "FINISHED"
    # project: the recipe name
    assert got.info.experiment_id == client.get_experiment_by_name("tiny").experiment_id
    p = got.data.params
    assert p["recipe.optim.lr"] == "0.001" and p["recipe.optim.betas"] == "[0.9, 0.99]"
    assert p["run.midol_version"] == "0.test" and p["run.shards.hash"] == "abc"
    assert len(p) == 256 and p["recipe.many.k249"] == "249"  # > 100 params: sent in batches
    assert p["recipe.long"].endswith("...") and len(p["recipe.long"]) <= 6000  # capped, not refused
    assert set(got.data.metrics) == {"loss", "teacher_entropy/xray"}
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "loss")] == [(1, 1.0), (2, 0.5)]

    # resumed with a changed recipe: the same run, new rows appended, write-once params kept
    changed = {**PARAMS, "recipe": {**PARAMS["recipe"], "optim": {"lr": 0.01}, "epochs": 3}}
    _run(LoggingCfg(backends=["mlflow"]), run, [{"step": 3, "loss": 0.25}], changed)
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == rid
    assert [m.step for m in client.get_metric_history(rid, "loss")] == [1, 2, 3]
    p = client.get_run(rid).data.params
    assert p["recipe.optim.lr"] == "0.001" and p["recipe.epochs"] == "3"
    assert len(client.search_runs([got.info.experiment_id])) == 1


def test_a_named_backend_without_its_package_stops_the_run_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    msg = "the wandb tracker (logging.backends) needs wandb: pip install 'midol[tracking]'"
    with pytest.raises(UsageError, match=re.escape(msg)):
        check_backends(LoggingCfg(backends=["tensorboard", "wandb"]))
    recipe = PretrainRecipe(logging=LoggingCfg(backends=["wandb"]))
    for enabled in (True, False):  # every rank stops, not only rank 0
        with pytest.raises(UsageError, match="needs wandb"):
            engine.RunLogger(tmp_path, 10, 0, enabled, recipe=recipe)
    assert not (tmp_path / "metrics.jsonl").exists()
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # MLflow's local store is SQLite via SQLAlchemy
    with pytest.raises(
        UsageError, match=re.escape(f"mlflow tracker (logging.backends) needs sqlalchemy: {EXTRA}")
    ):
        check_backends(LoggingCfg(backends=["mlflow"]))
    assert check_backends(LoggingCfg(backends=["mlflow"], mlflow_tracking_uri="http://localhost:5000")) == [
        "mlflow"
    ]
    with pytest.raises(ValueError, match="at most once"):
        LoggingCfg(backends=["mlflow", "mlflow"])


def test_tensorboard_only_default_is_unchanged(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert PretrainRecipe().logging.backends == ["tensorboard"] == FinetuneRecipe().logging.backends
    log = engine.RunLogger(tmp_path, 2, 0, True, recipe=PretrainRecipe())
    for rec in ROWS:
        log.log(rec, "")
    log.close()
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == ["loss", "teacher_entropy/xray"]
    assert [e.step for e in ea.Scalars("loss")] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]

    # not installed: a note, metrics.jsonl stays the record
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    lines = []
    reporter = engine.Reporter()
    reporter.line = lines.append
    (tmp_path / "b").mkdir()
    log = engine.RunLogger(tmp_path / "b", 2, 0, True, reporter, recipe=PretrainRecipe())
    log.log(ROWS[0], "")
    log.close()
    assert lines[0].startswith("note: TensorBoard logging disabled") and EXTRA in lines[0]
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("\n") == 1
    # named: an error
    with pytest.raises(UsageError, match=r"tensorboard tracker \(logging.backends\) needs"):
        check_backends(LoggingCfg(backends=["tensorboard"]))


def test_fine_tuning_logs_epochs_to_the_trackers(tmp_path):
    from tests.train.test_engine import Toy

    task = Toy()
    loader, sampler = task.loader()
    opt = torch.optim.SGD(task.model.parameters(), lr=0.5)
    cfg = engine.FitConfig(
        run_dir=tmp_path,
        epochs=2,
        peak_lr=0.5,
        min_lr=0.0,
        warmup_frac=0.0,
        clip_grad=None,
        early_stopping=0,
        ckpt_every=1,
        seed=0,
    )
    recipe = FinetuneRecipe(logging=LoggingCfg(backends=["wandb"]))
    from midol_cli.train.supervised import fit_supervised

    cfg.precision = "fp32"
    fit_supervised(
        task, task.model, opt, loader, sampler, cfg, DistInfo(), recipe=recipe, run_info={"stage": "toy"}
    )
    hist = wandb_history(tmp_path)
    assert [h["epoch"] for h in hist] == [1, 2] and {"train_loss", "val_accuracy", "lr"} <= set(hist[0])
    (_, config), = wandb_runs(tmp_path)
    assert config["recipe"]["name"] == "finetune" and config["run"]["stage"] == "toy"


def test_a_tiny_pretrain_logs_to_all_three(tmp_path):
    from mlflow.tracking import MlflowClient

    from midol_cli.train.pretrain import run_pretrain
    from tests.pipeline import build_pipeline

    shards = build_pipeline(tmp_path / "data", per_class=1, min_shards=1)["shards"]
    recipe = load_recipe(PretrainRecipe, "recipes/smoke.yaml", [
        f"data.shards={shards}", "train.steps=4", "train.log_every=1", "train.ckpt_every=4",
        "optim.global_batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8", "projector.hidden_dim=16",
        "projector.n_prototypes=8", "loss.queue_size=8", "logging.backends=[tensorboard,wandb,mlflow]"])
    run = tmp_path / "run"
    run_pretrain(recipe, run, max_steps=2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    finite = [
        {k for k, v in r.items() if isinstance(v, int | float) and k != "step" and v == v} for r in rows
    ]
    names = set().union(*finite)  # e.g. a modality's entropy is NaN (not logged) in a step without it
    assert next((run / "tensorboard").glob("events.*"))
    hist = wandb_history(run)
    assert [h["step"] for h in hist] == [1, 2] and [set(h) for h in hist] == [f | {"step"} for f in finite]
    ids = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(local_mlflow_uri(run))
    assert set(client.get_run(ids["mlflow"]).data.metrics) == names
    params = client.get_run(ids["mlflow"]).data.params
    assert params["recipe.name"] == "smoke" and params["run.midol_version"] and params["run.recipe_hash"]

    run_pretrain(recipe, run, resume="auto", max_steps=3)  # a stopped run resumed: still one tracked run
    assert [i for i, _ in wandb_runs(run)] == [ids["wandb"]] * 2
    assert [h["step"] for h in wandb_history(run)] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "loss")] == [1, 2, 3]
    assert len(client.search_runs([client.get_run(ids["mlflow"]).info.experiment_id])) == 1

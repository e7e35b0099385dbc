"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow (rank 0 only).

The recipe picks them (``logging.backends``, default ``[tensorboard]``). Each receives the same scalar
names as ``metrics.jsonl`` at the row's step (or epoch), and the resolved recipe plus the run's
provenance (``run.json``) as parameters. Both third-party trackers stay on this machine by default:
wandb writes an offline run under ``RUN_DIR/wandb`` (``wandb sync`` uploads it later) and MLflow a
SQLite store ``RUN_DIR/mlflow.db``. Their run ids are kept in ``RUN_DIR/trackers.json`` so that a
killed and resumed run stays one tracked run. Only numbers are logged, never images.

A backend the recipe names whose package is missing stops the run before training
(``check_backends`` runs on every rank); TensorBoard as the unasked default only leaves a note. A
tracker that fails to start or to log is dropped with a warning: ``metrics.jsonl`` is the record.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from midol_cli.artifacts import write_json_atomic
from midol_cli.errors import UsageError
from midol_cli.extras import has, install_hint, missing_message
from midol_cli.recipes import LoggingCfg, recipe_dict

EXTRA = install_hint("tracking")
IDS_NAME = "trackers.json"
MLFLOW_DB = "mlflow.db"
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores


class Tracker(Protocol):
    name: str

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def _needs(backend: str, cfg: LoggingCfg) -> tuple[str, ...]:
    if backend == "mlflow":
        uri = cfg.mlflow_tracking_uri
        db = uri is None or uri.startswith(_DB_SCHEMES)
        return ("mlflow", "sqlalchemy", "alembic") if db else ("mlflow",)
    return (backend,)


def check_backends(cfg: LoggingCfg | None) -> list[str]:
    """The backends that can run. A backend the recipe names whose package is missing is a
    ``UsageError``; call this on every rank so that all of them stop before training."""
    cfg = cfg or LoggingCfg()
    use = []
    for b in cfg.backends:
        miss = next((m for m in _needs(b, cfg) if not has(m)), None)
        if miss is None:
            use.append(b)
        elif b != "tensorboard" or "backends" in cfg.model_fields_set:
            raise UsageError(missing_message(f"the {b} tracker (logging.backends)", miss, "tracking"))
    return use


def tracker_params(recipe: Any, run_dir: Path) -> dict[str, Any]:
    """The resolved recipe and the run's provenance (``run.json`` as written at the start)."""
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run = {}
    return {"recipe": recipe_dict(recipe) if recipe is not None else {}, "run": run}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; lists and empty dicts stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _status() -> str:
    """The run's end as MLflow names it, from the exception on its way out (``close`` runs in ``finally``)."""
    exc = sys.exc_info()[0]
    return "FINISHED" if exc is None else "KILLED" if issubclass(exc, KeyboardInterrupt) else "FAILED"


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # TensorBoard keeps scalars; the recipe is recipe.yaml beside it

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)  # "teacher_entropy/xray" groups per expert

    def close(self) -> None:
        self.tb.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: LoggingCfg, run_dir: Path, project: str, ids: dict[str, str], key: str) -> None:
        import wandb

        # console="off": wandb would otherwise wrap stdout/stderr (the progress bar writes there).
        settings = wandb.Settings(mode=cfg.wandb_mode, silent=True, console="off")
        self.run = wandb.init(project=project, dir=str(run_dir), id=ids.get("wandb") or secrets.token_hex(4),
                              resume="allow", name=run_dir.name, tags=list(cfg.tags) or None,
                              settings=settings, reinit="create_new")
        ids["wandb"] = self.run.id
        # Our own step as the x axis: a resumed run re-logs steps wandb's counter has passed.
        self.key = key
        self.run.define_metric(key)
        self.run.define_metric("*", step_metric=key)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({**metrics, self.key: step})

    def close(self) -> None:
        self.run.finish(exit_code=0 if _status() == "FINISHED" else 1)


def local_mlflow_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: LoggingCfg, run_dir: Path, project: str, ids: dict[str, str]) -> None:
        import logging

        if cfg.mlflow_tracking_uri is None:  # a local store stays local: no usage telemetry either
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        self.max_val = int(getattr(validation, "MAX_PARAM_VAL_LENGTH", 500))
        self.max_params = int(getattr(validation, "MAX_PARAMS_TAGS_PER_BATCH", 100))
        self.max_metrics = int(getattr(validation, "MAX_METRICS_PER_BATCH", 1000))
        self.uri = cfg.mlflow_tracking_uri or local_mlflow_uri(run_dir)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(project)
        if exp is not None:
            exp_id = exp.experiment_id
        else:  # a store of our own keeps its (unused) artifact root in the run dir, not in the cwd
            where = (run_dir / "mlartifacts").resolve().as_uri() if cfg.mlflow_tracking_uri is None else None
            exp_id = self.client.create_experiment(project, artifact_location=where)
        run = None
        if ids.get("mlflow"):
            try:
                run = self.client.get_run(ids["mlflow"])
            except Exception:  # another store, or the run was deleted: start a new one
                run = None
        if run is None:
            run = self.client.create_run(exp_id, run_name=run_dir.name, tags={t: "true" for t in cfg.tags})
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.logged = set(run.data.params)  # MLflow params are write-once: a resumed run adds only new keys
        ids["mlflow"] = self.run_id

    def _key(self, k: str) -> str:
        return re.sub(r"[^\w\-. /:]", "_", k)[:250]

    def _value(self, v: Any) -> str:
        s = v if isinstance(v, str) else json.dumps(v)
        return s if len(s) <= self.max_val else s[: self.max_val - 3] + "..."

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {self._key(k): self._value(v) for k, v in flatten(params).items()}
        todo = [Param(k, v) for k, v in flat.items() if k not in self.logged]
        for i in range(0, len(todo), self.max_params):
            self.client.log_batch(self.run_id, params=todo[i : i + self.max_params])
        self.logged.update(flat)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(self._key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(rows), self.max_metrics):
            self.client.log_batch(self.run_id, metrics=rows[i : i + self.max_metrics])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status=_status())


class Trackers:
    """The open trackers of a run: ``log(row)`` sends every finite number but the step key."""

    def __init__(self, trackers: list[Tracker], key: str, say: Callable[[str], None]) -> None:
        self.trackers, self.key, self.say = trackers, key, say

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    def log(self, rec: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in rec.items()
                   if isinstance(v, int | float) and k != self.key and math.isfinite(v)}
        for t in list(self.trackers):
            try:
                t.log_metrics(metrics, int(rec[self.key]))
            except Exception as e:
                self._drop(t, e)

    def _drop(self, t: Tracker, e: Exception) -> None:
        self.trackers.remove(t)
        self.say(f"warning: {t.name} logging stopped ({type(e).__name__}: {str(e)[:120]}); "
                 "metrics.jsonl has every row")

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:
                self.say(f"warning: {t.name} did not close cleanly ({type(e).__name__}: {str(e)[:120]})")
        self.trackers = []


def make_trackers(cfg: LoggingCfg | None, run_dir: Path, params: dict[str, Any], say: Callable[[str], None],
                  key: str = "step") -> Trackers:
    """Open the recipe's trackers in ``run_dir`` (rank 0) and log ``params``; resumes the tracked run
    whose ids ``trackers.json`` holds."""
    cfg = cfg or LoggingCfg()
    use = check_backends(cfg)
    if "tensorboard" in cfg.backends and "tensorboard" not in use:
        say(f"note: TensorBoard logging disabled (tensorboard is not installed: {EXTRA}); "
            "metrics.jsonl has every row")
    try:
        ids = json.loads((run_dir / IDS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        ids = {}
    project = cfg.project or str(params.get("recipe", {}).get("name") or "midol")
    out: list[Tracker] = []
    for b in use:
        t: Tracker | None = None
        try:
            t = (TensorBoardTracker(run_dir) if b == "tensorboard" else
                 WandbTracker(cfg, run_dir, project, ids, key) if b == "wandb" else
                 MlflowTracker(cfg, run_dir, project, ids))
            t.log_params(params)
        except Exception as e:
            if t is not None:
                Trackers([t], key, say).close()
            level = "note" if b == "tensorboard" else "warning"
            say(f"{level}: {b} logging disabled ({type(e).__name__}: {str(e)[:120]}); "
                "metrics.jsonl has every row")
            continue
        out.append(t)
    if ids:
        write_json_atomic(run_dir / IDS_NAME, ids)
    return Trackers(out, key, say)

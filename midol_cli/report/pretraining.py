"""What a midol model's pre-training did, for the report of the results it produced.

A summary's ``model.weights`` names what ``probe`` loaded. When that is a midol pre-training run dir
(or its ``export/encoder.safetensors``) holding ``run.json`` and ``metrics.jsonl``, the report adds a
"Pre-training" section: steps done of the total, wall time and each loss term's final value (the last
logged step), and, in the HTML report, the loss curves (total and each term against step). Random-init
baselines (``random:RUN``) were never trained, so they get none. Nothing is recomputed: the numbers are
the ones the run logged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.extras import has, install_hint

RUN_JSON = "run.json"
METRICS_JSONL = "metrics.jsonl"
TOTAL = "loss"  # the total loss; its terms are the other ``loss_*`` keys of a metrics record


@dataclass
class Pretraining:
    """One pre-training run: ``curves[term] = (steps, values)``, ``final[term]`` the last logged value
    (None where the run logged NaN), ``skipped`` lines of ``metrics.jsonl`` that were not JSON."""

    model: str
    run_dir: Path
    steps: int | None
    total_steps: int | None
    wall_seconds: float | None
    final: dict[str, float | None]
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    skipped: int = 0

    @property
    def terms(self) -> list[str]:
        """The total first, then its terms in name order."""
        return sorted(self.final, key=lambda k: (k != TOTAL, k))


def is_random_init(model: dict[str, Any], bases: Iterable[Path] = ()) -> bool:
    """Whether a summary's model block is a random-init baseline: ``--weights random:...``, or the export
    of a run dir that never trained (``midol study``'s ``random`` variant: run.json's stage ``init``)."""
    weights, digest = str(model.get("weights", "")), str(model.get("weights_hash"))
    if weights.startswith("random:") or digest == "random-seed0":
        return True
    run = run_dir_of(model, bases, need_metrics=False)
    if run is None:
        return False
    try:
        rec = json.loads((run / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("stage") == "init" and not rec.get("steps_done")


def run_dir_of(model: dict[str, Any], bases: Iterable[Path] = (), need_metrics: bool = True) -> Path | None:
    """The pre-training run dir that a summary's model block was loaded from, or None.

    ``weights`` may be the run dir, its ``export`` folder, a file in it, or ``midol=FILE``; a relative
    path is tried as given (the folder ``probe`` ran in) and then under each of ``bases``. The dir
    holds ``run.json`` and (unless ``need_metrics`` is False) ``metrics.jsonl``."""
    weights = str(model.get("weights") or "")
    if not weights or weights.startswith(("random:", "timm:")) or model.get("weights_hash") == "random-seed0":
        return None
    if weights.startswith("midol="):
        weights = weights[len("midol="):]
    elif "=" in weights and not Path(weights).exists():
        return None  # NAME=FILE: a registry model's released weights, not a midol run
    p = Path(weights)
    candidates = [p] if p.is_absolute() else [p, *(Path(b) / p for b in bases)]
    for c in candidates:
        run = c.parent if c.name == "export" else c
        if c.is_file() and c.parent.name == "export":
            run = c.parent.parent
        if (run / RUN_JSON).is_file() and (not need_metrics or (run / METRICS_JSONL).is_file()):
            return run
    return None


def _number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_pretraining(model_id: str, run_dir: Path) -> Pretraining | None:
    """The run's steps, wall time, final losses and loss curves; None when ``metrics.jsonl`` logged no loss
    (a run that stopped before its first record) or the files cannot be read."""
    try:
        run = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        lines = (run_dir / METRICS_JSONL).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return None
    if isinstance(run, dict) and run.get("stage") in ("finetune", "init"):
        return None  # a fine-tuning run (epochs, its own report) or an untrained initial export
    by_step: dict[int, dict[str, Any]] = {}
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (ValueError, TypeError, KeyError):
            skipped += 1  # a line cut short by a killed run, say
            continue
        if isinstance(rec, dict) and TOTAL in rec:
            by_step[step] = rec  # a resumed run re-logs its steps: the later record wins
    if not by_step:
        return None
    steps = sorted(by_step)
    terms = sorted({k for r in by_step.values() for k in r if k == TOTAL or k.startswith(TOTAL + "_")})
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for k in terms:
        pts = [(s, v) for s in steps if (v := _number(by_step[s].get(k))) is not None]
        curves[k] = ([s for s, _ in pts], [v for _, v in pts])
    last = by_step[steps[-1]]
    done = run.get("steps_done", steps[-1]) if isinstance(run, dict) else steps[-1]
    return Pretraining(
        model=model_id, run_dir=run_dir, steps=int(done) if done is not None else None,
        total_steps=int(last["total_steps"]) if _number(last.get("total_steps")) is not None else None,
        wall_seconds=_number(run.get("wall_seconds")) if isinstance(run, dict) else None,
        final={k: _number(last.get(k)) for k in terms}, curves=curves, skipped=skipped)


def collect_pretraining(summaries: Iterable[tuple[Path, dict[str, Any]]]) -> dict[str, Pretraining]:
    """model id -> its pre-training run, for every model whose weights came from a midol run dir."""
    out: dict[str, Pretraining] = {}
    for path, s in summaries:
        model = s.get("model") or {}
        mid = str(model.get("id"))
        if mid in out:
            continue
        run = run_dir_of(model, Path(path).resolve().parents)
        info = read_pretraining(mid, run) if run is not None else None
        if info is not None:
            out[mid] = info
    return out


def plots_available() -> bool:
    """Whether the loss curves can be drawn (matplotlib, the ``plots`` extra)."""
    return has("matplotlib")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _loss(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def table_rows(runs: dict[str, Pretraining]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the pre-training table: model, run dir, steps, wall time, final loss per term."""
    terms = sorted({k for p in runs.values() for k in p.final}, key=lambda k: (k != TOTAL, k))
    header = ["model", "run", "steps", "wall time", *(f"final {k}" for k in terms)]
    rows = []
    for mid, p in sorted(runs.items()):
        steps = "n/a" if p.steps is None else str(p.steps)
        if p.total_steps is not None:
            steps += f"/{p.total_steps}"
        rows.append([mid, str(p.run_dir), steps, _duration(p.wall_seconds),
                     *(_loss(p.final[k]) if k in p.final else "–" for k in terms)])
    return header, rows


def notes(runs: dict[str, Pretraining], *, html: bool) -> list[str]:
    """What the table's numbers are and where the loss curves are (or why they are missing)."""
    out = ["Final losses: the values logged at each run's last step (metrics.jsonl); steps: done/total."]
    if not plots_available():
        out.append(f"Loss curves: the plot needs the plots extra (matplotlib): {install_hint('plots')}.")
    elif not html:
        out.append("Loss curves (total and each term against step): in the HTML report "
                   "(--format html --out FILE).")
    skipped = [f"{m} ({p.skipped})" for m, p in sorted(runs.items()) if p.skipped]
    if skipped:
        out.append(f"Unreadable metrics.jsonl lines left out: {', '.join(skipped)}.")
    return out


def render_markdown(runs: dict[str, Pretraining]) -> list[str]:
    """The Markdown "Pre-training" section (lines; empty without runs)."""
    if not runs:
        return []
    header, rows = table_rows(runs)
    lines = ["", "## Pre-training", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, "", *notes(runs, html=False)]


def to_json(runs: dict[str, Pretraining]) -> dict[str, Any]:
    """model id -> ``{"run_dir", "steps", "total_steps", "wall_seconds", "final"}`` (the JSON report's)."""
    return {m: {"run_dir": str(p.run_dir), "steps": p.steps, "total_steps": p.total_steps,
                "wall_seconds": p.wall_seconds, "final": p.final} for m, p in sorted(runs.items())}

"""``midol trend``'s one home: read each study's study.json, line them up (``report/trend.py``), render,
write the tables, the figure and the resolved settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.paths import writable_out
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import TrendSettings, settings_dict, write_settings


def load_study(path: Path) -> dict[str, Any]:
    """The record of a study folder (or of its study.json); a missing or unreadable one is a one-line
    refusal."""
    f = path / "study.json" if path.is_dir() else path
    if not f.is_file():
        raise UsageError(f"'{path}' holds no study.json; give a folder written by `midol study`")
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read '{f}': {type(e).__name__}") from None
    if not isinstance(rec, dict) or not {"tasks", "variants", "seeds", "baseline"} <= set(rec):
        raise UsageError(f"'{f}' is not a study record (no tasks, variants, seeds or baseline)")
    return rec


def study_labels(s: TrendSettings) -> list[str]:
    """``s.labels``, one per study; default each study folder's name."""
    if s.labels is None:  # the folders' names; their parents' where those repeat (demo/study, big/study)
        dirs = [(p if p.is_dir() else p.parent).resolve() for p in s.studies]
        names = [d.name for d in dirs]
        return names if len(set(names)) == len(names) else [d.parent.name for d in dirs]
    if len(s.labels) != len(s.studies):
        raise UsageError(f"--labels names {len(s.labels)} studies but {len(s.studies)} are given")
    return list(s.labels)


def run(s: TrendSettings, reporter: Reporter) -> str:
    """The trend's text (Markdown or JSON); written to ``s.out`` with its settings beside it when set, and
    the figure to ``s.plot``."""
    from midol_cli.report.trend import plot_trend, render_markdown, trend

    if s.plot is not None and s.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot '{s.plot}' must be a .png file name")
    writable_out(s.out, "--out", folder=False)
    writable_out(s.plot, "--plot", folder=False)
    studies = list(zip(study_labels(s), map(load_study, s.studies), strict=True))
    result = trend(studies, baseline=s.baseline, variants=s.variants, seeds=s.seeds)
    text = (render_markdown(result) if s.format == "md"
            else json.dumps(result, indent=2, sort_keys=True) + "\n")
    if s.out is not None:
        from midol_cli.artifacts import write_text_atomic

        write_text_atomic(s.out, text)
        write_settings(settings_dict(s), s.out, "trend", folder=False)
        reporter.line(f"wrote {s.out}")
    if s.plot is not None and plot_trend(result, s.plot) is not None:
        reporter.line(f"wrote {s.plot}")
    return text

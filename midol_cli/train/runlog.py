"""What a run writes as it goes: ``metrics.jsonl`` rows (NaN as null), the trackers, progress, and the
one-line warnings about unreadable images. The engine (``train.engine.fit``) is the only writer."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from midol_cli.artifacts import write_text_atomic
from midol_cli.progress import Reporter
from midol_cli.train.trackers import check_backends, make_trackers, tracker_params

METRICS_NAME = "metrics.jsonl"


class RunLogger:
    """``metrics.jsonl`` (NaN as null) and the recipe's trackers (``train.trackers``: TensorBoard by
    default) on rank 0, progress to a ``Reporter``: one bar update per row on a terminal, a plain
    ``step N/T ...`` line otherwise. ``metrics.jsonl`` is the record; trackers are optional extras.
    ``recipe`` (its ``logging`` and, with ``run.json``, the parameters trackers receive) may be None."""

    def __init__(
        self,
        run_dir: Path,
        total: int,
        start: int,
        enabled: bool,
        reporter: Reporter | None = None,
        label: str = "pretrain",
        key: str = "step",
        recipe: Any = None,
    ) -> None:
        self.enabled, self.key, self.total = enabled, key, total
        self.reporter = reporter or Reporter()
        self.fh = self.trackers = None
        cfg = getattr(recipe, "logging", None)
        check_backends(cfg)  # on every rank: a missing tracker package stops them all before training
        if not enabled:
            return
        self.fh = open(run_dir / METRICS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self.trackers = make_trackers(cfg, run_dir, tracker_params(recipe, run_dir), self.reporter.line, key)
        self.reporter.start(label, total, start)

    def log(self, rec: dict[str, Any], info: str, line: str | None = None) -> None:
        """One row; ``line`` (a row's own summary) is printed as it is, else ``info`` moves the bar."""
        if not self.enabled:
            return
        self.fh.write(json_row(rec) + "\n")
        self.fh.flush()
        self.trackers.log(rec)
        if line is not None:
            self.reporter.line(line)
        elif self.reporter.bar:
            self.reporter.advance(int(rec[self.key]), info)
        else:
            self.reporter.line(f"{self.key} {rec[self.key]}/{self.total}  {info}")

    def advance(self, step: int, info: str) -> None:
        if self.enabled:
            self.reporter.advance(step, info)

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self.reporter.stop()
        self.trackers.close()
        self.fh.close()


def report_bad(bad: Iterable[tuple[str, str]], where: str, say: Callable[[str], None]) -> int:
    """One warning naming up to three unreadable files (path and short reason, never pixels); the count."""
    uniq = sorted(set(bad))
    if uniq:
        more = f" and {len(uniq) - 3} more" if len(uniq) > 3 else ""
        shown = ", ".join(f"{p} ({r})" for p, r in uniq[:3]) + more
        say(f"warning: {len(uniq)} unreadable image(s) skipped in {where}: {shown}")
    return len(uniq)


def json_row(rec: dict[str, Any]) -> str:
    """One JSON line; NaN and infinities become ``null`` (they are not JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(rec), allow_nan=False)


def truncate_metrics(path: Path, last: int, key: str = "epoch") -> None:
    """On resume, drop the rows after the point resumed from (``key`` <= ``last`` stays; the rest are
    redone) and lines cut by a kill."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)[key]) <= last:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    write_text_atomic(path, "".join(k + "\n" for k in keep))

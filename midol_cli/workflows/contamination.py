"""``midol contamination``'s one home: test images that also appear in the pre-training data
(``eval.contamination`` does the matching)."""

from __future__ import annotations

from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import ContaminationSettings


def run(s: ContaminationSettings, reporter: Reporter) -> Any:
    """Check every ``s.against`` manifest against ``s.sources``; the ``ContaminationResult`` (its pairs
    also in ``s.out`` as CSV when given)."""
    from midol_cli.eval import contamination as con
    from midol_cli.paths import writable_out

    for p in s.against:
        if not p.exists():
            raise UsageError(f"--against '{p}' does not exist; give a manifest written by `midol ingest`")
    writable_out(s.out, "--out", folder=False)
    res = con.check_contamination(s.sources, s.against, radius=s.radius, splits=s.splits, log=reporter.line,
                                  source_splits=s.source_splits)
    if s.out is not None:
        con.write_pairs_csv(res, s.out)
        reporter.line(f"pairs -> {s.out}")
    return res

"""What a probe checks about its data and records beside its results (issue 25.4): raw files changed
since ingest (refused unless ``allow_changed``), and the rows embedding left out (counted in
summary.json's ``n.dropped`` and printed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter


def check_changed(src: str | Path, allow_changed: bool, reporter: Reporter) -> list[str]:
    """The files of manifest ``src`` whose size or modification time differs from the manifest: a
    one-line refusal naming the count and an example, or (``allow_changed``) a warning line."""
    from midol_cli.eval.embed import changed_files

    if not Path(src).is_file():
        return []
    changed = changed_files(src)
    if not changed:
        return []
    what = f"{len(changed)} raw file(s) changed since ingest (size or modification time), e.g. '{changed[0]}'"
    if not allow_changed:
        raise UsageError(f"{what}: they would be scored under their recorded labels; re-run `midol ingest` "
                         "(--rehash re-reads every file), or pass --allow-changed")
    reporter.line(f"  warning: {what}; probed under their recorded labels (--allow-changed)")
    return changed


def dropped_rows(emb: Any, modality: str, model_id: str, task: str, reporter: Reporter) -> dict[str, Any]:
    """``n.dropped`` of the summary: the rows of ``modality`` embedding left out, with their reasons and
    splits; a warning line names them."""
    from midol_cli.eval.embed import dropped_line, dropped_summary

    dropped = dropped_summary(list(emb.attrs.get("dropped_rows") or []), modality)
    if dropped["count"]:
        splits = ", ".join(f"{n} {k}" for k, n in dropped["by_split"].items())
        reporter.line(f"  warning: {model_id} on {task}: {dropped_line(dropped)}; by split: {splits}")
    return dropped


def record_dropped(summary: dict[str, Any], dropped: dict[str, Any], out_dir: Path) -> None:
    """Add ``n.dropped`` to ``summary`` and its summary.json (rewritten atomically)."""
    from midol_cli.artifacts import SUMMARY_NAME, write_json_atomic

    summary.setdefault("n", {})["dropped"] = dropped
    path = Path(out_dir) / SUMMARY_NAME
    if path.is_file():
        write_json_atomic(path, {k: v for k, v in summary.items() if k != "out_dir"})

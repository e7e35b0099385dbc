"""Small helpers shared by the command modules (console, path checks)."""

from __future__ import annotations

import sys

from midol_cli.errors import UsageError
from midol_cli.paths import existing_dir, existing_file, writable_out  # noqa: F401  (the commands import them here)


def console(stderr: bool = True):
    """A rich console; status/progress go to stderr so stdout stays clean for tables."""
    from rich.console import Console

    return Console(stderr=stderr)


def show_progress() -> bool:
    """Rich progress bars only on rank 0 and only on a terminal; plain lines otherwise."""
    from midol_cli.distributed import is_rank0

    return is_rank0() and sys.stderr.isatty()


def split_recipe_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """``[RECIPE.yaml] [key=value ...]`` -> (recipe path or None, overrides): the one parser of a
    command's recipe arguments (finetune, study). A later token without ``=`` is a one-line error."""
    args = list(args or [])
    recipe, rest = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise UsageError(f"'{bad[0]}' is not KEY=VALUE: give the recipe first, then key.sub=value overrides")
    return recipe, rest


def progress_reporter():
    """A ``train.engine.Reporter``: a rich progress bar on a terminal (rank 0), plain lines otherwise."""
    from midol_cli.progress import Reporter

    if not show_progress():
        return Reporter()

    class RichReporter(Reporter):
        bar = True

        def __init__(self) -> None:
            super().__init__()
            self.progress = self.task = None

        def start(self, label: str, total: int, completed: int) -> None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console())
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, completed=completed, info="")

        def advance(self, completed: int, info: str) -> None:
            if self.progress is not None:
                self.progress.update(self.task, completed=completed, info=info)

        def line(self, msg: str) -> None:
            if self.progress is not None:
                self.progress.console.print(msg, markup=False, highlight=False)
            else:
                super().line(msg)

        def stop(self) -> None:
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichReporter()


def parse_subgroups(value: str | None) -> tuple[str, ...] | None:
    """``--subgroups``: None (the task's own), ``none`` (no subgroups) or comma-separated columns."""
    if value is None:
        return None
    cols = tuple(c.strip() for c in value.split(",") if c.strip())
    if cols in ((), ("none",)):
        return ()
    return cols


def subgroup_lines(block: dict, metric: str) -> list[str]:
    """One console line per subgroup column (worst-group gap) and one for the group-level result."""
    out = []
    for col, rec in block.get("subgroups", {}).get("columns", {}).items():
        g = rec["worst_gap"]
        small = sum(1 for x in rec["groups"] if x["too_small"])
        tail = f" ({small} too small to report)" if small else ""
        if g["gap"] is None:
            out.append(f"  subgroups by {col}: fewer than two reportable subgroups{tail}")
        else:
            out.append(f"  subgroups by {col}: worst-group gap {g['metric']} {_fmt(g['gap'])} "
                       f"[{_fmt(g['ci_low'])}, {_fmt(g['ci_high'])}] ({g['worst']} vs {g['best']}){tail}")
    pl = block.get("patient_level")
    if pl and pl["metrics"][metric]["value"] is not None:
        v = pl["metrics"][metric]
        out.append(f"  per {pl['unit']} ({pl['aggregation']} over images, {pl['n_groups']} {pl['unit']}s): "
                   f"{metric} {_fmt(v['value'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"

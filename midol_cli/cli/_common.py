"""Small helpers shared by the command modules (console, path checks)."""

from __future__ import annotations

import sys

# The commands import these path checks from here.
from midol_cli.paths import existing_dir, existing_file, writable_out  # noqa: F401
from midol_cli.progress import Reporter


def console(stderr: bool = True):
    """A rich console; status/progress go to stderr so stdout stays clean for tables."""
    from rich.console import Console

    return Console(stderr=stderr)


def show_progress() -> bool:
    """Rich progress bars only on rank 0 and only on a terminal; plain lines otherwise."""
    from midol_cli.distributed import is_rank0

    return is_rank0() and sys.stderr.isatty()


def progress_reporter(transient: bool = False):
    """The reporter every command hands its stage (``midol_cli.progress.Reporter``): a rich progress bar
    on a terminal, plain lines otherwise, nothing on ranks other than 0. ``transient``: the bar goes
    when its work ends (a step of a command whose result is printed after it)."""
    from midol_cli.distributed import is_rank0
    from midol_cli.progress import Silent

    if not is_rank0():
        return Silent()
    return RichReporter(transient) if sys.stderr.isatty() else Reporter()


class RichReporter(Reporter):
    """A rich progress bar per ``start``..``stop``; lines print above the bar."""

    bar = True

    def __init__(self, transient: bool = False, con=None) -> None:  # noqa: ANN001
        super().__init__()
        self.transient, self.console = transient, con
        self.progress = self.task = None

    def start(self, label: str, total: int | None, completed: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.stop()
        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 console=self.console or console(), transient=self.transient)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, completed=completed, info="")

    def advance(self, completed: int, info: str = "") -> None:
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

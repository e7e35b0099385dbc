"""`midol tasks`: the built-in downstream tasks, and the folder layout each expects."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "tasks",
        help=(
            "List the built-in downstream tasks, or show the folder layout one expects.\n\n"
            "Examples:\n\n"
            "  midol tasks\n\n"
            "  midol tasks show ham10000"
        ),
    )
    def tasks(
        action: str = typer.Argument(None, help="'show' to print one task's expected layout."),
        name: str = typer.Argument(None, help="Task name (with 'show')."),
        fmt: str = typer.Option("table", "--format", help="table, or md (the docs/tasks.md page)."),
    ) -> None:
        from rich.console import Console
        from rich.table import Table

        from midol_cli.errors import UsageError
        from midol_cli.tasks import TASKS, get_task, layout_description, resolve_task

        out = Console()
        if fmt not in ("table", "md"):
            raise UsageError(f"--format '{fmt}' is not one of table, md")
        if action is None and fmt == "md":
            import sys

            from midol_cli.tasks.doc import tasks_markdown

            sys.stdout.write(tasks_markdown())
            return
        if action is None:
            # The names are what a user types: never wrapped or cut. The split rule is long prose;
            # `midol tasks show NAME` gives it with the layout.
            t = Table(title="midol tasks", caption="`midol tasks show NAME`: split rule, layout and options")
            t.add_column("task", no_wrap=True, min_width=max(len(s.name) for s in TASKS.values()))
            for col in ("modality", "classes", "label type", "metric"):
                t.add_column(col, no_wrap=True)
            for s in TASKS.values():
                t.add_row(s.name, s.modality, str(len(s.classes)), s.label_type, s.metric)
            out.print(t)
            return
        if action != "show" or not name:
            raise UsageError("use `midol tasks` or `midol tasks show NAME`")
        s = get_task(name) if name == "auto" else resolve_task(name)  # a name or a task file
        out.print(f"[bold]{s.name}[/]  ({s.modality}, {s.label_type}, {len(s.classes)} classes; metric "
                  f"{s.metric})")
        out.print(f"classes: {', '.join(s.classes)}")
        out.print(f"source:  {s.source}" + (f"  licence: {s.license}" if s.license else ""))
        out.print(f"split:   {s.split}")
        if s.case:  # issue 27: case-level
            out.print(f"case:    {s.case} (the label belongs to each {s.case}: probe --protocol abmil)")
        if s.notes:
            out.print(f"notes:   {s.notes}")
        if s.subgroups or s.group_unit:
            per = f"; also per {s.group_unit} ({s.aggregation} of its images)" if s.group_unit else ""
            out.print(f"reports: subgroups by {', '.join(s.subgroups) or 'none'}{per}")
        if s.layout:  # a task file without labels: takes a labelled manifest as --data
            out.print(f"layout ({s.layout}), pass its root folder as --data:")
            out.print(layout_description(s), markup=False, highlight=False)
        if s.user_options:
            opts = dict(s.layout_options)
            out.print(
                "options (--task-option KEY=VALUE): "
                + ", ".join(f"{k} (default {opts.get(k)})" for k in s.user_options)
            )
        cmd = "finetune" if s.label_type == "segmentation" else "probe"
        cmd += " --protocol abmil" if s.case else ""
        out.print(f"\nrun: midol {cmd} --task {name} --weights runs/base --data /path/to/download")

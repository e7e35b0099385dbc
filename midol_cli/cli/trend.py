"""`midol trend`: studies side by side along one factor (data scale, budget): does a gap move?"""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import TrendSettings

    settings_command(app, "trend", TrendSettings, trend, help=(
        "Line up studies from `midol study` along one factor (data scale, steps, recipe) and ask whether "
        "each variant's gap to the baseline moves.\n\n"
        "Per study: scores and the seed-level paired gap (variant - baseline, t-interval over seeds). "
        "Across studies: the change of each gap from the first study, by Welch's t-interval (different "
        "images, so seeds are not paired). Only the seeds and rows every study has are used.\n\n"
        "Examples:\n\n"
        "  midol trend demo/study big/study --labels 200,800\n\n"
        "  midol trend s1k/study s4k/study --variants no_moe --plot trend.png -o trend.md"))


def trend(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import progress_reporter
    from midol_cli.workflows.settings import TrendSettings
    from midol_cli.workflows.trend import run

    s = command_settings(ctx, TrendSettings, args, "trend", print_config=print_config)
    text = run(s, progress_reporter())
    if s.out is None:
        typer.echo(text, nl=False)

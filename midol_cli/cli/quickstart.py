"""`midol quickstart`: raw folders (one per modality) to a pre-trained, evaluated model in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import QuickstartSettings

    settings_command(app, "quickstart", QuickstartSettings, quickstart, help=(
        "One command from raw folders to a pre-trained, evaluated model.\n\n"
        "It runs ingest -> shard -> pretrain -> embed + probe (--task auto where labels exist; random init "
        "as "
        "the baseline) -> report. RAW_ROOT "
        "holds one sub-folder per modality (named xray, fundus, oct, dermoscopy, pathology, or an alias; "
        "map others with modalities.FOLDER=MODALITY), each in any layout `midol ingest` detects.\n\n"
        "Each stage is the normal command with its normal files under --out, so a re-run resumes where the "
        "last one stopped and any stage can be taken over by hand. Stage settings: ingest.KEY=VALUE, "
        "shard.KEY=VALUE, pretrain.KEY=VALUE (recipe keys), probe.KEY=VALUE.\n\n"
        "Examples:\n\n"
        "  midol quickstart ~/raw --out runs/qs\n\n"
        "  midol quickstart demo/raw --out demo/qs --recipe recipes/smoke.yaml shard.max_side=96 "
        "pretrain.train.steps=200 probe.seeds=1\n\n"
        "  midol quickstart demo/qs/quickstart.yaml --print-config"))


def quickstart(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import console, progress_reporter
    from midol_cli.workflows.quickstart import run
    from midol_cli.workflows.settings import QuickstartSettings

    s = command_settings(ctx, QuickstartSettings, args, "quickstart", print_config=print_config)
    res = run(s, progress_reporter())
    if res.get("report"):
        typer.echo(Path(res["report"]).read_text(encoding="utf-8"), nl=False)
    console().print(f"quickstart finished -> {res['out']}", markup=False, highlight=False)

"""`midol quickstart`: raw folders (one per modality) to a pre-trained, evaluated model in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option


def register(app: typer.Typer) -> None:
    @app.command(
        "quickstart",
        help=(
            "One command from raw folders to a pre-trained, evaluated model.\n\n"
            "It runs ingest -> shard -> pretrain -> embed + probe (--task auto where labels exist; random init as the baseline) -> report. RAW_ROOT "
            "holds one sub-folder per modality (named xray, fundus, oct, dermoscopy, pathology, or an alias; "
            "map others with modalities.FOLDER=MODALITY), each in any layout `midol ingest` detects.\n\n"
            "Each stage is the normal command with its normal files under --out, so a re-run resumes where the "
            "last one stopped and any stage can be taken over by hand. Stage settings: ingest.KEY=VALUE, "
            "shard.KEY=VALUE, pretrain.KEY=VALUE (recipe keys), probe.KEY=VALUE.\n\n"
            "Examples:\n\n"
            "  midol quickstart ~/raw --out runs/qs\n\n"
            "  midol quickstart demo/raw --out demo/qs --recipe recipes/smoke.yaml shard.max_side=96 "
            "pretrain.train.steps=200 probe.seeds=1\n\n"
            "  midol quickstart demo/qs/quickstart.yaml --print-config"
        ),
    )
    def quickstart(
        ctx: typer.Context,
        args: list[str] = typer.Argument(None, metavar="[CONFIG.yaml] RAW_ROOT [KEY=VALUE]...",
                                         help="Folder with one sub-folder per modality, optionally after a config "
                                              "YAML (e.g. OUT/quickstart.yaml); key=value settings after it."),
        out: Path = typer.Option(Path("quickstart"), "--out", "-o",
                                 help="Where manifests/, shards/, runs/, results/ and report.md go."),
        recipe: Path = typer.Option(None, "--recipe",
                                    help="Pre-training recipe (default: the built-in Swin-B base recipe)."),
        baseline: bool = typer.Option(True, "--baseline/--no-baseline",
                                      help="Also probe the same encoder at random init (the report's baseline)."),
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.api.settings import QuickstartSettings
        from midol_cli.cli._common import console, progress_reporter
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, QuickstartSettings, args, FLAGS, "quickstart", fields=("raw_root",),
                             print_config=print_config)
        c = console()
        res = api.quickstart(s, log=lambda m: c.print(m, markup=False, highlight=False, soft_wrap=True),
                             reporter=progress_reporter())
        if res.get("report"):
            typer.echo(Path(res["report"]).read_text(encoding="utf-8"), nl=False)
        c.print(f"quickstart finished -> {res['out']}", markup=False, highlight=False)


# Flags -> settings keys (midol_cli.api.settings.QuickstartSettings).
FLAGS = {"out": "out", "recipe": "recipe", "baseline": "baseline"}

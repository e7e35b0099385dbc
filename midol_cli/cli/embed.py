"""`midol embed`: embeddings of a manifest or shard dir, representation metrics, 2-D maps."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import ARGS_HELP, print_config_option


def register(app: typer.Typer) -> None:
    @app.command(
        "embed",
        help=(
            "Embed every image of a manifest or shard dir with a model; print modality silhouette, router "
            "accuracy, per-modality effective rank and k-NN accuracy; --plot draws t-SNE maps.\n\n"
            "Examples:\n\n"
            "  midol embed --weights demo/runs/smoke --data demo/shards --out demo/emb/smoke.parquet --plot demo/plots\n\n"
            "  midol embed --weights random:demo/runs/smoke --data demo/shards --out demo/emb/random.parquet\n\n"
            "  midol embed demo/emb/smoke.embed.yaml batch_size=16 --print-config"
        ),
    )
    def embed_cmd(
        ctx: typer.Context,
        args: list[str] = typer.Argument(None, metavar="[CONFIG.yaml] [KEY=VALUE]...", help=ARGS_HELP),
        weights: str = typer.Option(None, "--weights", help="Run dir, export .safetensors, timm:NAME=FILE or random:NAME."),
        data: Path = typer.Option(None, "--data", help="Manifest (.parquet) or shard dir."),
        out: Path = typer.Option(None, "--out", help="Embeddings Parquet to write."),
        name: str = typer.Option(None, "--name", help="Model id (default: derived from --weights)."),
        plot: Path = typer.Option(None, "--plot", help="Folder for t-SNE PNGs (by modality, and per modality by label)."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        workers: int = typer.Option(2, "--workers", help="Data-loading processes (0: read in this process)."),
        device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Recompute even if cached."),
        lenient: bool = typer.Option(False, "--weights-lenient/--weights-strict",
                                     help="Load what fits of a partial checkpoint and leave the rest at random init "
                                          "(recorded in the load report); the default refuses any mismatch."),
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.api.settings import EmbedSettings
        from midol_cli.cli._common import console, show_progress
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, EmbedSettings, args, FLAGS, "embed", print_config=print_config)
        res = api.embed(s, progress=show_progress())
        df, rep, model, out = res["embeddings"], res["metrics"], res["model"], res["out"]
        c = console()
        from rich.table import Table

        c.print(f"[bold]{model.id}[/]: {len(df)} images -> {out} (cache {df.attrs.get('cache')})")
        _say_load(c, model)
        skipped = int(df.attrs.get("skipped", 0) or 0)
        if skipped:
            c.print(f"[yellow]warning[/]: {skipped} damaged or unreadable sample(s) skipped (not cached; see the "
                    "warnings above)")
        sil, racc = rep["modality_silhouette"], rep.get("router_accuracy", float("nan"))
        c.print("modality silhouette (cosine): " + (f"{sil:.3f}" if sil == sil else "n/a (one modality)")
                + "   router accuracy: " + (f"{racc:.3f}" if racc == racc else "n/a (no router)"))
        if "routed_modality" in df.columns:
            unknown = int((df["routed_modality"] == "unknown").sum())
            c.print(f"routing: {unknown} of {len(df)} images beyond the calibrated threshold (routed 'unknown')")
        t = Table()
        for col in ("modality", "n", "effective rank", "k-NN acc"):
            t.add_column(col)
        for m, r in rep["per_modality"].items():
            t.add_row(m, str(r["n"]), f"{r['effective_rank']:.1f}", f"{r['knn_accuracy']:.3f}")
        c.print(t)
        for p in res["plots"]:
            c.print(f"plot -> {p}")


# Flags -> settings keys (midol_cli.api.settings.EmbedSettings).
FLAGS = {"weights": "weights", "data": "data", "out": "out", "name": "model_id", "plot": "plot",
         "batch_size": "batch_size", "workers": "workers", "device": "device",
         "no_cache": ("cache", lambda v: not v), "lenient": "weights_lenient"}


def _say_load(c, model) -> None:
    """The weights load report, one line; a lenient load that left tensors at random init is a warning."""
    rep = getattr(model.encoder, "load_report", None)
    if rep is None:
        return
    if rep.partial:
        c.print(f"[yellow]warning[/]: lenient weights load: {rep.summary()}", markup=True, highlight=False)
    else:
        c.print(f"weights: {rep.summary()}", markup=False, highlight=False)

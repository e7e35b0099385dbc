"""`midol embed`: embeddings of a manifest or shard dir, representation metrics, 2-D maps."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "embed",
        help=(
            "Embed every image of a manifest or shard dir with a model; print modality silhouette, router "
            "accuracy, per-modality effective rank and k-NN accuracy; --plot draws t-SNE maps.\n\n"
            "Examples:\n\n"
            "  midol embed --weights demo/runs/smoke --data demo/shards --out demo/emb/smoke.parquet --plot demo/plots\n\n"
            "  midol embed --weights random:demo/runs/smoke --data demo/shards --out demo/emb/random.parquet"
        ),
    )
    def embed_cmd(
        weights: str = typer.Option(..., "--weights", help="Run dir, export .safetensors, timm:NAME=FILE or random:NAME."),
        data: Path = typer.Option(..., "--data", help="Manifest (.parquet) or shard dir."),
        out: Path = typer.Option(..., "--out", help="Embeddings Parquet to write."),
        name: str = typer.Option(None, "--name", help="Model id (default: derived from --weights)."),
        plot: Path = typer.Option(None, "--plot", help="Folder for t-SNE PNGs (by modality, and per modality by label)."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        workers: int = typer.Option(2, "--workers", help="Data-loading processes (0: read in this process)."),
        device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Recompute even if cached."),
        lenient: bool = typer.Option(False, "--weights-lenient/--weights-strict",
                                     help="Load what fits of a partial checkpoint and leave the rest at random init "
                                          "(recorded in the load report); the default refuses any mismatch."),
    ) -> None:
        from midol_cli.cli._common import console, show_progress, writable_out
        from midol_cli.eval.embed import embed, write_embeddings
        from midol_cli.eval.models import load_eval_model
        from midol_cli.eval.representation import representation_metrics

        writable_out(out, "--out", folder=False)
        writable_out(plot, "--plot")
        model = load_eval_model(weights, name, lenient=lenient)
        df = embed(model, data, batch_size=batch_size, workers=workers, device=device, use_cache=not no_cache,
                   progress=show_progress())
        write_embeddings(df, out, model.info(), model.modalities)
        rep = representation_metrics(df, model.modalities or None)
        from midol_cli.artifacts import write_json_atomic

        write_json_atomic(out.with_suffix(".metrics.json"), rep)
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
        if plot is not None:
            from midol_cli.report.plots import embedding_maps

            for p in embedding_maps(df, plot, title=model.id):
                c.print(f"plot -> {p}")


def _say_load(c, model) -> None:
    """The weights load report, one line; a lenient load that left tensors at random init is a warning."""
    rep = getattr(model.encoder, "load_report", None)
    if rep is None:
        return
    if rep.partial:
        c.print(f"[yellow]warning[/]: lenient weights load: {rep.summary()}", markup=True, highlight=False)
    else:
        c.print(f"weights: {rep.summary()}", markup=False, highlight=False)

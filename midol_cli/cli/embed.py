"""`midol embed`: embeddings of a manifest or shard dir, representation metrics, 2-D maps."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import EmbedSettings

    settings_command(app, "embed", EmbedSettings, embed_cmd, help=(
        "Embed every image of a manifest or shard dir with a model; print modality silhouette, router "
        "accuracy, per-modality effective rank and k-NN accuracy; --plot draws t-SNE maps.\n\n"
        "Examples:\n\n"
        "  midol embed --weights demo/runs/smoke --data demo/shards --out demo/emb/smoke.parquet --plot "
        "demo/plots\n\n"
        "  midol embed --weights random:demo/runs/smoke --data demo/shards --out demo/emb/random.parquet\n\n"
        "  midol embed demo/emb/smoke.embed.yaml batch_size=16 --print-config"))


def embed_cmd(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from rich.table import Table

    from midol_cli.cli._common import console, progress_reporter
    from midol_cli.workflows.embed import run
    from midol_cli.workflows.settings import EmbedSettings

    s = command_settings(ctx, EmbedSettings, args, "embed", print_config=print_config)
    res = run(s, progress_reporter(transient=True))
    df, rep, model, out = res["embeddings"], res["metrics"], res["model"], res["out"]
    c = console()
    c.print(f"[bold]{model.id}[/]: {len(df)} images -> {out} (cache {df.attrs.get('cache')})")
    _say_load(c, model)
    dropped = df.attrs.get("dropped") or {}
    if dropped.get("count"):
        from midol_cli.eval.embed import dropped_line

        c.print(f"[yellow]warning[/]: {dropped_line(dropped)} (not cached)", highlight=False)
    sil, racc = rep["modality_silhouette"], rep.get("router_accuracy", float("nan"))
    c.print(f"representation metrics on {rep.get('n_images', len(df))} held-out images "  # issue 28.5
            f"({rep.get('split', 'all')}; {rep.get('n_excluded', 0)} training images left out)",
            highlight=False)
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


def _say_load(c, model) -> None:
    """The weights load report, one line; a lenient load that left tensors at random init is a warning."""
    rep = getattr(model.encoder, "load_report", None)
    if rep is None:
        return
    if rep.partial:
        c.print(f"[yellow]warning[/]: lenient weights load: {rep.summary()}", markup=True, highlight=False)
    else:
        c.print(f"weights: {rep.summary()}", markup=False, highlight=False)

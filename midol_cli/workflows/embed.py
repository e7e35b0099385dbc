"""``midol embed``'s one home: a model's embeddings of a manifest or shard dir, their metrics and maps."""

from __future__ import annotations

from typing import Any

from midol_cli.paths import writable_out
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import EmbedSettings, write_settings


def run(s: EmbedSettings, reporter: Reporter) -> dict[str, Any]:
    """Write the embeddings Parquet, its metrics JSON and (``s.plot``) t-SNE maps; return
    ``{"embeddings", "metrics", "model", "plots", "out"}``."""
    from midol_cli.artifacts import write_json_atomic
    from midol_cli.eval.embed import embed, write_embeddings
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.representation import representation_metrics

    writable_out(s.out, "--out", folder=False)
    writable_out(s.plot, "--plot")
    if s.plot is not None:
        from midol_cli.extras import require

        require("matplotlib", "plots", "embed --plot")
    model = load_eval_model(s.weights, s.model_id, lenient=s.weights_lenient)
    df = embed(model, s.data, batch_size=s.batch_size, workers=s.workers, device=s.device, use_cache=s.cache,
               reporter=reporter)
    write_embeddings(df, s.out, model.info(), model.modalities)
    rep = representation_metrics(df, model.modalities or None)
    write_json_atomic(s.out.with_suffix(".metrics.json"), rep)
    write_settings(s, s.out, "embed", folder=False)
    plots = []
    if s.plot is not None:
        from midol_cli.report.plots import embedding_maps

        plots = embedding_maps(df, s.plot, title=model.id)
    return {"embeddings": df, "metrics": rep, "model": model, "plots": plots, "out": s.out}

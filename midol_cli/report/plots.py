"""PNG figures across runs from numbers already computed (no metric computation here): a bar chart of
models x tasks and t-SNE maps. The Agg backend, the atomic PNG write and the per-run confusion matrix
live one layer down, in midol_cli.plotting, so that eval/ need not import report/. The bar chart and the
t-SNE maps are figures the user asks for (``--plot``): without matplotlib they are a one-line error
naming the ``plots`` extra (``require_plots``, which the command can also call before its work)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from midol_cli.plotting import pyplot, require_plots, save_png


def plot_bars(
    tasks: Sequence[str],
    models: Sequence[str],
    values: dict[tuple[str, str], float],
    errors: dict[tuple[str, str], tuple[float, float]],
    path: str | Path,
    ylabel: str,
    title: str = "",
) -> None:
    """Grouped bars: one group per task, one bar per model; ``values[(task, model)]``, optional
    asymmetric error bars ``errors[(task, model)] = (below, above)``. Missing cells leave a gap."""
    import numpy as np

    plt = pyplot("--plot (a bar chart)")
    n_t, n_m = len(tasks), max(len(models), 1)
    width = 0.8 / n_m
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * n_t * max(1, n_m / 2) + 2), 4))
    try:
        x = np.arange(n_t)
        for j, model in enumerate(models):
            vals = [values.get((t, model), np.nan) for t in tasks]
            err = np.array([errors.get((t, model), (0.0, 0.0)) for t in tasks]).T
            ax.bar(x + (j - (n_m - 1) / 2) * width, vals, width, yerr=err, capsize=2, label=model)
        ax.set_xticks(x, labels=list(tasks), rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(fontsize=8)
        save_png(fig, path)
    finally:
        plt.close(fig)


def _scatter(xy, labels, path: str | Path, title: str) -> None:
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cats = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
    labels = np.asarray(labels)
    for i, c in enumerate(cats):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.75, color=cmap(i % cmap.N), label=f"{c} ({int(m.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    save_png(fig, path)


def embedding_maps(emb_df, out_dir: str | Path, title: str = "", seed: int = 0) -> list[Path]:
    """t-SNE maps of an embeddings table: all images coloured by modality, then each modality by label."""
    import numpy as np

    require_plots("--plot (t-SNE maps)")  # before the t-SNE, which takes a while
    from midol_cli.eval.representation import project_2d

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    X = np.stack(emb_df["embedding"].to_numpy())
    paths = []
    xy, idx = project_2d(X, seed)
    p = out_dir / "tsne_modality.png"
    _scatter(xy, emb_df["modality"].to_numpy()[idx], p, f"{title} — by modality".strip(" —"))
    paths.append(p)
    for mod, d in emb_df.groupby("modality"):
        if len(d) < 5:
            continue
        xy, idx = project_2d(np.stack(d["embedding"].to_numpy()), seed)
        p = out_dir / f"tsne_{mod}.png"
        _scatter(xy, d["label"].astype(str).replace("", "(unlabelled)").to_numpy()[idx], p,
                 f"{title} — {mod} by label".strip(" —"))
        paths.append(p)
    return paths


def roc_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float], float]], title: str = ""):
    """ROC curves ``[(class name, false-positive rates, true-positive rates, AUROC), ...]`` on one axes
    with the chance diagonal; returns the figure (the caller saves or embeds it, and closes it).
    The rates come computed (``report.html.roc_points``): nothing is computed here."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    cmap = plt.get_cmap("tab10")
    for i, (name, fpr, tpr, auc) in enumerate(curves):
        ax.plot(fpr, tpr, lw=1.4, color=cmap(i % 10), label=f"{name} (AUROC {100 * auc:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def subgroup_figure(
    labels: Sequence[str],
    values: Sequence[float | None],
    errors: Sequence[tuple[float, float]],
    too_small: Sequence[bool],
    ylabel: str,
    title: str = "",
):
    """One bar per subgroup with asymmetric CI error bars ``(below, above)``; a too-small subgroup (or
    one without a value) gets no bar but a 'too small' label at its place, so a missing number never
    reads as zero. Returns the figure (the caller saves or embeds it, and closes it)."""
    import numpy as np

    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * n + 1.5), 3.4))
    x = np.arange(n)
    vals = [np.nan if v is None else float(v) for v in values]
    err = np.array([e if v is not None else (0.0, 0.0) for v, e in zip(values, errors, strict=True)]).T
    ax.bar(x, vals, 0.6, yerr=err.reshape(2, n), capsize=3, color="C0")
    top = np.nanmax(vals) if any(v is not None for v in values) else 100.0
    for i, (v, small) in enumerate(zip(values, too_small, strict=True)):
        if v is None:
            ax.text(i, 2.0, "too small" if small else "no value", rotation=90, ha="center",
                    va="bottom", fontsize=8, color="#8a5a00")
    ax.set_xticks(x, labels=list(labels), rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(100.0, float(top) + 5.0))  # values are x100
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def loss_curve_figure(curves: dict[str, tuple[Sequence[int], Sequence[float]]], title: str = ""):
    """A pre-training run's losses against step: the total (``loss``, thick) on top, each term below it on
    its own axes (terms differ in scale and sign: the inter-modality term is negative). ``curves[name] =
    (steps, values)`` as logged in ``metrics.jsonl``; returns the figure (the caller embeds and closes it)."""
    plt = pyplot("the pre-training loss curves")
    terms = [k for k in curves if k != "loss"]
    fig, (ax, axt) = plt.subplots(2, 1, figsize=(6.0, 5.0), sharex=True)
    if "loss" in curves:
        ax.plot(*curves["loss"], lw=1.8, color="black", label="loss (total)")
    ax.set_ylabel("total loss")
    ax.legend(fontsize=7)
    for i, k in enumerate(sorted(terms)):
        axt.plot(*curves[k], lw=1.2, color=f"C{i % 10}", label=k)
    axt.axhline(0.0, color="grey", lw=0.6, ls=":")
    axt.set_xlabel("step")
    axt.set_ylabel("loss terms")
    if terms:
        axt.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig

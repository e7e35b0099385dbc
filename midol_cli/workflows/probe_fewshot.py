"""The probe's few-shot and retrieval protocols (issue 29.1, 29.2), added to a result folder the probe
suite just wrote, on the same (cached) embeddings: nothing is embedded again.

- ``simpleshot_<n>`` per shot count (``eval/fewshot.py``): a protocol block in ``summary.json`` and one
  ``predictions.parquet`` row per test image and episode (``seed`` = episode: the same support rows
  for every model on the same data, so ``report --compare`` pairs models episode by episode);
- ``retrieval`` (test against train) and ``retrieval_loo`` (within test, leave-one-out)
  (``eval/retrieval.py``): a block each, with ``primary_metric`` ``map_10``, and the per-query values
  in ``retrieval.parquet`` (``sample_id, group, label, protocol`` and one column per metric), which
  ``report --compare`` resamples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd



def wanted(s: Any) -> bool:
    """Whether the probe settings ``s`` ask for any of these protocols."""
    return bool(getattr(s, "simpleshot", False) or getattr(s, "retrieval", False))


def add_protocols(summary: dict[str, Any], emb_all: pd.DataFrame, emb: pd.DataFrame, task: Any,
                  out_dir: Path, s: Any, say: Callable[[str], None]) -> None:
    """Add the SimpleShot and/or retrieval blocks ``s`` asks for to ``summary`` (and its summary.json),
    their rows to predictions.parquet / retrieval.parquet. ``emb``: the task's rows; ``emb_all``: every
    modality's (the gallery of the cross-modality rate, when there are several)."""
    from midol_cli.artifacts import SUMMARY_NAME, write_json_atomic
    from midol_cli.eval.results import task_data

    td = task_data(emb, task)
    boot = {"n_boot": int(s.n_boot), "seed": 0}
    new: dict[str, Any] = {}
    if s.simpleshot:
        if task.label_type == "multilabel":
            note = "SimpleShot skipped: a multi-label task has no class means"
            summary.setdefault("notes", []).append(note)
            say(f"{task.name}: SimpleShot skipped (multi-label task)")
        else:
            rows = _simpleshot(td, task, [int(n) for n in s.shots], int(s.episodes), boot, new, say)
            _merge_predictions(out_dir, task, summary["model"]["id"], td, rows)
    if s.retrieval:
        per_query = _retrieval(td, task, emb_all, boot, new, say)
        from midol_cli.eval.retrieval import RETRIEVAL_NAME

        _write_retrieval(out_dir / RETRIEVAL_NAME, td, per_query)
    summary["protocols"].update(new)
    write_json_atomic(out_dir / SUMMARY_NAME, {k: v for k, v in summary.items() if k != "out_dir"})


def _simpleshot(td: Any, task: Any, shots: list[int], episodes: int, boot: dict[str, int],
                out: dict[str, Any], say: Callable[[str], None]) -> list[tuple[str, int, np.ndarray]]:
    """Add a ``simpleshot_<n>`` block per shot count to ``out``; the prediction rows of every episode."""
    from midol_cli.eval.fewshot import simpleshot_block

    tr, te = td.mask("train"), td.mask("test")
    rows = []
    for n in shots:
        say(f"{task.name}: SimpleShot {n}-shot, {episodes} episodes")
        block, probs = simpleshot_block(td.X[tr], td.y[tr], td.X[te], td.y[te], task, n, episodes=episodes,
                                        seed=boot["seed"], groups=td.groups[te], n_boot=boot["n_boot"])
        out[f"simpleshot_{n}"] = block
        say(f"{task.name}: simpleshot_{n}: {_line(block, task.metric)}")
        rows += [(f"simpleshot_{n}", e, probs[e]) for e in range(episodes)]
    return rows


def _retrieval(td: Any, task: Any, emb_all: pd.DataFrame, boot: dict[str, int], out: dict[str, Any],
               say: Callable[[str], None]) -> dict[str, dict[str, np.ndarray]]:
    """Add the ``retrieval`` and (with two or more test images) ``retrieval_loo`` blocks to ``out``; the
    per-query values of each."""
    from midol_cli.eval.retrieval import DEFAULT_KS, cross_modality, neighbours, per_query, retrieval_block

    tr, te = td.mask("train"), td.mask("test")
    lt, C, kmax = task.label_type, len(task.classes), max(DEFAULT_KS)
    g_te = td.groups[te]
    say(f"{task.name}: retrieval, {int(te.sum())} test queries against {int(tr.sum())} train images")
    vals = per_query(td.y[te], td.y[tr], neighbours(td.X[tr], td.X[te], kmax), lt, C)
    gallery = emb_all[emb_all["split"].astype(str) == "train"]
    if gallery["modality"].astype(str).nunique() > 1:
        import numpy as np

        G = np.stack(gallery["embedding"].to_numpy()).astype(np.float32)
        idx = neighbours(G, td.X[te], kmax)
        vals.update(cross_modality(np.full(int(te.sum()), task.modality),
                                   gallery["modality"].astype(str).to_numpy(), idx))
    out["retrieval"] = retrieval_block(vals, gallery="train", n_gallery=int(tr.sum()), groups=g_te, **boot)
    say(f"{task.name}: retrieval: {_line(out['retrieval'], 'map_10')}")
    per = {"retrieval": vals}
    if te.sum() >= 2:
        loo = per_query(td.y[te], td.y[te], neighbours(td.X[te], td.X[te], kmax, exclude_self=True), lt, C)
        out["retrieval_loo"] = retrieval_block(loo, gallery="test (leave-one-out)",
                                               n_gallery=int(te.sum()) - 1, groups=g_te, **boot)
        per["retrieval_loo"] = loo
        say(f"{task.name}: retrieval_loo: {_line(out['retrieval_loo'], 'map_10')}")
    return per


def _line(block: dict[str, Any], metric: str) -> str:
    """``auroc 0.8123 [0.7710, 0.8500]`` of ``block`` (``n/a`` where undefined)."""
    v = block["metrics"].get(metric) or {}

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    return f"{metric} {f(v.get('value'))} [{f(v.get('ci_low'))}, {f(v.get('ci_high'))}]"


def _merge_predictions(out_dir: Path, task: Any, model_id: str, td: Any,
                       rows: list[tuple[str, int, np.ndarray]]) -> None:
    """Replace these protocols' rows of ``predictions.parquet`` with ``rows`` (protocol, seed, probs)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from midol_cli.artifacts import PREDICTIONS_NAME, atomic_path, prediction_table

    te = td.mask("test")
    sid = td.df["sample_id"].astype(str).to_numpy()[te].tolist()
    label = td.df["label"].astype(str).to_numpy()[te].tolist()
    group = [str(g) for g in td.groups[te]]
    ours = prediction_table(task.classes, task.name, model_id,
                            [(p, seed, sid, group, label, probs) for p, seed, probs in rows])
    path = out_dir / PREDICTIONS_NAME
    table = ours
    if path.is_file():
        old = pq.read_table(path)
        mine = sorted({r[0] for r in rows})
        keep = ~np.isin(np.asarray(old.column("protocol").to_pylist(), dtype=object), mine)
        table = pa.concat_tables([old.filter(pa.array(keep)), ours.cast(old.schema)])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_retrieval(path: Path, td: Any, per: dict[str, dict[str, np.ndarray]]) -> None:
    """``retrieval.parquet``: one row per protocol and test query, one float column per metric."""
    import pandas as pd

    from midol_cli.artifacts import atomic_path

    te = td.mask("test")
    base = {"sample_id": td.df["sample_id"].astype(str).to_numpy()[te],
            "group": td.groups[te].astype(str), "label": td.df["label"].astype(str).to_numpy()[te]}
    parts = [pd.DataFrame({**base, "protocol": name, **{k: v.astype(float) for k, v in vals.items()}})
             for name, vals in per.items()]
    with atomic_path(path) as tmp:
        pd.concat(parts, ignore_index=True).to_parquet(tmp, index=False)


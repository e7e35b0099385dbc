"""Adding a trained protocol (``finetune``, ``linear_ft``) to a (model, task) result folder.

One writer for classification and segmentation: ``write_protocol`` adds the protocol's block to
``summary.json`` in the schema of ``eval.results`` (creating the file when absent, keeping every
protocol already there, moving an unreadable file aside rather than overwriting it), and
``merge_predictions`` replaces that protocol's rows of the classification ``predictions.parquet``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.artifacts import (
    atomic_path,
    prediction_schema,
    prediction_table,
    provenance,
    write_json_atomic,
)


def write_protocol(
    out_dir: Path,
    protocol: str,
    block: dict[str, Any],
    task: Any,
    model_info: dict[str, Any],
    *,
    data_hash: str,
    n: dict[str, int],
    val_source: str,
    notes: list[str],
    recipe: Any,
    task_extra: dict[str, Any] | None = None,
    **prov: Any,
) -> dict[str, Any]:
    """Add ``protocol`` to ``out_dir/summary.json``; returns the summary as written.

    An existing summary keeps its other protocols (a different ``data_hash`` is warned about: the
    probe hashes the embedded data, fine-tuning the manifest). An invalid one is moved to
    ``summary.json.invalid`` and a new summary started.
    """
    from midol_cli.artifacts import model_block
    from midol_cli.eval.results import (
        SUMMARY_NAME,
        SUMMARY_SCHEMA,
        add_protocol,
        load_summary,
        validate_summary,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SUMMARY_NAME
    if path.is_file():
        try:
            old = load_summary(path)
        except ValueError as e:
            bad = path.with_name(SUMMARY_NAME + ".invalid")
            os.replace(path, bad)
            print(f"warning: {e}; moved it to {bad.name} and wrote a new summary", file=sys.stderr)
        else:
            if old["task"].get("data_hash") not in ("", None, data_hash):
                print(f"warning: {path} holds results on other data (hash {old['task']['data_hash']}); "
                      f"{protocol} used {data_hash}", file=sys.stderr)
            return add_protocol(path, protocol, block)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "model": model_block(model_info),
        "task": {**task.to_dict(), "data_hash": data_hash, **(task_extra or {})},
        "protocols": {protocol: block},
        "primary_metric": task.metric,
        "n": dict(n),
        "val_source": val_source,
        "notes": list(notes),
        "provenance": provenance(stage="finetune", protocol=protocol, n_boot=int(recipe.n_boot),
                                 seeds=[int(recipe.seed)], **prov),
    }
    validate_summary(summary, path)
    write_json_atomic(path, summary)
    return summary


def merge_predictions(out_dir: Path, protocol: str, task: Any, model_id: str, *, sample_ids: list[str],
                      groups: list[str], labels: list[str], probs: np.ndarray, seed: int) -> Path:
    """Replace ``protocol``'s rows of ``predictions.parquet`` (schema of ``artifacts.prediction_schema``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from midol_cli.artifacts import PREDICTIONS_NAME

    path = out_dir / PREDICTIONS_NAME
    schema = prediction_schema(task.classes, task.name, model_id)
    ours = prediction_table(
        task.classes, task.name, model_id, [(protocol, seed, sample_ids, groups, labels, probs)]
    )
    table = ours
    if path.is_file():
        try:
            old = pq.read_table(path)
            meta = json.loads((old.schema.metadata or {}).get(b"midol", b"{}"))
            if meta.get("classes") not in (None, list(task.classes)):
                raise ValueError("other classes")
            if "group" not in old.column_names:  # written before predictions carried the patient
                old = old.append_column("group", pa.array([""] * old.num_rows, pa.string()))
            old = old.select(schema.names).cast(schema)
            keep = np.asarray(old.column("protocol").to_pylist(), dtype=object) != protocol
            table = pa.concat_tables([old.filter(pa.array(keep)), ours])
        except (OSError, ValueError, KeyError, pa.ArrowException) as e:
            print(f"warning: {path} could not be merged ({type(e).__name__}: {e}); rewriting it with "
                  f"{protocol} only", file=sys.stderr)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path

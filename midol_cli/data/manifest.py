"""The manifest: one Parquet file per ingested folder (schema in artifacts.MANIFEST_COLUMNS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midol_cli.artifacts import MANIFEST_COLUMNS, atomic_path, sha256_file
from midol_cli.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

META_KEY = b"midol"


def _arrow_schema():
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "list<string>": pa.list_(pa.string()),
        "int8": pa.int8(),
        "int32": pa.int32(),
        "int64": pa.int64(),
    }
    return pa.schema([(name, types[t]) for name, t in MANIFEST_COLUMNS.items()])


def empty_row() -> dict[str, Any]:
    """A row with every column present and neutral values (for rejects that never decoded)."""
    row: dict[str, Any] = {}
    for name, t in MANIFEST_COLUMNS.items():
        row[name] = [] if t == "list<string>" else ("" if t == "string" else 0)
    row["meta"] = "{}"
    return row


def write_manifest(
    df: pd.DataFrame, meta: dict[str, Any], path: str | Path, volatile: tuple[str, ...] = ()
) -> bool:
    """Write ``df`` (all MANIFEST_COLUMNS) with provenance ``meta`` atomically; return whether it wrote.

    A manifest already at ``path`` with the same rows and the same provenance but for the ``volatile``
    keys (the command line, how many files were read again) is left as it is: its hash, which shard
    plans and caches key on, stays the same when nothing in the data changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"manifest is missing columns {missing}")
    schema = _arrow_schema().with_metadata({META_KEY: json.dumps(meta, default=str).encode()})
    table = pa.Table.from_pandas(df[list(MANIFEST_COLUMNS)], schema=schema, preserve_index=False)
    if volatile and _same(Path(path), table, meta, volatile):
        return False
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return True


def _same(path: Path, table: Any, meta: dict[str, Any], volatile: tuple[str, ...]) -> bool:
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        old = pq.read_table(path)
        old_meta = json.loads((old.schema.metadata or {}).get(META_KEY, b"{}").decode())
    except Exception:  # unreadable or not a manifest: written anew
        return False
    new_meta = json.loads(json.dumps(meta, default=str))

    def stable(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k not in volatile}

    return stable(old_meta) == stable(new_meta) and old.replace_schema_metadata(None).equals(
        table.replace_schema_metadata(None))


def read_manifest(path: str | Path, only_ok: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a manifest; return (rows, provenance). ``only_ok`` drops rejected rows."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"manifest '{path}' does not exist; create it with `midol ingest`")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise UsageError(f"manifest '{path}' is not a readable Parquet file ({type(e).__name__})") from None
    missing = [c for c in ("sample_id", "path", "modality", "status") if c not in table.column_names]
    if missing:
        raise UsageError(f"'{path}' is not a midol manifest (missing columns: {', '.join(missing)})")
    raw_meta = (table.schema.metadata or {}).get(META_KEY, b"{}")
    meta = json.loads(raw_meta.decode())
    df = table.to_pandas()
    if "labels" in df.columns:
        df["labels"] = df["labels"].apply(lambda v: [] if v is None else list(v))
    # Manifests written before a column existed read as if it were empty.
    if "phash" not in df.columns:
        df["phash"] = ""
    if "meta" not in df.columns:
        df["meta"] = "{}"
    if only_ok:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    return df, meta


def usable_rows(df: pd.DataFrame, modality: str | None = None, labelled: bool = False) -> pd.DataFrame:
    """The rows an evaluation or fine-tuning may use: status ok, not an exact duplicate of an earlier
    row (``duplicate_of``), of ``modality`` when given, with a label when ``labelled``. The one rule
    for embed, classification and segmentation; the index is reset."""
    keep = df["status"].astype(str) == "ok"
    if "duplicate_of" in df.columns:
        keep &= df["duplicate_of"].fillna("").astype(str) == ""
    if modality is not None:
        keep &= df["modality"].astype(str) == modality
    if labelled:
        keep &= df["label"].fillna("").astype(str) != ""
    return df[keep].reset_index(drop=True)


def row_meta(value: Any) -> dict[str, str]:
    """The ``meta`` cell of a manifest row as a dict (``{}`` for empty or malformed cells)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def manifest_hash(path: str | Path) -> str:
    return sha256_file(path)[:16]

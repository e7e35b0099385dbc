"""Files the stages exchange: their schemas, atomic writes, provenance.

Stages talk only through files (ARCHITECTURE.md). Every artifact records what
produced it: package version, command, parameters and input hashes.

Manifest (Parquet, written by ``ingest``, read by ``shard``/``probe``): one row per
file found, accepted or rejected. Columns are ``MANIFEST_COLUMNS``; the
table-level metadata key ``b"midol"`` holds a JSON provenance record with at
least ``root`` (the absolute raw folder), ``layout`` and ``version``.

Shards (``shard``): WebDataset tars ``shard-NNNNNN.tar``; each sample is
``<key>.png`` or ``<key>.jpg`` plus ``<key>.json`` holding ``SHARD_META_KEYS``;
``index.json`` beside them (see data/shards.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from midol_cli import __version__

# One row per image file (status "ok") or per file that could not be used
# (status "rejected", with a reason). Labels are strings: single-label tasks use
# ``label``; multi-label rows keep every finding in ``labels`` and join them with
# "|" in ``label``. An image with no label has label "" and labels [].
MANIFEST_COLUMNS: dict[str, str] = {
    "sample_id": "string",  # stable: sha1(dataset + '/' + path)[:16]
    "path": "string",  # posix path relative to the raw root
    "modality": "string",
    "dataset": "string",  # e.g. aptos2019, ham10000, oct2017, chestxray14, nct-crc, or the folder name
    "layout": "string",  # the layout module that read it
    "label": "string",
    "labels": "list<string>",
    "group": "string",  # patient / lesion / slide id; the file's own id when none exists
    "split": "string",  # train | val | test
    "split_source": "string",  # official | derived
    "width": "int32",
    "height": "int32",
    "channels": "int8",
    "bit_depth": "int8",
    "format": "string",  # JPEG, PNG, TIFF, BMP, WEBP, DICOM
    "intensity": "string",  # how pixels became 8-bit (DICOM window policy, 16->8 scaling); "" for 8-bit
    "sha256": "string",
    "bytes": "int64",
    "mtime_ns": "int64",
    "status": "string",  # ok | rejected
    "reason": "string",  # why rejected; "" for ok rows
    "duplicate_of": "string",  # sample_id of the first file with the same sha256, or ""
    # 64-bit DCT perceptual hash of the decoded image (16 hex digits; "" when it could not be
    # computed): finds re-encoded or resized copies that sha256 misses (`midol contamination`).
    "phash": "string",
    # Per-image metadata the layout read (sex, age, view, site, ...), a JSON object of strings
    # ("{}" when none): the columns `probe --subgroups` reports on. Keys in MANIFEST_META_KEYS.
    "meta": "string",
}

# The metadata keys layouts fill in ``meta`` (a layout may add others; these are the common names).
MANIFEST_META_KEYS = ("sex", "age", "view", "site", "source", "localization", "fitzpatrick", "region",
                      "eye", "device")

# predictions.parquet (probe and finetune): one row per test image and protocol (and seed); ``probs``
# in the task's class order, which the file metadata records; ``group`` is the patient, so that
# paired bootstraps across models resample patients.
PREDICTION_COLUMNS = ("sample_id", "group", "split", "label", "protocol", "seed", "probs")


SUMMARY_SCHEMA = 1
SUMMARY_NAME = "summary.json"
PREDICTIONS_NAME = "predictions.parquet"
MODEL_KEYS = ("id", "weights", "weights_hash", "arch")
# Recorded when the model gives them: preprocessing, the weights load report, the released weights a
# midol run started from.
MODEL_EXTRA_KEYS = ("img_size", "pooling", "mean", "std", "load_report", "init")


def model_block(model_info: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` block of a summary.json."""
    return {**{k: model_info[k] for k in MODEL_KEYS}, **{k: model_info.get(k) for k in MODEL_EXTRA_KEYS}}


def prediction_table(classes, task_name: str, model_id: str, parts: list[tuple]):
    """``predictions.parquet``'s table from ``[(protocol, seed, sample_ids, groups, labels, probs [N, C]),
    ...]``:
    the one writer of the schema (probe suites and trained protocols alike)."""
    import numpy as np
    import pyarrow as pa

    cols: dict[str, list[Any]] = {k: [] for k in PREDICTION_COLUMNS}
    for protocol, seed, sids, groups, labels, probs in parts:
        n = len(sids)
        cols["sample_id"] += [str(x) for x in sids]
        cols["group"] += [str(x) for x in groups]
        cols["split"] += ["test"] * n
        cols["label"] += [str(x) for x in labels]
        cols["protocol"] += [protocol] * n
        cols["seed"] += [None if seed is None else int(seed)] * n
        cols["probs"] += list(np.asarray(probs, dtype=np.float32))
    schema = prediction_schema(classes, task_name, model_id)
    return pa.table({k: cols[k] for k in schema.names}, schema=schema)


def prediction_schema(classes, task_name: str, model_id: str):
    """The one Arrow schema of ``predictions.parquet`` (``PREDICTION_COLUMNS`` plus class metadata)."""
    import pyarrow as pa

    types = {"seed": pa.int32(), "probs": pa.list_(pa.float32())}
    meta = {"classes": [str(c) for c in classes], "task": task_name, "model": model_id}
    return pa.schema([(c, types.get(c, pa.string())) for c in PREDICTION_COLUMNS],
                     metadata={b"midol": json.dumps(meta)})


SHARD_META_KEYS = (
    "sample_id",
    "modality",
    "label",
    "labels",
    "group",
    "split",
    "dataset",
    "orig_width",
    "orig_height",
)

SPLITS = ("train", "val", "test")


def cache_root() -> Path:
    """Where midol caches what it can recompute: ``$MIDOL_CACHE_DIR``, else ``~/.cache/midol``.
    ``embeddings/`` holds embedding tables, ``manifests/`` the manifests of raw folders ingested for
    a task."""
    return Path(os.environ.get("MIDOL_CACHE_DIR", Path.home() / ".cache" / "midol"))


def index_count(entry: dict[str, Any], modalities: Any = None, split: str | None = None) -> int:
    """Samples of a shard set's index entry (one shard, or the totals) that pass the filters, from its
    joint ``counts`` ({modality: {split: n}}); an entry without them gives the marginal upper bound."""
    counts = entry.get("counts")
    if counts is None:
        n = int(entry.get("samples", 0))
        if modalities is not None:
            n = min(n, sum(int(v) for m, v in (entry.get("per_modality") or {}).items() if m in modalities))
        if split is not None:
            n = min(n, int((entry.get("per_split") or {}).get(split, 0)))
        return n
    return sum(int(v) for m, by_split in counts.items() if modalities is None or m in modalities
               for s, v in by_split.items() if split is None or s == split)


def index_modalities(index: dict[str, Any], split: str | None = None) -> list[str]:
    """Modalities with at least one sample (in ``split`` when given) in a shard set's ``index.json``."""
    totals = index.get("totals") or {}
    if totals.get("counts") is not None:
        return sorted(m for m in totals["counts"] if index_count(totals, {m}, split) > 0)
    found: set[str] = set()
    for shard in index.get("shards", []):
        found |= {m for m in (shard.get("per_modality") or {}) if index_count(shard, {m}, split) > 0}
    return sorted(found)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def stable_id(*parts: str, n: int = 16) -> str:
    return hashlib.sha1("/".join(parts).encode("utf-8")).hexdigest()[:n]


def new_temp_file(target: str | os.PathLike[str]) -> Path:
    """Create an empty, uniquely named temporary file beside ``target`` and return its path.

    Made with ``O_CREAT | O_EXCL`` and mode 0666, so the process umask applies as to any other file
    (0644 under umask 022): ``tempfile.mkstemp`` would make it 0600, and a file renamed into place keeps
    that mode. Every temp file midol renames over an output comes from here (``atomic_path``, shards).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside '{target}'")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    A reader never sees a half-written file: either the old one or the new one.
    On error the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    tmp_path = new_temp_file(target)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no NaN, and a reader that
    is not Python (jq, JavaScript, a browser) rejects a file that holds one."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return json_safe(obj.item())
    return obj


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text_atomic(target, text + "\n")


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced an artifact: version, command line, plus caller-specific fields."""
    rec: dict[str, Any] = {
        "midol_version": __version__,
        "command": " ".join(sys.argv),
    }
    rec.update(extra)
    return rec


def is_within(child: str | os.PathLike[str], parent: str | os.PathLike[str]) -> bool:
    """True when ``child`` resolves inside ``parent`` (used to refuse writes into raw data)."""
    try:
        Path(child).resolve().relative_to(Path(parent).resolve())
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- summary.json


def _require(obj: Any, dotted: str, path: Any) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            raise ValueError(f"{path}: missing field '{dotted}'")
        cur = cur[part]
    return cur


def validate_summary(summary: Any, path: Any = "summary") -> dict[str, Any]:
    """Check the fields ``report`` relies on; raises ``ValueError`` naming the first missing one."""
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a JSON object")
    schema = _require(summary, "schema", path)
    if schema != SUMMARY_SCHEMA:
        raise ValueError(f"{path}: schema {schema!r} is not the supported {SUMMARY_SCHEMA}")
    for key in ("model.id", "task.name", "task.modality", "task.label_type", "task.classes", "task.metric",
                "task.data_hash", "primary_metric", "n.train", "n.val", "n.test"):
        _require(summary, key, path)
    if not isinstance(summary["task"]["classes"], list):
        raise ValueError(f"{path}: field 'task.classes' is not a list")
    protocols = _require(summary, "protocols", path)
    if not isinstance(protocols, dict) or not protocols:
        raise ValueError(f"{path}: field 'protocols' holds no protocol")
    for pname, block in protocols.items():
        # Protocol names contain dots ("fraction_0.01"): look the block up directly.
        metrics = block.get("metrics") if isinstance(block, dict) else None
        if not isinstance(metrics, dict):
            raise ValueError(f"{path}: missing field 'protocols.{pname}.metrics'")
        for mname, entry in metrics.items():
            if not isinstance(entry, dict) or not ({"value", "mean"} & set(entry)):
                raise ValueError(f"{path}: missing field 'protocols.{pname}.metrics.{mname}.value'")
    return summary


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read and validate a ``summary.json``; ``ValueError`` (naming the file and field) if malformed."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return validate_summary(summary, path)


def add_protocol(path: str | Path, name: str, block: dict[str, Any]) -> dict[str, Any]:
    """Add or replace protocol ``name`` (e.g. "finetune") in an existing summary, atomically.

    ``block`` must hold ``{"metrics": {metric: {"value", "ci_low", "ci_high"}}}`` (``ci_block``
    builds one). Returns the updated summary.
    """
    summary = load_summary(path)
    summary["protocols"][name] = block
    validate_summary(summary, path)
    write_json_atomic(path, summary)
    return summary


# --------------------------------------------------------------------------- torch files, without code


class PickledCode(Exception):
    """A torch file whose pickle names a callable outside torch's safe set: loading it would run code."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


def load_torch_plain(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)``, the one reader of every .pt/.pth midol is handed (weights,
    checkpoints). When it fails, the file's pickle is read without running it (``pickletools``): one that
    names a callable outside torch's safe set raises ``PickledCode``; anything else (junk bytes, a
    truncated file) re-raises torch's error, for the caller to call the file damaged. torch's own message
    cannot tell these apart (it blames 'weights_only' for both)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        names = _foreign_globals(Path(path))
        if names:
            raise PickledCode(names) from None
        raise


def _pickle_streams(path: Path) -> Iterator[bytes]:
    """The pickle bytes of a torch file: ``*/data.pkl`` of the zip format, else the file's head (a bare
    pickle, or the legacy format's pickles, which come before its tensor data)."""
    import zipfile

    if zipfile.is_zipfile(path):
        with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".pkl"):
                    yield zf.read(name)
        return
    with open(path, "rb") as fh:
        yield fh.read(64 << 20)


def _foreign_globals(path: Path) -> list[str]:
    """The globals (``module.name``) a torch file's pickles import that torch's weights-only unpickler does
    not allow; [] for a file that is not a pickle at all."""
    import io
    import pickletools

    try:
        from torch import _weights_only_unpickler as wou
        from torch.serialization import get_safe_globals

        extra = {f"{g.__module__}.{g.__qualname__}" for g in get_safe_globals() if hasattr(g, "__qualname__")}
        allowed = set(wou._get_allowed_globals()) | extra
    except (ImportError, AttributeError):  # another torch: anything outside torch and collections is code
        allowed = set()
    found: list[str] = []
    for data in _pickle_streams(path):
        buf = io.BytesIO(data)
        while buf.tell() < len(data):  # the legacy format holds several pickles in a row
            try:
                found += _globals_of_one_pickle(buf, pickletools)
            except Exception:  # not (or no longer) a pickle: tensor bytes, junk
                break
    ok = ("torch.", "collections.OrderedDict")
    foreign = [n for n in dict.fromkeys(found) if n not in allowed and not (not allowed and n.startswith(ok))]
    return sorted(foreign, key=lambda n: n.startswith("torch."))  # the user's code first, torch's own last


def _globals_of_one_pickle(buf: Any, pickletools: Any) -> list[str]:
    names: list[str] = []
    strings: list[Any] = []  # values pushed, for STACK_GLOBAL's two operands (module, name)
    memo: dict[Any, Any] = {}
    for op, arg, _pos in pickletools.genops(buf):
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif isinstance(arg, str) and ("STRING" in op.name or "UNICODE" in op.name):
            strings.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = strings[-1] if strings else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
    return names

"""Embeddings: one row per image with the pooled feature and, for midol models, router probabilities.

Inputs are a manifest (images re-read from the raw folder) or a shard dir.
Output columns: sample_id, modality, label, labels, group, split, embedding
(float32 list, fixed size D), router_probs (float32 list over the model's
modalities, or None). Results are cached: the key hashes the weights, the
encoder spec, the data's identity (``data_identity``: content hash plus each
file's recorded sha256, size and mtime) and the midol version, so a probe never
re-runs the encoder on the same (model, data) pair, and never gets another
data set's embeddings. A result with damaged samples is not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from midol_cli import __version__
from midol_cli.errors import UsageError
from midol_cli.progress import Reporter, Silent

# Carried from the manifest or shard into every embeddings row; ``meta`` (per-image metadata JSON) and
# ``dataset`` are what `probe --subgroups` splits the test set by.
COLUMNS = ("sample_id", "modality", "label", "labels", "group", "split", "dataset", "meta")


def cache_dir() -> Path:
    """The embedding cache (``artifacts.cache_root() / "embeddings"``)."""
    from midol_cli.artifacts import cache_root

    return cache_root() / "embeddings"


def data_identity(data: str | Path) -> list[Any]:
    """What the embedding cache is keyed on besides the model: the content hash (``data_source``)
    plus the identity of every file read, so a shard set truncated, corrupted or replaced after the
    index was written, or a manifest rewritten in place, is never served another set's embeddings.

    Shards: for each shard in ``index.json``, its name, the sha256 the index records, and the file's
    size and modification time now. A manifest: its sha256, size and modification time, and a digest
    of the size and modification time of every raw file it lists (one ``stat`` each), since embedding
    re-reads the raw folder: a file edited, truncated or removed after ingest changes the key.
    """
    kind, dhash = data_source(data)
    urls = shard_urls(data)
    if urls is not None:  # each local shard's size and time; a pipe: command by its text
        return [kind, dhash, [[u, *_stat(u)] if not u.startswith("pipe:") else [u] for u in urls.urls]]
    p = Path(data)
    if kind == "manifest":
        st = p.stat()
        return [kind, dhash, st.st_size, st.st_mtime_ns, _raw_files_digest(p)]
    idx = json.loads((p / "index.json").read_text(encoding="utf-8"))
    files: list[Any] = []
    for sh in idx.get("shards") or []:
        f = p / str(sh.get("name", ""))
        try:
            st = f.stat()
            files.append([f.name, sh.get("sha256", ""), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([f.name, sh.get("sha256", ""), None, None])
    return [kind, dhash, files]


def _stat(path: str) -> list[int | None]:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def _raw_files_digest(manifest: Path) -> str:
    from midol_cli.data.manifest import read_manifest, usable_rows

    df, meta = read_manifest(manifest, only_ok=True)
    root = str(meta.get("root") or "")
    h = hashlib.sha256()
    for rel in usable_rows(df)["path"].astype(str):
        try:
            st = os.stat(os.path.join(root, rel))
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0-\n".encode())
    return h.hexdigest()[:24]


def changed_files(manifest: str | Path) -> list[str]:
    """The raw files a manifest lists whose size or modification time differs from what ingest recorded
    (a tile's or a frame's file counted once; an HDF5 container by its time only). A file that is gone
    is not here: embedding leaves its rows out and counts them."""
    from midol_cli.data.manifest import read_manifest, usable_rows
    from midol_cli.data.parts import parse_frame, parse_tile
    from midol_cli.data.readers import split_member

    df, meta = read_manifest(manifest, only_ok=True)
    root = str(meta.get("root") or "")
    seen: dict[str, tuple[int | None, int]] = {}
    for rel, size, mtime in usable_rows(df)[["path", "bytes", "mtime_ns"]].itertuples(index=False):
        rel = str(rel)
        part = parse_tile(rel) or parse_frame(rel) or split_member(rel)
        file = part[0] if part else rel
        if file not in seen:
            seen[file] = (None if split_member(rel) else int(size), int(mtime))
    changed = []
    for file, (size, mtime) in seen.items():
        try:
            st = os.stat(os.path.join(root, file))
        except OSError:
            continue
        if st.st_mtime_ns != mtime or (size is not None and st.st_size != size):
            changed.append(file)
    return changed


def shard_urls(data: str | Path) -> Any:
    """The ``data.urls.ShardSet`` of shard URLs as ``data.shards`` takes them (a brace list, ``file:``,
    ``pipe:``, ``::``-joined; its one-line errors for the forms midol does not read, such as s3://), or
    None for a path that exists or names no URL form (a manifest or a shard dir, read as such)."""
    import re

    text = os.fspath(data)
    url_like = "::" in text or "{" in text or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text)
    if Path(text).exists() or not url_like:
        return None
    from midol_cli.data.urls import resolve

    return resolve(text)


def data_source(data: str | Path) -> tuple[str, str]:
    """('manifest' | 'shards', content hash) for a manifest file, a shard dir or shard URLs."""
    from midol_cli.artifacts import sha256_file

    urls = shard_urls(data)
    if urls is not None:
        index = sha256_file(urls.index_path) if urls.index_path is not None else None
        return "shards", hashlib.sha256(json.dumps([urls.urls, index]).encode()).hexdigest()[:16]
    p = Path(data)
    if p.is_dir():
        if not (p / "index.json").is_file():
            raise UsageError(f"'{p}' is neither a manifest nor a shard dir (no index.json)")
        return "shards", sha256_file(p / "index.json")[:16]
    if p.is_file():
        return "manifest", sha256_file(p)[:16]
    raise UsageError(f"data '{p}' does not exist; pass a manifest (.parquet), a shard dir or shard URLs "
                     "(shard-{000000..000003}.tar, file:, pipe:CMD)")


class _ShardImages:
    """Iterable dataset over a shard dir; with several workers each reads its own shards.

    Row order then follows the workers' interleaving; every row carries its sample_id."""

    def __init__(self, shard_dir: str, transform) -> None:
        self.shard_dir, self.transform = shard_dir, transform

    def __iter__(self):
        from torch.utils.data import get_worker_info

        from midol_cli.data.loader import iter_samples

        w = get_worker_info()
        part = (w.id, w.num_workers) if w is not None else None  # each worker its own shards
        damaged: list[str] = []
        # A damaged sample comes through as an invalid row, so the main process totals it even when
        # the reading happens in worker processes.
        for img, meta in iter_samples(self.shard_dir, part=part, on_damage=damaged.append):
            yield from self._damaged(damaged)
            yield self.transform(img), {k: meta.get(k) for k in COLUMNS}, True
        yield from self._damaged(damaged)

    def _damaged(self, reasons: list[str]):
        import torch

        size = self.transform.crop.size[0]
        while reasons:
            why = reasons.pop()
            yield torch.zeros(3, size, size), {**dict.fromkeys(COLUMNS), "_reason": why}, False


def _rows(data: str | Path, kind: str, transform, batch_size: int, workers: int):
    """Yield (images [B,3,S,S] or None, their metadata rows, the samples skipped as unreadable as
    ``(path or shard sample, reason)``) per batch."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    if kind == "manifest":
        from midol_cli.data.manifest import read_manifest, usable_rows

        df, meta = read_manifest(data, only_ok=True)
        df = usable_rows(df)
        if df.empty:
            raise UsageError(f"manifest '{data}' has no usable images")
        root = meta.get("root")
        if not root or not Path(root).is_dir():
            raise UsageError(f"raw folder '{root}' recorded in manifest '{data}' is not reachable from here")
        from midol_cli.data.rows import LoadImage, RowDataset, collate_skip

        paths = df["path"].tolist()
        # Changed since ingest: the row is skipped and counted (collate_skip's "bad"), never a zero image.
        ds = RowDataset(range(len(paths)), LoadImage(root, paths, transform), paths.__getitem__)
        recs = df[list(COLUMNS)].to_dict("records")
        where = {str(r["path"]): (r["split"], r["modality"]) for r in df[["path", "split", "modality"]]
                 .to_dict("records")}
        loader = DataLoader(
            ds, batch_size=batch_size, num_workers=workers, shuffle=False, collate_fn=collate_skip
        )
        for b in loader:
            bad = [(p, why, *where.get(str(p), (None, None))) for p, why in b["bad"]]
            yield b["x"], [recs[int(i)] for i in b["idx"]], bad
    else:
        class _It(IterableDataset):
            def __iter__(self_inner):
                return iter(_ShardImages(str(data), transform))

        def collate(items):
            return (torch.stack([a for a, _, _ in items]), [m for _, m, _ in items],
                    torch.tensor([c for _, _, c in items]))

        loader = DataLoader(_It(), batch_size=batch_size, num_workers=workers, collate_fn=collate)
        for x, rows, ok in loader:
            keep = [i for i, v in enumerate(ok.tolist()) if v]
            bad = [_shard_damage(r) for r, v in zip(rows, ok.tolist(), strict=True) if not v]
            yield (x[keep] if keep else None), [rows[i] for i in keep], bad


def _shard_damage(row: dict[str, Any]) -> tuple[str, str, None, None]:
    """A damaged shard sample's ``(where, reason, split, modality)`` (the last two unknown) from the
    loader's message ``'skipped bad X (why)'``."""
    msg = str(row.get("_reason") or "damaged sample")
    where, _, why = msg.rpartition(" (")
    return (where, why.rstrip(")"), None, None) if where else ("shard sample", msg, None, None)


def dropped_summary(dropped: list[tuple], modality: str | None = None, examples: int = 3) -> dict[str, Any]:
    """``{"count", "reasons": {reason: n}, "by_split": {split: n}, "examples": [path, ...]}`` of the
    samples embedding left out (``(path, reason, split, modality)``; only ``modality``'s when given;
    a damaged shard sample's split and modality are unknown and always count)."""
    from collections import Counter

    rows = [d for d in dropped if modality is None or d[3] in (None, modality)]
    reasons = Counter(str(d[1]) for d in rows)
    splits = Counter(str(d[2] or "unknown") for d in rows)
    return {"count": len(rows), "reasons": dict(reasons.most_common()),
            "by_split": dict(sorted(splits.items())), "examples": [str(d[0]) for d in rows[:examples]]}


def dropped_line(dropped: dict[str, Any]) -> str:
    """One line naming how many samples were left out, why, and an example."""
    why = ", ".join(f"{n} {r}" for r, n in dropped["reasons"].items())
    eg = f"; e.g. {dropped['examples'][0]}" if dropped.get("examples") else ""
    return f"{dropped['count']} damaged or unreadable sample(s) left out ({why}){eg}"


def _device(device: str | None):
    """``--device``: cpu, cuda, cuda:N or mps; by default CUDA when there is a GPU. One-line errors."""
    import torch

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device '{device}' is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def embed(model, data: str | Path, batch_size: int = 64, workers: int = 2, device: str | None = None,
          use_cache: bool = True, reporter: Reporter | None = None):
    """Embed every usable image of ``data`` with ``model`` (an eval.models.EvalModel) -> DataFrame.
    ``reporter`` shows the images embedded so far (a bar on a terminal): hours on real data."""
    import numpy as np
    import pandas as pd
    import torch

    from midol_cli.data.transforms import EvalTransform

    data = data if shard_urls(data) is not None else Path(data)  # URLs kept as text (pipe: commands)
    kind, dhash = data_source(data)
    cal = getattr(model, "calibration", None)
    cached = cache_dir() / f"{_cache_key(model, data, cal)}.parquet"
    if use_cache and cached.is_file():
        try:
            df = pd.read_parquet(cached)
            df.attrs["data_hash"], df.attrs["cache"], df.attrs["skipped"] = dhash, "hit", 0
            df.attrs["dropped"], df.attrs["dropped_rows"] = dropped_summary([]), []
            return df
        except Exception:  # a damaged cache entry is simply recomputed
            pass

    dev = _device(device)
    enc = model.encoder.to(dev).eval()
    # A one-expert projector (the no_moe ablation) has nothing to route between: no router output.
    proj = model.projector
    proj = proj.to(dev).eval() if proj is not None and proj.n_experts > 1 else None
    transform = EvalTransform(model.spec.img_size, model.spec.mean, model.spec.std)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    metas, embs, routes, logits_all = [], [], [], []
    dropped: list[tuple] = []
    reporter = reporter or Silent()
    done = 0
    reporter.start("embedding", _expected(data, kind), 0)
    try:
        with torch.inference_mode():
            for x, rows, bad in _rows(data, kind, transform, batch_size, workers):
                dropped += bad
                if x is None:
                    continue
                x = x.to(dev, non_blocking=True)
                if amp is not None:
                    with amp:
                        h = enc(x)
                else:
                    h = enc(x)
                h = h.float()
                lg = proj(h).router_logits.float() if proj is not None else None
                r = torch.softmax(lg, -1) if lg is not None else None
                metas.extend(rows)
                embs.append(h.cpu().numpy().astype(np.float32))
                if r is not None:
                    routes.append(r.cpu().numpy().astype(np.float32))
                    logits_all.append(lg.cpu().numpy())
                done += len(rows) + len(bad)
                reporter.advance(done)
    finally:
        reporter.stop()
    if not metas:
        raise UsageError(f"no image of '{data}' could be embedded")
    df = _table(metas, embs, routes, logits_all, cal)
    df.attrs["data_hash"], df.attrs["cache"], df.attrs["skipped"] = dhash, "miss", len(dropped)
    df.attrs["dropped"], df.attrs["dropped_rows"] = dropped_summary(dropped), dropped
    # A result with damaged samples is not cached: the next run reads the data again and reports the
    # damage again, instead of quietly serving a table that lacks those images.
    if use_cache and not dropped:
        from midol_cli.artifacts import atomic_path

        with atomic_path(cached) as tmp:
            df.to_parquet(tmp, index=False)
    return df


def _table(metas: list[dict], embs: list, routes: list, logits_all: list, cal):  # noqa: ANN001
    """The embeddings table from the batches: metadata rows, ``embedding`` [D] and, with a router,
    ``router_probs`` [E] (calibrated, with confidence, OOD score and routed modality, where a
    calibration exists)."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(metas)
    df["labels"] = df["labels"].apply(lambda v: [] if v is None else list(v))
    df["dataset"] = df["dataset"].fillna("").astype(str)
    df["meta"] = df["meta"].fillna("{}").astype(str)
    e = np.concatenate(embs)
    df["embedding"] = list(e)
    df["router_probs"] = list(np.concatenate(routes)) if routes else None
    if routes and cal is not None:
        # Calibrated routing: probabilities at the fitted temperature, and "unknown" beyond the
        # out-of-distribution threshold (eval/routing.py).
        routed = cal.apply(e, np.concatenate(logits_all))
        df["router_probs"] = list(routed["probs"].astype(np.float32))
        df["router_confidence"] = routed["confidence"].astype(np.float32)
        df["ood_score"] = routed["ood_score"].astype(np.float32)
        df["routed_modality"] = routed["routed"]
    return df


def _cache_key(model, data: str | Path, cal) -> str:  # noqa: ANN001
    """The embedding cache's key: the weights, the encoder spec, the data, midol's version, the routing
    calibration and the table's columns."""
    cal_key = [cal.temperature, cal.threshold] if cal is not None else None
    ident = [model.weights_hash, model.spec.to_dict(), data_identity(data), __version__, cal_key, COLUMNS]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _expected(data: str | Path, kind: str) -> int | None:
    """How many samples ``data`` holds (the bar's total), or None where that is not cheap to know."""
    try:
        urls = shard_urls(data)
        if urls is not None:  # the named shards' counts where an index lists them
            return sum(int(r["samples"]) for r in urls.records) if urls.index is not None else None
        if kind == "shards":
            return int(json.loads((data / "index.json").read_text(encoding="utf-8"))["totals"]["samples"])
        from midol_cli.data.manifest import read_manifest, usable_rows

        return len(usable_rows(read_manifest(data, only_ok=True)[0]))
    except Exception:  # only the bar's length: an unknown total draws an indeterminate bar
        return None


def write_embeddings(df, out: str | Path, model_info: dict[str, Any], modalities: list[str] | None) -> None:
    """Write the embeddings table atomically with provenance in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from midol_cli.artifacts import atomic_path, provenance

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = provenance(
        model=model_info, data_hash=df.attrs.get("data_hash"), router_modalities=modalities or []
    )
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"midol": json.dumps(meta).encode()}
    )
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)

"""Contamination check: test images that also appear in the pre-training data.

Pre-training sources are shard dirs or shard URLs in every form ``data.shards`` takes (``midol
shard``: their samples are looked up in the input manifests that ``index.json`` records) or manifests.
Each test image (rows of the wanted splits, status ok) is matched two ways:

* exact: the same file bytes (sha256, recorded at ingest);
* near: a perceptual hash (``data.phash``) within ``radius`` bits of a pre-training image's, for
  re-encoded, resized or lightly retouched copies that sha256 misses.

Rows without a perceptual hash (manifests written before it existed) are matched by sha256 only and
counted. Every test image with an overlap gives one pair: its closest pre-training copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

DEFAULT_RADIUS = 4
PAIR_COLUMNS = ("test_manifest", "test_path", "pretrain_path", "kind", "distance", "matches")


@dataclass
class Pair:
    test_path: str
    pretrain_path: str
    kind: str  # exact | near
    distance: int  # pHash bits (0 for exact copies)
    matches: int  # pre-training images at this distance or closer (exact: identical copies)


@dataclass
class ManifestReport:
    manifest: str
    checked: int = 0
    exact: int = 0
    near: int = 0
    no_phash: int = 0
    pairs: list[Pair] = field(default_factory=list)

    @property
    def overlaps(self) -> int:
        return self.exact + self.near


@dataclass
class ContaminationResult:
    sources: list[str]
    radius: int
    splits: list[str]
    pretrain_images: int
    pretrain_no_phash: int
    pretrain_unchecked: int  # shard samples whose manifest is gone (not decoded)
    reports: list[ManifestReport]

    @property
    def overlaps(self) -> int:
        return sum(r.overlaps for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for rep, d in zip(self.reports, out["reports"], strict=True):
            d["overlaps"] = rep.overlaps
        out["overlaps"] = self.overlaps
        out["checked"] = sum(r.checked for r in self.reports)
        return out


# ------------------------------------------------------------------ reading sources


@dataclass
class _Rows:
    """Images of one or more sources: display path, sha256, phash, split, modality (parallel lists)."""

    paths: list[str] = field(default_factory=list)
    sha: list[str] = field(default_factory=list)
    phash: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    modality: list[str] = field(default_factory=list)
    unchecked: int = 0

    def add(self, path: str, sha: Any, phash: Any, split: Any, modality: Any) -> None:
        for name, value in zip(_FIELDS, (path, sha, phash, split, modality), strict=True):
            getattr(self, name).append(str(value or ""))

    def extend(self, other: _Rows) -> None:
        for name in _FIELDS:
            getattr(self, name).extend(getattr(other, name))
        self.unchecked += other.unchecked

    def subset(self, keep: list[int]) -> _Rows:
        return _Rows(*([getattr(self, f)[i] for i in keep] for f in _FIELDS))


_FIELDS = ("paths", "sha", "phash", "split", "modality")


def _from_frame(df, root: str) -> _Rows:
    base = Path(root) if root else None
    rows = _Rows()
    cols = (df[c] for c in ("path", "sha256", "phash", "split", "modality"))
    for p, sha, ph, sp, mod in zip(*cols, strict=True):
        rows.add(str(base / str(p)) if base else str(p), sha, ph, sp, mod)
    return rows


def _manifest_rows(path: Path) -> _Rows:
    from midol_cli.data.manifest import read_manifest

    df, meta = read_manifest(path, only_ok=True)
    return _from_frame(df, str(meta.get("root") or ""))


def _unreadable(url: str, spec: str, e: Exception) -> UsageError:
    from midol_cli.data.urls import display_name

    return UsageError(f"cannot read shard '{display_name(url)}' of '{spec}' ({type(e).__name__}); "
                      f"check it with `midol shard --verify {spec}`")


def _shard_keys(shards: Any, spec: str) -> set[str]:
    """The sample_ids a shard set stores: from a shard folder's plan when it is this index's, else the
    tars (only the URLs given: a brace list may name part of a set)."""
    from midol_cli.data.shard_format import PLAN_NAME, _read_json
    from midol_cli.data.shard_plan import plan_hash

    index = shards.index
    plan = _read_json(shards.folder / PLAN_NAME) if shards.folder is not None else None
    if (
        isinstance(plan, dict)
        and isinstance(plan.get("order"), list)
        and plan_hash(plan) == index.get("plan_hash")
    ):
        skipped = {str(s.get("sample_id")) for s in index.get("skipped", {}).get("items", [])}
        return {str(k) for k in plan["order"]} - skipped
    return _tar_keys(shards.urls, spec)


def _tar_keys(urls: list[str], spec: str) -> set[str]:
    """Sample keys of every shard: a local tar's headers only (member data is skipped); a ``pipe:``
    stream is read through."""
    import tarfile

    from midol_cli.data.shard_format import _iter_tar_members, split_member_name
    from midol_cli.data.urls import is_pipe, iter_url_samples

    keys: set[str] = set()
    for url in urls:
        try:
            if is_pipe(url):
                keys.update(s["__key__"] for s in iter_url_samples(url) if "json" in s)
                continue
            with open(url, "rb") as fh:
                for name, _regular, _size, blocks in _iter_tar_members(fh):
                    parts = split_member_name(name)
                    if parts is not None and parts[1] == "json":
                        keys.add(parts[0])
                    fh.seek(blocks, os.SEEK_CUR)
        except (OSError, tarfile.TarError) as e:
            raise _unreadable(url, spec, e) from None
    return keys


def _decoded_shard_rows(urls: list[str], keys: set[str], spec: str) -> _Rows:
    """Rows for shard samples without a manifest: pHash of the stored (resized) image, no sha256."""
    import tarfile

    from midol_cli.data.phash import phash
    from midol_cli.data.shard_format import decode_image, sample_image
    from midol_cli.data.urls import display_name, is_pipe, iter_url_samples

    rows = _Rows()
    for url in urls:
        name = display_name(url) if is_pipe(url) else url
        try:
            for sample in iter_url_samples(url):
                key, img = sample["__key__"], sample_image(sample)
                if key not in keys or img is None:
                    continue
                try:
                    meta = json.loads(sample.get("json", b"{}"))
                    ph = phash(decode_image(img[1], img[0]))
                except (ValueError, OSError):
                    continue  # a damaged member: `midol shard --verify` reports it
                meta = meta if isinstance(meta, dict) else {}
                rows.add(f"{name}#{key}", "", ph, meta.get("split"), meta.get("modality"))
        except (OSError, tarfile.TarError) as e:
            raise _unreadable(url, spec, e) from None
    return rows


def _shard_rows(shards: Any, spec: str, decode_missing: bool, log: Callable[[str], None]) -> _Rows:
    """The rows of a ``data.urls.ShardSet``: its samples looked up in the input manifests its index
    records (when it has one), the rest decoded (pHash only) or counted as unchecked."""
    from midol_cli.data.manifest import read_manifest

    keys = _shard_keys(shards, spec)
    rows = _Rows()
    found: set[str] = set()
    for inp in (shards.index or {}).get("inputs", []):
        path = Path(str(inp.get("path", "")))
        if not path.is_file():
            log(f"contamination: input manifest '{path}' of shard set '{spec}' is gone")
            continue
        df, meta = read_manifest(path, only_ok=True)
        df = df[df["sample_id"].astype(str).isin(keys)]
        found.update(df["sample_id"].astype(str))
        rows.extend(_from_frame(df, str(meta.get("root") or inp.get("root") or "")))
    missing = keys - found
    if missing and decode_missing:
        log(f"contamination: hashing {len(missing)} shard images that no manifest lists (pHash only)")
        rows.extend(_decoded_shard_rows(shards.urls, missing, spec))
    elif missing:
        rows.unchecked += len(missing)
    return rows


def _url_like(text: str) -> bool:
    """Shard URLs as ``data.shards`` takes them (a brace list, ``::``, ``file:``, ``pipe:``, a scheme)."""
    import re

    return "::" in text or "{" in text or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", text))


def load_source(
    path: str | os.PathLike[str], *, decode_missing: bool = True, log: Callable[[str], None] | None = None
) -> _Rows:
    """The ok images of a manifest file, a shard dir (with ``index.json``) or shard URLs in any form
    ``data.shards`` takes (``data.urls.resolve``: its one-line errors for s3://, gs://, https://);
    UsageError otherwise."""
    from midol_cli.data.urls import resolve

    text = os.fspath(path)
    p = Path(text)
    log = log or (lambda _m: None)
    if p.is_dir():
        if not (p / "index.json").is_file():
            raise UsageError(f"'{p}' is neither a shard dir (no index.json) nor a manifest file")
        return _shard_rows(resolve(text), text, decode_missing, log)
    if p.is_file():
        return _manifest_rows(p)
    if _url_like(text):
        return _shard_rows(resolve(text), text, decode_missing, log)
    raise UsageError(
        f"'{p}' does not exist; give shard dirs (from `midol shard`), shard URLs "
        "(shard-{000000..000003}.tar, file:, pipe:CMD) or manifests (`midol ingest`)"
    )


# ------------------------------------------------------------------ matching


@dataclass
class _Index:
    """The pre-training images, indexed once: sha256 -> rows, and the valid pHashes as uint64."""

    rows: _Rows
    by_sha: dict[str, list[int]]
    hashed: list[int]  # rows with a valid pHash
    hashes: Any  # their pHashes, np.uint64

    @classmethod
    def build(cls, rows: _Rows) -> _Index:
        from midol_cli.data.phash import is_valid, to_uint64

        by_sha: dict[str, list[int]] = {}
        for j, sha in enumerate(rows.sha):
            if sha:
                by_sha.setdefault(sha, []).append(j)
        hashed = [j for j, h in enumerate(rows.phash) if is_valid(h)]
        return cls(rows, by_sha, hashed, to_uint64([rows.phash[j] for j in hashed]))


def _match(test: _Rows, pre: _Index, radius: int, name: str) -> ManifestReport:
    import numpy as np

    from midol_cli.data.phash import is_valid, nearest, to_uint64

    rep = ManifestReport(manifest=name, checked=len(test.paths))
    pending: list[int] = []
    for i, sha in enumerate(test.sha):
        copies = pre.by_sha.get(sha) if sha else None
        if copies:
            rep.exact += 1
            rep.pairs.append(Pair(test.paths[i], pre.rows.paths[copies[0]], "exact", 0, len(copies)))
        elif is_valid(test.phash[i]):
            pending.append(i)
        else:
            rep.no_phash += 1
    if pending and pre.hashed:
        best, dist, count = nearest(to_uint64([test.phash[i] for i in pending]), pre.hashes, radius)
        for k in np.nonzero(best >= 0)[0]:
            j = pre.hashed[best[k]]
            rep.near += 1
            rep.pairs.append(
                Pair(test.paths[pending[k]], pre.rows.paths[j], "near", int(dist[k]), int(count[k]))
            )
    rep.pairs.sort(key=lambda p: p.test_path)
    return rep


def check_contamination(
    sources: Sequence[str | os.PathLike[str]],
    tests: Sequence[str | os.PathLike[str]],
    *,
    radius: int = DEFAULT_RADIUS,
    splits: Sequence[str] = ("test",),
    modality: str | None = None,
    decode_missing: bool = True,
    log: Callable[[str], None] | None = None,
    source_splits: Sequence[str] | None = None,
) -> ContaminationResult:
    """Match the ``splits`` rows (of ``modality`` when given) of each test manifest or shard dir
    against all ``sources`` (only their ``source_splits`` rows when given: a pre-training run that
    read ``data.split: train`` of a shard set never saw its test rows)."""
    if not sources:
        raise UsageError("give at least one pre-training source (a shard dir or a manifest)")
    if not tests:
        raise UsageError("give at least one test manifest with --against")
    if not 0 <= radius <= 32:
        raise UsageError(f"--radius must be between 0 and 32 bits of 64 (got {radius})")
    from midol_cli.artifacts import SPLITS

    wanted = {s.strip() for s in splits if s.strip()}
    if not wanted or not wanted <= set(SPLITS):
        raise UsageError(f"--splits '{','.join(splits)}' must name splits among {', '.join(SPLITS)}")
    test_rows = [(str(t), load_source(t, decode_missing=decode_missing, log=log)) for t in tests]
    pre = _Rows()
    for s in sources:
        pre.extend(load_source(s, decode_missing=decode_missing, log=log))
    if source_splits is not None:
        seen = {x.strip() for x in source_splits if x.strip()}
        if not seen <= set(SPLITS):
            raise UsageError(f"--source-splits '{','.join(source_splits)}' must name splits among "
                             f"{', '.join(SPLITS)}")
        unchecked = pre.unchecked
        pre = pre.subset([j for j, sp in enumerate(pre.split) if sp in seen])
        pre.unchecked = unchecked
    index = _Index.build(pre)
    reports = []
    for name, rows in test_rows:
        keep = [
            i
            for i, (sp, mod) in enumerate(zip(rows.split, rows.modality, strict=True))
            if sp in wanted and modality in (None, mod)
        ]
        reports.append(_match(rows.subset(keep), index, radius, name))
    return ContaminationResult(
        sources=[str(s) for s in sources],
        radius=radius,
        splits=sorted(wanted),
        pretrain_images=len(pre.paths),
        pretrain_no_phash=len(pre.paths) - len(index.hashed),
        pretrain_unchecked=pre.unchecked,
        reports=reports,
    )


# ------------------------------------------------------------------ output


def write_pairs_csv(res: ContaminationResult, path: str | os.PathLike[str]) -> None:
    """Every pair as CSV (``PAIR_COLUMNS``), written atomically."""
    import csv

    from midol_cli.artifacts import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(PAIR_COLUMNS)
        for rep in res.reports:
            for p in rep.pairs:
                w.writerow([rep.manifest, p.test_path, p.pretrain_path, p.kind, p.distance, p.matches])


# ------------------------------------------------------------------ the probe's warning


def run_json_of(weights: str | os.PathLike[str]) -> Path | None:
    """The ``run.json`` of a midol run given as ``--weights`` (run dir, its export, or run.json)."""
    from midol_cli.eval.models import parse_weights

    ref = parse_weights(str(weights))  # the one reader of the --weights grammar
    if ref.kind != "midol":
        return None
    p = Path(ref.target)
    if p.is_file() and p.name == "run.json":
        return p
    for cand in (p, p.parent, p.parent.parent) if p.is_file() else (p,):
        if (cand / "run.json").is_file():
            return cand / "run.json"
    return None


def _run_split(run_dir: Path) -> str | None:
    """The split pre-training read (the run's ``recipe.yaml`` ``data.split``); None: every split, or
    unknown."""
    from midol_cli.recipes import load_yaml

    try:
        rec = load_yaml(run_dir / "recipe.yaml")
        split = (rec.get("data") or {}).get("split")
    except (UsageError, ValueError, AttributeError):
        return None
    return str(split) if split else None


def warn_if_contaminated(
    weights: str | os.PathLike[str],
    test_data: str | os.PathLike[str],
    name: str,
    log: Callable[[str], None],
    modality: str | None = None,
) -> ManifestReport | None:
    """Log one warning line when test images of ``test_data`` appear in the shards the run behind
    ``weights`` was pre-trained on (exact sha256 or pHash within 4 bits). Never raises; silent when
    the weights are not a midol run or its shard dir is gone. Returns the report when it ran."""
    try:
        run_json = run_json_of(weights)
        if run_json is None:
            return None
        shards = json.loads(run_json.read_text(encoding="utf-8")).get("shards")
        if not shards or not (Path(shards) / "index.json").is_file():
            return None
        split = _run_split(run_json.parent)
        res = check_contamination([shards], [test_data], modality=modality, decode_missing=False,
                                  source_splits=None if split is None else [split])
    except Exception as e:  # the check is advisory: a probe never fails because of it
        from midol_cli.errors import MidolError

        why = " ".join(str(e).split()) if isinstance(e, MidolError) else type(e).__name__
        log(f"probe: contamination check skipped ({why})")
        return None
    rep = res.reports[0]
    if rep.overlaps:
        log(
            f"probe: WARNING {rep.overlaps} of {rep.checked} test images of {name} also appear in the "
            f"pre-training shards ({rep.exact} exact, {rep.near} near); see midol contamination"
        )
    return rep

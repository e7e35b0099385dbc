"""Build synthetic raw data -> manifests -> shards for tests (cached per pytest session by callers)."""

from __future__ import annotations

from pathlib import Path

MODALITIES = ("xray", "fundus", "oct", "dermoscopy", "pathology")


def build_pipeline(root: Path, per_class: int = 6, size: int = 64, max_side: int = 64, seed: int = 0,
                   modalities=MODALITIES, min_shards: int = 4, corrupt: int = 0) -> dict[str, Path]:
    """synth -> ingest each modality -> shards. Returns paths: raw, manifests dir, shards.

    ``corrupt`` damaged files per modality, as ``midol synth --corrupt`` writes (ingest rejects them)."""
    from midol_cli.data.ingest import ingest_folder
    from midol_cli.data.shards import ShardParams, write_shards
    from midol_cli.data.synth import generate

    raw, man, shards = root / "raw", root / "manifests", root / "shards"
    generate(raw, seed=seed, per_class=per_class, size=size, modalities=list(modalities), corrupt=corrupt)
    mans = []
    for m in modalities:
        out = man / f"{m}.parquet"
        ingest_folder(raw / m, m, out=out, workers=1, seed=seed)
        mans.append(out)
    write_shards(mans, shards, ShardParams(max_side=max_side, seed=seed, min_shards=min_shards), workers=1)
    return {"raw": raw, "manifests": man, "shards": shards}


def zero_first_image(tar: Path) -> None:
    """Replace the bytes of the first image member of a shard with zeros: same name, same size,
    undecodable (damage that index.json's sizes cannot see)."""
    import io
    import tarfile

    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        done = False
        for m, blob in members:
            if blob is not None and not done and not m.name.endswith(".json"):
                blob, done = b"\x00" * len(blob), True
            tf.addfile(m, io.BytesIO(blob) if blob is not None else None)
    tar.write_bytes(out.getvalue())

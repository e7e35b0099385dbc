"""artifacts: counting a shard index (known answers), which pre-training's modality check relies on."""

from midol_cli.artifacts import index_count, index_modalities

INDEX = {
    "shards": [
        {"samples": 5, "per_modality": {"xray": 3, "oct": 2}, "per_split": {"train": 4, "val": 1},
         "counts": {"xray": {"train": 3}, "oct": {"train": 1, "val": 1}}},
        {"samples": 2, "per_modality": {"xray": 2}, "per_split": {"val": 2}, "counts": {"xray": {"val": 2}}},
    ],
    "totals": {"samples": 7, "counts": {"xray": {"train": 3, "val": 2}, "oct": {"train": 1, "val": 1}}},
}


def test_counts_by_modality_and_split():
    t = INDEX["totals"]
    assert index_count(t) == 7
    assert index_count(t, {"xray"}) == 5 and index_count(t, {"xray"}, "val") == 2
    assert index_count(t, None, "test") == 0
    assert index_count(INDEX["shards"][0], {"oct"}, "val") == 1


def test_modalities_present_in_a_split_use_the_joint_counts():
    assert index_modalities(INDEX) == ["oct", "xray"]
    assert index_modalities(INDEX, "val") == ["oct", "xray"]
    only_train = {"shards": INDEX["shards"][:1], "totals": {"counts": INDEX["shards"][0]["counts"]}}
    # the first shard has val samples (of oct only): xray must not count as present in val
    assert index_modalities(only_train, "val") == ["oct"]
    assert index_modalities({"shards": INDEX["shards"][:1]}, "val") == ["oct"]  # from the shards, no totals


def test_an_entry_without_joint_counts_gives_the_marginal_bound():
    e = {"samples": 5, "per_modality": {"xray": 3, "oct": 2}, "per_split": {"train": 4, "val": 1}}
    assert index_count(e, {"xray"}, "val") == 1 and index_count(e, {"oct"}) == 2


def test_atomic_writes_respect_the_umask(tmp_path):
    """A finished file has the mode any other new file gets (0644 under umask 022, 0640 under 027), not
    mkstemp's 0600 (issue 25.9); the temporary file is created with that mode from the start."""
    import os

    from midol_cli.artifacts import atomic_path, new_temp_file, write_json_atomic

    for mask, mode in ((0o022, 0o644), (0o027, 0o640)):
        old = os.umask(mask)
        try:
            write_json_atomic(tmp_path / f"a{mask}.json", {"x": 1})
            tmp = new_temp_file(tmp_path / "b.bin")
            with atomic_path(tmp_path / f"c{mask}.bin") as p:
                p.write_bytes(b"x")
        finally:
            os.umask(old)
        assert (tmp_path / f"a{mask}.json").stat().st_mode & 0o777 == mode
        assert (tmp_path / f"c{mask}.bin").stat().st_mode & 0o777 == mode
        assert tmp.stat().st_mode & 0o777 == mode
        assert tmp.name.startswith(".b.bin.") and tmp.name.endswith(".tmp")
        tmp.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a18.json", "a23.json", "c18.bin", "c23.bin"]

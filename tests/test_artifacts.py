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

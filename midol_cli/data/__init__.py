"""Data plane: readers, dataset layouts, manifests, shards, loaders, transforms, synthetic data."""

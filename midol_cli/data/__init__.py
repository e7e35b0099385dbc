"""Data plane: readers, dataset layouts, manifests, shards, loaders, transforms, synthetic data."""

# ImageNet normalisation, timm's default: the encoder spec's default and the transforms' (kept here,
# light and at the bottom, so models/ and data/ share it without data/ importing models/).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

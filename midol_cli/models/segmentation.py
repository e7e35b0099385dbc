"""Semantic segmentation: any timm ``features_only`` backbone + a light FPN decoder (fine-tuning), or a
frozen backbone + a 1x1 conv on its last feature map (``DenseProbeModel``, the dense probe).

Decoder (Lin et al., "Feature Pyramid Networks", CVPR 2017; the fusion follows the
"panoptic FPN" semantic branch of Kirillov et al., CVPR 2019): a 1x1 lateral conv brings every
level to ``decoder_dim`` channels, a top-down pass adds each coarser level (upsampled) to the
next finer one, a 3x3 conv smooths each level, all levels are upsampled to the finest one and
fused by concatenation + 1x1 conv, a 1x1 head gives class logits, and a bilinear upsample
returns them at the input size. GroupNorm (not BatchNorm) keeps the decoder independent of the
per-GPU batch size, so DDP needs no SyncBN.

Backbone weights come from a headless encoder (the three ``--weights`` forms of
``eval.models.load_eval_model``): ``features_only`` modules rename some keys (timm's
``FeatureListNet`` flattens ``layers.0`` to ``layers_0``; ``FeatureGetterNet`` wraps the model
as ``model.``), so keys are matched on a canonical spelling plus shape.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from midol_cli.errors import UsageError
from midol_cli.models.weights import LoadReport

# Buffers timm rebuilds from the config; never "missing" when absent from a file.
_REBUILT = ("relative_position_index", "attn_mask")
_HEAD_PREFIXES = ("head", "fc", "classifier")


def feature_format(encoder: nn.Module) -> str:
    """"NHWC" or "NCHW": the layout of ``encoder``'s feature maps (timm records it as ``output_fmt``)."""
    fmt = getattr(encoder, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper()


def _groups(channels: int) -> int:
    g = 32
    while channels % g:
        g //= 2
    return g


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
        )


class SegmentationModel(nn.Module):
    """Encoder (timm ``features_only``) + FPN decoder. ``forward``: ``[B, 3, H, W]`` -> logits ``[B, C, H,
    W]``.

    Levels with stride >= 4 are used when the backbone has any (a ResNet's stride-2 stem map
    costs much and adds little); ViT-style backbones with one stride use all their maps.
    """

    def __init__(self, encoder_features: nn.Module, decoder_dim: int, n_classes: int = 2) -> None:
        super().__init__()
        info = getattr(encoder_features, "feature_info", None)
        if info is None:
            raise UsageError("the encoder has no feature_info; build it with timm features_only=True")
        channels = list(info.channels())
        reductions = list(info.reduction())
        keep = [i for i, r in enumerate(reductions) if r >= 4] or list(range(len(channels)))
        self.encoder = encoder_features
        self.levels = keep
        self.nhwc = feature_format(encoder_features) == "NHWC"
        self.decoder_dim = int(decoder_dim)
        self.n_classes = int(n_classes)
        d = self.decoder_dim
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], d, 1) for i in keep)
        self.smooth = nn.ModuleList(_ConvNormAct(d, d, 3) for _ in keep)
        self.fuse = _ConvNormAct(d * len(keep), d, 1)
        self.head = nn.Conv2d(d, n_classes, 1)

    def decoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters outside the encoder (full learning rate under layer decay)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = self.encoder(x)
        maps = [feats[i].permute(0, 3, 1, 2) if self.nhwc else feats[i] for i in self.levels]
        lat = [conv(f) for conv, f in zip(self.lateral, maps, strict=True)]
        # Top-down: coarse semantics flow into the finer maps.
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        outs = [sm(t) for sm, t in zip(self.smooth, lat, strict=True)]
        finest = max((o.shape[-2:] for o in outs), key=lambda s: s[0] * s[1])
        up = [
            o
            if o.shape[-2:] == finest
            else F.interpolate(o, size=finest, mode="bilinear", align_corners=False)
            for o in outs
        ]
        logits = self.head(self.fuse(torch.cat(up, dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DenseProbeModel(nn.Module):
    """A frozen encoder (timm ``features_only``) + one 1x1 conv on its last feature map, upsampled
    bilinearly to the input: the frozen-backbone dense probe. ``forward``: ``[B, 3, H, W]`` -> logits
    ``[B, C, H, W]``.

    The head is eva's ``ConvDecoder1x1`` (kaiko.ai, "eva: Evaluation framework for pathology foundation
    models", MIDL 2024; ``eva.vision.models.networks.decoders.segmentation``), the linear segmentation
    probe of DINOv2 (Oquab et al., 2023, sec. 7.4) without its BatchNorm: each location's class
    logits are a linear function of that location's frozen feature, so the score measures what the
    features already hold. As ``models.heads.Classifier(freeze_encoder=True)``: encoder parameters get
    ``requires_grad=False``, the encoder stays in eval mode (drop-path, dropout and BatchNorm statistics
    frozen) when the module trains, and runs without autograd.
    """

    def __init__(self, encoder_features: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        info = getattr(encoder_features, "feature_info", None)
        if info is None:
            raise UsageError("the encoder has no feature_info; build it with timm features_only=True")
        self.encoder = encoder_features
        self.nhwc = feature_format(encoder_features) == "NHWC"
        self.n_classes = int(n_classes)
        self.head = nn.Conv2d(int(list(info.channels())[-1]), self.n_classes, 1)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> DenseProbeModel:
        super().train(mode)
        self.encoder.eval()
        return self

    def decoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters outside the encoder: the 1x1 conv, the only ones that train."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            last = self.encoder(x)[-1]
        fmap = last.permute(0, 3, 1, 2) if self.nhwc else last
        logits = self.head(fmap)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- weights


def _canon(key: str) -> str:
    """Spelling-independent key: ``layers_0.blocks`` and ``layers.0.blocks`` both -> ``layers.0.blocks``."""
    return re.sub(r"_(\d+)(?=\.|$)", r".\1", key)


def map_encoder_keys(
    features_shapes: dict[str, tuple[int, ...]], source_shapes: dict[str, tuple[int, ...]]
) -> dict[str, str]:
    """Features-model key -> source (headless / file) key, matched on canonical name and shape.

    A ``FeatureGetterNet``'s ``model.`` prefix (present on every key) is ignored. Each source
    key is used at most once.
    """
    strip = bool(features_shapes) and all(k.startswith("model.") for k in features_shapes)
    by_canon: dict[str, list[str]] = {}
    for k in source_shapes:
        by_canon.setdefault(_canon(k), []).append(k)
    out: dict[str, str] = {}
    used: set[str] = set()
    for k, shape in features_shapes.items():
        c = _canon(k[len("model.") :] if strip else k)
        for s in by_canon.get(c, []):
            if s not in used and tuple(source_shapes[s]) == tuple(shape):
                out[k] = s
                used.add(s)
                break
    return out


def load_encoder_weights(encoder_features: nn.Module, state_dict: dict[str, Any], source: str) -> LoadReport:
    """Copy a plain (headless) timm state dict into a ``features_only`` module; report what did not fit.

    ``missing``: features-model tensors left at their initial values; ``unexpected``: source tensors
    not used (e.g. the final norm a features model drops). Raises ``UsageError`` when fewer than half
    the features model's tensors fit (the wrong architecture).
    """
    own = encoder_features.state_dict()
    head = [k for k in state_dict if k.split(".")[0] in _HEAD_PREFIXES]
    src = {k: v for k, v in state_dict.items() if k not in head and isinstance(v, torch.Tensor)}
    mapping = map_encoder_keys(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in src.items()}
    )
    used = set(mapping.values())
    missing = [k for k in own if k not in mapping and not any(b in k for b in _REBUILT)]
    unexpected = [k for k in src if k not in used and not any(b in k for b in _REBUILT)]
    countable = [k for k in own if not any(b in k for b in _REBUILT)]
    if not mapping or len(mapping) < 0.5 * len(countable):
        raise UsageError(
            f"weights from {source} do not fit the segmentation encoder: {len(mapping)} of {len(countable)} "
            f"tensors match (e.g. missing {missing[:2]}, unexpected {unexpected[:2]}); check the model name"
        )
    encoder_features.load_state_dict({k: src[s] for k, s in mapping.items()}, strict=False)
    return LoadReport(loaded=len(mapping), missing=missing, unexpected=unexpected, skipped_head=head)

"""The encoder factory over timm.

Every encoder is headless (``num_classes=0``): ``forward`` returns the pooled
feature ``[B, D]`` (D = 1024 for Swin-B). ``features`` gives the multi-scale maps
for dense tasks. Nothing is ever downloaded: ``pretrained`` stays False and
weights come from a local file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from midol_cli.data import IMAGENET_MEAN, IMAGENET_STD
from midol_cli.errors import UsageError


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder without the command line (stored in checkpoints/exports)."""

    arch: str = "swin_base_patch4_window7_224"
    img_size: int = 224
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderSpec:
        d = dict(d)
        d["mean"] = tuple(d.get("mean", IMAGENET_MEAN))
        d["std"] = tuple(d.get("std", IMAGENET_STD))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    kw: dict[str, Any] = dict(spec.arch_kwargs)
    # Always explicit: timm's own default differs by family (Swin's is 0.1), and 0.0 must mean 0.0.
    kw.setdefault("drop_path_rate", spec.drop_path_rate)
    kw.setdefault("img_size", spec.img_size)
    return kw


def _create(arch: str, **kw: Any):
    """timm.create_model; transformer families need img_size, CNNs reject it: retry without."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, **kw)
    except TypeError as e:
        if "img_size" not in str(e) and "drop_path_rate" not in str(e):
            raise
        kw.pop("img_size", None)
        if "drop_path_rate" in str(e):
            kw.pop("drop_path_rate", None)
        return _create(arch, **kw)


def build_encoder(spec: EncoderSpec, weights: str | None = None, *, lenient: bool = False,
                  weights_format: str | None = None):
    """Create a headless timm encoder (random init), optionally loading local ``weights``.

    The load is strict (``models.weights.load_file_into``): any tensor missing, unexpected or of another
    shape, after the model's timm filter has resized what it can, is an error unless ``lenient``.
    Returns the module; its ``num_features`` attribute is D and, with weights, its ``load_report``
    says what was loaded.
    """
    import timm

    if not timm.is_model(spec.arch):
        close = timm.list_models(f"*{spec.arch.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UsageError(f"'{spec.arch}' is not a timm model name{hint}")
    try:
        model = _create(spec.arch, num_classes=0, **_timm_kwargs(spec))
    except TypeError as e:
        raise UsageError(f"model '{spec.arch}' rejected its arguments: {e}") from None
    if weights:
        from midol_cli.models.weights import load_file_into

        model.load_report = load_file_into(model, weights, lenient=lenient,  # type: ignore[attr-defined]
                                           fmt=weights_format)
    return model


def build_feature_encoder(spec: EncoderSpec):
    """The same backbone with ``features_only=True``: a list of multi-scale maps (for segmentation)."""
    try:
        return _create(spec.arch, features_only=True, **_timm_kwargs(spec))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UsageError(f"model '{spec.arch}' does not expose multi-scale features ({e})") from None

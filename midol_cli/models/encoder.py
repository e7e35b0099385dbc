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
    # default: the architecture's own; cls / mean / both ([cls, mean of patch tokens]) for ViTs.
    pooling: str = "default"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


# Class-valued architecture arguments (a registry entry's ``mlp_layer: timm.layers.SwiGLUPacked``) are
# resolved from these modules only: a recipe or export never names arbitrary code.
_CLASS_MODULES = ("timm.layers", "torch.nn")


def _resolve(value: Any) -> Any:
    if not isinstance(value, str) or "." not in value:
        return value
    module, _, attr = value.rpartition(".")
    if module not in _CLASS_MODULES:
        return value
    import functools
    import importlib

    obj = getattr(importlib.import_module(module), attr, None)
    # timm's SwiGLUPacked is a partial of its GluMlp class
    if not (isinstance(obj, type) or (isinstance(obj, functools.partial) and isinstance(obj.func, type))):
        raise UsageError(f"architecture argument '{value}' is not a class in {module}")
    return obj


def _timm_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {k: _resolve(v) for k, v in spec.arch_kwargs.items()}
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
    kw = _timm_kwargs(spec)
    both = _pooling_kwargs(spec, kw)
    try:
        model = _create(spec.arch, num_classes=0, **kw)
    except (TypeError, KeyError, ValueError) as e:
        raise UsageError(f"model '{spec.arch}' rejected its arguments: {type(e).__name__}: {e}") from None
    if both:
        _pool_cls_and_mean(model)
    if weights:
        from midol_cli.models.weights import load_file_into

        model.load_report = load_file_into(model, weights, lenient=lenient,  # type: ignore[attr-defined]
                                           fmt=weights_format)
    return model


POOLINGS = ("default", "cls", "mean", "both")


def _pooling_kwargs(spec: EncoderSpec, kw: dict[str, Any]) -> bool:
    """Set timm's pooling arguments for ``spec.pooling`` in ``kw``; True when the model must then be
    given the concatenated [cls, mean] head (``both``, DINOv2's linear-evaluation feature)."""
    import timm

    pooling = spec.pooling or "default"
    if pooling not in POOLINGS:
        raise UsageError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
    if pooling == "default":
        return False
    vit = timm.models.is_model_in_modules(spec.arch, ["vision_transformer"])
    if not vit:
        if pooling == "mean":  # Swin and CNNs already pool the mean of their last stage
            return False
        raise UsageError(
            f"pooling '{pooling}' needs a class token; '{spec.arch}' has none (use mean or default)"
        )
    kw["global_pool"] = "avg" if pooling == "mean" else "token"
    if pooling == "mean":
        # The checkpoint's own final norm, then the mean: a fresh fc_norm would be left at random init.
        kw.setdefault("fc_norm", False)
    return pooling == "both"


def _cat_cls_mean_head(self, x, pre_logits: bool = False):
    import torch

    return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)


def _pool_cls_and_mean(model) -> None:
    """Make a timm ViT return ``[cls token, mean of patch tokens]`` (2 x D) after its final norm.

    Bound as a method, so ``copy.deepcopy`` (the EMA teacher) binds it to the copy; the state dict is
    unchanged, so weights load and save as for the plain model."""
    import types

    model.forward_head = types.MethodType(_cat_cls_mean_head, model)
    model.num_features = 2 * int(model.num_features)


def build_feature_encoder(spec: EncoderSpec):
    """The same backbone with ``features_only=True``: a list of multi-scale maps (for segmentation)."""
    try:
        return _create(spec.arch, features_only=True, **_timm_kwargs(spec))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UsageError(f"model '{spec.arch}' does not expose multi-scale features ({e})") from None

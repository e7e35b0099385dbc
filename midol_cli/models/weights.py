"""Reading weights a user hands us, safely.

Only two readers are used: safetensors (no code at all) and
``torch.load(..., weights_only=True)`` (tensors and plain containers only). A
checkpoint that needs pickled code to load is refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.artifacts import PickledCode, load_torch_plain
from midol_cli.errors import UsageError

# Wrappers other trainers put around a backbone's state dict, outermost first.
_CONTAINER_KEYS = ("state_dict", "model", "teacher", "student", "encoder", "backbone", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.", "student.", "teacher.")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read tensors from ``.safetensors`` or a ``.pth/.pt/.bin`` file without executing code."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"weights file '{path}' does not exist (midol never downloads weights: pass a local file)"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"weights file '{path}' is not a readable safetensors file ({e})") from None
    try:
        obj = load_torch_plain(path)
    except PickledCode as e:
        raise UsageError(
            f"weights file '{path}' contains pickled code ({e.names[0]}), which midol refuses to run; "
            "re-save it as a plain state dict or safetensors"
        ) from None
    except Exception as e:
        raise UsageError(f"weights file '{path}' could not be read: damaged, or not a PyTorch checkpoint "
                         f"({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"weights file '{path}' does not hold a state dict")
    return obj


def unwrap_state_dict(obj: dict[str, Any]) -> dict[str, Any]:
    """Find the tensor dict inside common checkpoint containers and strip wrapper prefixes."""
    import torch

    sd = obj
    for _ in range(3):
        if all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        for key in _CONTAINER_KEYS:
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
        else:
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed and sd:
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p) :]: v for k, v in sd.items()}
                changed = True
    return sd


# Roots of classifier heads: an encoder is headless, so these are dropped, never "unexpected".
_HEAD_ROOTS = ("head", "fc", "classifier", "heads", "last_linear")
# Buffers timm rebuilds from the config (and its filters drop): never "missing" when absent.
_REBUILT = ("relative_position_index", "attn_mask")


def _shape(v: Any) -> str:
    return "[" + ", ".join(str(int(d)) for d in v.shape) + "]"


@dataclass
class LoadReport:
    """What a weights load did. ``missing``: tensors of the model left at their initial (random) values;
    ``unexpected``: tensors of the file not used; ``mismatched``: same name, other shape (left at init);
    ``resized``: tensors the model's timm checkpoint filter resampled (position embeddings, relative
    position tables, patch embeddings); ``skipped_head``: classifier-head tensors dropped; ``dropped``:
    parts of a known format that are not the encoder (an MAE decoder, a mask token, a text tower)."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    source: str = ""
    format: str = ""
    lenient: bool = False

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def partial(self) -> bool:
        """A lenient load that left tensors at their initial values (worth a warning)."""
        return self.lenient and not self.complete

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "strict": not self.lenient,
                "complete": self.complete, "loaded": self.loaded, "missing": self.missing,
                "unexpected": self.unexpected, "mismatched": self.mismatched, "resized": self.resized,
                "skipped_head": len(self.skipped_head), "dropped": len(self.dropped)}

    def summary(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{self.loaded} tensors loaded" + (f" ({self.format})" if self.format else "")]
        if self.resized:
            parts.append(f"resized: {show(self.resized)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing (random init): {show(self.missing)}")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} of another shape (random init): {show(self.mismatched)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {show(self.unexpected)}")
        if self.skipped_head:
            parts.append(f"classifier head skipped ({len(self.skipped_head)} tensors)")
        if self.dropped:
            parts.append(f"{len(self.dropped)} non-encoder tensors of the format dropped")
        if self.partial:
            parts.append("LENIENT load")
        return "; ".join(parts)


# Hugging Face transformers ViT / DINOv2 layouts (ViTModel, Dinov2Model, Dinov2WithRegistersModel), in
# the names of the released files (transformers 4) and of transformers 5 re-saves.
_HF_PATCH = "embeddings.patch_embeddings.projection.weight"
_HF_ROOTS = ("vit.", "dinov2.", "model.")
_HF_BLOCK = (
    # (transformers 4 name, transformers 5 name, timm name) inside a block
    ("attention.output.dense.", "attention.o_proj.", "attn.proj."),
    ("layernorm_before.", "layernorm_before.", "norm1."),
    ("layernorm_after.", "layernorm_after.", "norm2."),
    ("intermediate.dense.", "intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "output.dense.", "mlp.fc2."),
    ("layer_scale1.lambda1", "layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "layer_scale2.lambda1", "ls2.gamma"),
    ("norm1.", "norm1.", "norm1."),
    ("norm2.", "norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2.", "mlp.fc2."),
    ("mlp.weights_in.", "mlp.weights_in.", "mlp.fc1."),  # SwiGLU, packed [x1; x2] as timm's SwiGLUPacked
    ("mlp.weights_out.", "mlp.weights_out.", "mlp.fc2."),
)
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def convert_hf_vit(sd: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A transformers ViT / DINOv2 state dict in timm's VisionTransformer names.

    Separate query/key/value projections become timm's fused ``qkv`` (concatenated in that order);
    ``layer_scale*.lambda1`` becomes ``ls*.gamma``; the pooler and the mask token are dropped (returned
    as the second value). A key the map does not know is passed through unchanged, so the strict load
    names it."""
    import re

    import torch

    for root in _HF_ROOTS:
        if all(k.startswith(root) for k in sd):
            sd = {k[len(root):]: v for k, v in sd.items()}
    out: dict[str, Any] = {}
    dropped: list[str] = []
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    block = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
    for k, v in sd.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
            continue
        if k.startswith("pooler.") or k == "embeddings.mask_token":
            dropped.append(k)
            continue
        m = block.match(k)
        if not m:
            out[k] = v
            continue
        i, rest = int(m.group(1)), m.group(2)
        q = re.match(r"^attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$", rest)
        if q:
            part = (q.group(1) or {"q": "query", "k": "key", "v": "value"}[q.group(2)])
            qkv.setdefault((i, q.group(3)), {})[part] = v
            continue
        for old, new, timm_name in _HF_BLOCK:
            if rest.startswith(old) or rest.startswith(new):
                tail = rest[len(old if rest.startswith(old) else new):]
                out[f"blocks.{i}.{timm_name}{tail}"] = v
                break
        else:
            out[f"blocks.{i}.{rest}"] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            for part, v in parts.items():  # incomplete: left under its own name for the strict load
                out[f"blocks.{i}.attn.{part}.{kind}"] = v
            continue
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out, dropped


def recognise(obj: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """``(format, encoder state dict, dropped keys)`` of a checkpoint, recognised by its structure.

    - ``mae`` (RETFound-MAE, MAE): ``{"model": ...}`` with ``decoder_*`` and ``mask_token``: both dropped;
    - ``dino-teacher`` (DINO, DINOv2 / RETFound-DINOv2 training checkpoints): ``teacher`` (and
      ``student``): the teacher's backbone, its projection heads dropped;
    - ``moco-v3``: ``state_dict`` with ``module.base_encoder.``: the base encoder; momentum encoder
      and predictor dropped;
    - ``timm-train-ema``: timm's train script (``state_dict`` + ``state_dict_ema``): the EMA weights,
      which are the ones timm evaluates;
    - ``open_clip``: ``visual.trunk.`` keys (a timm vision tower, e.g. BiomedCLIP, CONCH): the trunk;
      the text tower, ``logit_scale`` and the projection head dropped;
    - ``openai-clip``: ``visual.class_embedding``: passed to timm's own converter unchanged;
    - ``dinov2-hub``: ``mask_token`` with ``blocks.*``; timm's filter drops the mask token, renames
      ``register_tokens`` and resamples the 518-px position embedding;
    - ``hf-vit`` / ``hf-dinov2``: a Hugging Face transformers ``ViTModel`` / ``Dinov2Model`` (Phikon,
      Phikon-v2, RAD-DINO): converted to timm names (``convert_hf_vit``);
    - ``state-dict`` otherwise, after the Lightning / DDP / EMA wrappers (``state_dict``, ``model``,
      ``model_ema``, ``module.``, ``student.``/``teacher.`` prefixes) are removed.
    """
    import torch

    def tensors(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}

    if isinstance(obj.get("model"), dict) and any(k.startswith("decoder_") for k in obj["model"]):
        sd = tensors(obj["model"])
        drop = [k for k in sd if k.startswith("decoder_") or k == "mask_token"]
        return "mae", {k: v for k, v in sd.items() if k not in drop}, drop
    if isinstance(obj.get("teacher"), dict):
        sd = unwrap_state_dict(obj["teacher"])
        body = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        if body:
            return "dino-teacher", body, [k for k in sd if not k.startswith("backbone.")]
        return "dino-teacher", sd, []
    inner = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else None
    if inner is not None and any(k.startswith("module.base_encoder.") for k in inner):
        keep = "module.base_encoder."
        return ("moco-v3", {k[len(keep):]: v for k, v in tensors(inner).items() if k.startswith(keep)},
                [k for k in inner if not k.startswith(keep)])
    if isinstance(obj.get("state_dict_ema"), dict):
        return "timm-train-ema", unwrap_state_dict(obj["state_dict_ema"]), []
    flat = unwrap_state_dict(obj)
    if any(k.startswith("visual.trunk.") for k in flat):
        keep = "visual.trunk."
        return ("open_clip", {k[len(keep):]: v for k, v in flat.items() if k.startswith(keep)},
                [k for k in flat if not k.startswith(keep)])
    hf = [k for k in flat if k.endswith(_HF_PATCH)]
    if hf:
        sd, drop = convert_hf_vit(flat)
        dinov2 = any(".layer_scale1." in k or k.endswith("mask_token") for k in flat)
        return ("hf-dinov2" if dinov2 else "hf-vit"), sd, drop
    if "visual.class_embedding" in flat:
        return "openai-clip", flat, []
    if "mask_token" in flat and any(k.startswith("blocks.") for k in flat):
        return "dinov2-hub", flat, []
    return "state-dict", flat, []


def _timm_filter(model: Any, sd: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The model family's own ``checkpoint_filter_fn`` (timm): position embeddings, relative-position
    tables and patch embeddings resampled to this model, known renames applied. Returns the filtered
    dict and the resized keys (as ``key [old] -> [new]``)."""
    import contextlib
    import io
    import sys

    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return sd, []
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # timm prints "Resized position embedding ..."
            out = dict(fn(dict(sd), model))
    except Exception:  # a filter that cannot read this dict: the strict check below names the keys
        return sd, []
    resized = [f"{k} {_shape(sd[k])} -> {_shape(v)}" for k, v in out.items()
               if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    return out, resized


def load_into(model, sd: dict[str, Any], source: str, *, lenient: bool = False, fmt: str = "",
              dropped: list[str] | None = None, timm_filter: bool = True) -> LoadReport:
    """Load ``sd`` into ``model`` strictly and return the report.

    The dict first goes through the model's timm checkpoint filter (resizing, renames). A classifier
    head absent from the (headless) model is dropped. Every other difference (a missing tensor, an
    unexpected one, one of another shape) is a ``UsageError`` naming the first keys and shapes, unless
    ``lenient``: then what fits is loaded, the rest stays at its initial values, and the report says so.
    """
    own = model.state_dict()
    if timm_filter:
        sd, resized = _timm_filter(model, sd)
    else:
        resized = []
    head = [k for k in sd if k.split(".")[0] in _HEAD_ROOTS and k not in own]
    usable: dict[str, Any] = {}
    unexpected, mismatched, other_shape = [], [], set()
    for k, v in sd.items():
        if k in head or any(b in k for b in _REBUILT):
            continue
        if k not in own:
            unexpected.append(f"{k} {_shape(v)}")
        elif tuple(own[k].shape) != tuple(v.shape):
            mismatched.append(f"{k}: file {_shape(v)}, model {_shape(own[k])}")
            other_shape.add(k)
        else:
            usable[k] = v
    missing = [f"{k} {_shape(own[k])}" for k in own
               if k not in usable and k not in other_shape and not any(b in k for b in _REBUILT)]
    report = LoadReport(loaded=len(usable), missing=missing, unexpected=unexpected, skipped_head=head,
                        mismatched=mismatched, resized=resized, dropped=list(dropped or []), source=source,
                        format=fmt, lenient=lenient)
    if not usable:
        raise UsageError(f"weights in {source} do not match this architecture: no tensor fits "
                         f"(e.g. {(unexpected or mismatched)[:2]}); check the model name")
    if not report.complete and not lenient:
        parts = []
        for what, keys in (
            ("missing", missing),
            ("of another shape", mismatched),
            ("unexpected", unexpected),
        ):
            if keys:
                parts.append(f"{len(keys)} {what} ({'; '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})")
        raise UsageError(f"weights in {source} do not fit the model: {', '.join(parts)}; "
                         "pass --weights-lenient to load what fits and leave the rest at random init")
    model.load_state_dict(usable, strict=False)
    return report


def load_file_into(model, path: str | Path, *, lenient: bool = False, fmt: str | None = None) -> LoadReport:
    """Read ``path`` (safetensors, or ``torch.load(weights_only=True)``), recognise its format
    (``recognise``) unless ``fmt`` names it (``midol-export``: our own keys, no conversion), and load
    it strictly (``load_into``)."""
    raw = read_state_dict(path)
    if fmt == "midol-export":
        return load_into(model, raw, f"'{path}'", lenient=lenient, fmt=fmt, timm_filter=False)
    found, sd, dropped = recognise(raw)
    return load_into(model, sd, f"'{path}'", lenient=lenient, fmt=fmt or found, dropped=dropped)

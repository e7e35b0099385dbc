"""Reading weights a user hands us, safely.

Only two readers are used: safetensors (no code at all) and
``torch.load(..., weights_only=True)`` (tensors and plain containers only). A
checkpoint that needs pickled code to load is refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

# Wrappers other trainers put around a backbone's state dict, outermost first.
_CONTAINER_KEYS = ("state_dict", "model", "teacher", "student", "encoder", "backbone", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.", "student.", "teacher.")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read tensors from ``.safetensors`` or a ``.pth/.pt/.bin`` file without executing code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file '{path}' does not exist (midol never downloads weights: pass a local file)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"weights file '{path}' is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "pickle" in str(e).lower():
            raise UsageError(
                f"weights file '{path}' contains pickled code, which midol refuses to run; "
                "re-save it as a plain state dict or safetensors"
            ) from None
        raise UsageError(f"weights file '{path}' could not be read ({msg[:120]})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"weights file '{path}' does not hold a state dict")
    return obj


def unwrap_state_dict(obj: dict[str, Any], prefer: tuple[str, ...] = ()) -> dict[str, Any]:
    """Find the tensor dict inside common checkpoint containers and strip wrapper prefixes."""
    import torch

    sd = obj
    for _ in range(3):
        if all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        for key in (*prefer, *_CONTAINER_KEYS):
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


@dataclass
class LoadReport:
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{self.loaded} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {show(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {show(self.unexpected)}")
        if self.skipped_head:
            parts.append(f"classifier head skipped ({len(self.skipped_head)} tensors)")
        return "; ".join(parts)


def load_into(model, sd: dict[str, Any], source: str, strict_fraction: float = 0.5) -> LoadReport:
    """Load ``sd`` into ``model`` non-strictly and report; refuse when most keys do not fit.

    A classifier head (``head.*``, ``fc.*``, ``classifier.*``) is ignored: the
    encoder is headless. Shape mismatches count as unexpected.
    """
    own = model.state_dict()
    head = [k for k in sd if k.split(".")[0] in ("head", "fc", "classifier") and k not in own]
    usable, unexpected = {}, []
    for k, v in sd.items():
        if k in head:
            continue
        if k in own and tuple(own[k].shape) == tuple(v.shape):
            usable[k] = v
        else:
            unexpected.append(k)
    missing = [k for k in own if k not in usable and not k.endswith("relative_position_index") and "attn_mask" not in k]
    if not usable or len(usable) < strict_fraction * len(own):
        raise UsageError(
            f"weights in {source} do not match this architecture: {len(usable)} of {len(own)} tensors fit "
            f"(e.g. unexpected {unexpected[:2]}, missing {missing[:2]}); check the model name"
        )
    model.load_state_dict(usable, strict=False)
    return LoadReport(loaded=len(usable), missing=missing, unexpected=unexpected, skipped_head=head)

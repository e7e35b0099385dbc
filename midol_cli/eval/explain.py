"""Explanation maps of a classifier (issue 29.5): where in an image the prediction came from.

- **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017) for CNNs and Swin: with ``A`` the last feature map ``[B, K, h, w]`` and ``y``
  the target class's logit, ``alpha_k = mean_{i,j} dy / dA_k[i, j]`` and ``CAM = ReLU(sum_k alpha_k A_k)``
  ``[B, h, w]`` (eq. 1-2). For a Swin the last stage's tokens are already a grid (timm's NHWC output); for
  a CNN the map is the last stage's. The map is class-specific: it goes through the trained linear head.
- **Attention rollout** (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020) for
  ViTs: per block the attention averaged over heads, with the residual as ``0.5 A + 0.5 I`` and rows
  re-normalised, multiplied from the first block to the last; the class token's row over the patch
  tokens is the map (the mean row over patch tokens when the model has no class token). It is
  class-agnostic: it needs the encoder only, so it also explains a frozen probe. Grad-CAM is not used
  on a ViT: with class-token pooling the last block's patch tokens get no gradient from the logit.

Maps are returned at the input size (bilinear), non-negative; ``mass_in`` measures how much of a map's
mass lies in a region (the planted-patch test and docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from midol_cli.errors import UsageError

METHODS = ("auto", "gradcam", "rollout")


def grad_cam(fmap: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``[B, h, w]`` of ``scores [B]`` (each image's target logit, computed from ``fmap``) over
    the feature map ``fmap [B, K, h, w]`` (part of the autograd graph of ``scores``)."""
    (grads,) = torch.autograd.grad(scores.sum(), fmap)
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # [B, K, 1, 1]
    return F.relu((alpha * fmap).sum(1)).detach()


def rollout(attentions: list[torch.Tensor], prefix: int = 1, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout ``[B, N - prefix]`` from per-block attention probabilities ``[B, H, N, N]`` (first
    block first); ``prefix``: class and register tokens before the patch tokens."""
    if not attentions:
        raise ValueError("attention rollout needs at least one block's attention")
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=attentions[0].device)
    joint = None
    for a in attentions:
        a = (1 - residual) * a.double().mean(1) + residual * eye  # [B, N, N]
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    assert joint is not None
    if prefix >= 1:
        return joint[:, 0, prefix:].float()
    return joint.mean(1).float()  # no class token: every token is a patch


def _vit_attention(module: Any, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities ``[B, H, N, N]`` of a timm ``Attention`` block on its input ``x [B, N, C]``
    (recomputed: the fused kernel never forms them)."""
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    return ((q * module.scale) @ k.transpose(-2, -1)).softmax(-1)


def is_vit(encoder: Any) -> bool:
    """A timm ViT-style encoder: blocks of ``Attention`` with a qkv projection, over patch tokens."""
    blocks = getattr(encoder, "blocks", None)
    return blocks is not None and all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks)


def resolve_method(method: str, encoder: Any) -> str:
    """``auto``: rollout for a ViT, Grad-CAM otherwise. One-line errors for a pairing that cannot work."""
    if method not in METHODS:
        raise UsageError(f"--method {method} is not one of {', '.join(METHODS)}")
    vit = is_vit(encoder)
    if method == "auto":
        return "rollout" if vit else "gradcam"
    if method == "rollout" and not vit:
        raise UsageError("attention rollout needs a ViT encoder (timm blocks with attention); use --method "
                         "gradcam for CNNs and Swin")
    if method == "gradcam" and vit:
        raise UsageError("Grad-CAM on a ViT's class-token output has no gradient on the patch tokens; use "
                         "--method rollout")
    return method


@torch.no_grad()
def attention_rollout(encoder: Any, x: torch.Tensor) -> torch.Tensor:
    """Rollout maps ``[B, gh, gw]`` of a timm ViT ``encoder`` on images ``x [B, 3, H, W]``."""
    attn: list[torch.Tensor] = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: attn.append(_vit_attention(m, args[0])))
             for b in encoder.blocks]
    try:
        encoder.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    patches = rollout(attn, prefix)
    grid = tuple(getattr(getattr(encoder, "patch_embed", None), "grid_size", ()) or ())
    if len(grid) != 2 or grid[0] * grid[1] != patches.shape[1]:
        side = int(round(patches.shape[1] ** 0.5))
        grid = (side, patches.shape[1] // max(side, 1))
    return patches.reshape(len(x), int(grid[0]), int(grid[1]))


def _nhwc(encoder: Any, feats: torch.Tensor) -> bool:
    """Whether ``forward_features``' output is NHWC (timm's Swin) rather than NCHW (a CNN's)."""
    if feats.ndim != 4:
        raise UsageError(f"Grad-CAM needs a spatial feature map; this encoder gives {tuple(feats.shape)}")
    fmt = getattr(encoder, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper() == "NHWC"


def classifier_cam(encoder: Any, head: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM through ``encoder`` (timm: ``forward_features`` then ``forward_head(pre_logits=True)``) and
    the linear ``head``: ``(maps [B, h, w], logits [B, C])``; ``target [B]``: class per image (default the
    predicted one). Works for a frozen encoder too (the gradient starts at its feature map)."""
    with torch.enable_grad():
        feats = encoder.forward_features(x)
        if not feats.requires_grad:  # a frozen encoder: the map is the leaf the gradient stops at
            feats = feats.detach().requires_grad_(True)
        nhwc = _nhwc(encoder, feats)
        fmap = feats.permute(0, 3, 1, 2) if nhwc else feats  # [B, K, h, w], on the path to the logits
        logits = head(encoder.forward_head(fmap.permute(0, 2, 3, 1) if nhwc else fmap, pre_logits=True))
        t = logits.argmax(1) if target is None else target.to(logits.device).long()
        cams = grad_cam(fmap, logits.gather(1, t[:, None])[:, 0])
    return cams, logits.detach()


def explain(encoder: Any, head: Callable[[torch.Tensor], torch.Tensor] | None, x: torch.Tensor,
            method: str = "auto", target: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
    """``(maps [B, H, W] at the input size, each scaled to a maximum of 1, method used)``."""
    was = encoder.training
    encoder.eval()
    try:
        m = resolve_method(method, encoder)
        if m == "rollout":
            maps = attention_rollout(encoder, x)
        else:
            if head is None:
                raise UsageError("Grad-CAM needs the trained head; a linear probe's is not kept: explain a "
                                 "`midol finetune` run (--linear trains the same head and keeps it)")
            maps, _ = classifier_cam(encoder, head, x, target)
    finally:
        encoder.train(was)
    up = F.interpolate(maps[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp(min=0)
    return up / up.flatten(1).amax(1).clamp(min=1e-12)[:, None, None], m


def mass_in(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Fraction ``[B]`` of each non-negative map's ``[B, H, W]`` mass inside the boolean ``region``
    (``[B, H, W]`` or ``[H, W]``); 0 for an all-zero map."""
    m = maps.clamp(min=0).double()
    inside = (m * region.to(m.device, torch.bool).expand_as(m)).flatten(1).sum(1)
    return (inside / m.flatten(1).sum(1).clamp(min=1e-300)).float()


def pick_examples(y: Any, probs: Any, n: int) -> list[tuple[int, str]]:
    """``[(row, "correct" | "wrong"), ...]``: the ``n`` most confident correct predictions, then the ``n``
    most confident wrong ones (confidence: the predicted class's probability; ties keep row order).
    ``y [N]`` class indices, ``probs [N, C]``."""
    import numpy as np

    p = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    pred = p.argmax(1)
    conf = p[np.arange(len(p)), pred]
    out: list[tuple[int, str]] = []
    for why, rows in (("correct", np.flatnonzero(pred == y)), ("wrong", np.flatnonzero(pred != y))):
        rows = rows[np.argsort(-conf[rows], kind="stable")][: max(0, int(n))]
        out.extend((int(r), why) for r in rows)
    return out


def load_finetuned(run_dir: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(encoder, head, EncoderSpec, meta)`` of a classification fine-tuning run's ``best.pt`` (``midol
    finetune --method full | linear | lora``: each keeps the trained linear head; LoRA adapters merged),
    eval mode, on CPU."""
    from pathlib import Path

    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from midol_cli.models.heads import ClassifierHead

    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise UsageError(f"no best.pt in '{run_dir}': the fine-tuning run did not finish an epoch")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("kind") != "finetune" or "encoder_spec" not in state:
        raise UsageError(f"'{path}' is not a classification fine-tuning checkpoint (kind "
                         f"{state.get('kind')})")
    spec = EncoderSpec(**{**state["encoder_spec"], "mean": tuple(state["encoder_spec"]["mean"]),
                          "std": tuple(state["encoder_spec"]["std"])})
    enc = build_encoder(spec)
    head = ClassifierHead(int(enc.num_features), len(state["classes"]))
    weights = state["model"]
    enc_state = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    if state.get("lora"):  # a --method lora run: its adapters merged into the weights, as `midol export`
        from midol_cli.models.lora import merged_state

        enc_state = merged_state(build_encoder(spec), spec.arch, state["lora"], enc_state)
    enc.load_state_dict(enc_state)
    head.load_state_dict({k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")})
    meta = {k: v for k, v in state.items() if k != "model"}
    return enc.eval(), head.eval(), spec, meta

"""Low-rank adapters (LoRA) on a timm encoder, through Hugging Face peft: ``--method lora``.

Each target layer ``W`` (frozen) gains a trained update ``(alpha / r) B A`` with ``A`` ``[r, in]`` and
``B`` ``[out, r]`` (``B`` starts at zero, so training starts from the encoder's own outputs); Hu et al.
2021, arXiv 2106.09685. peft does the wrapping, saving (``save_pretrained``: ``adapter_model.safetensors``
+ ``adapter_config.json``), loading and merging; it is imported only here, on first use, through
``extras.require`` (a missing package is one line naming the ``peft`` extra).

Targets by encoder family (``target_modules``): every transformer the registry builds (ViT, DINOv2,
RETFound, UNI, Phikon, CONCH, BiomedCLIP: timm's ``vision_transformer``; Swin: ``swin_transformer``)
names its attention layers ``...attn.qkv`` and ``...attn.proj``; those two are the default, as in the
paper's best setting (W_q, W_v and more of the attention). A CNN (ResNet, ConvNeXt) has no attention:
LoRA is refused with a one-line error unless the recipe names its layers (peft adapts ``nn.Linear`` and
``nn.Conv2d``), since a low-rank update of a 3x3 convolution is not the method the defaults come from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

ADAPTER_DIR = "adapter"  # in the run dir: peft's save_pretrained folder
# The attention projections of timm's ViT and Swin blocks (``blocks.3.attn.qkv``,
# ``layers.1.blocks.0.attn.proj``); a regular expression, so ``patch_embed.proj`` is not one of them.
ATTENTION = r".*\.attn\.(qkv|proj)$"
FAMILY_TARGETS = {"vision_transformer": ATTENTION, "swin_transformer": ATTENTION}


def _peft() -> Any:
    from midol_cli.extras import require

    return require("peft", "peft", "LoRA fine-tuning (--method lora)")


def family(arch: str) -> str | None:
    """The timm module that defines ``arch`` (``vision_transformer``, ``swin_transformer``, ``resnet``)."""
    import timm

    for name in FAMILY_TARGETS:
        if timm.models.is_model_in_modules(arch, [name]):
            return name
    return None


def default_targets(arch: str) -> str:
    """The family's default target layers; the attention regex for other families (a transformer whose
    layers are named as timm's ViT's works; one whose are not finds nothing and is refused)."""
    return FAMILY_TARGETS.get(family(arch) or "", ATTENTION)


def matched(module: Any, targets: str | list[str]) -> list[str]:
    """Names of the layers of ``module`` that ``targets`` selects, with peft's rule: a string is a
    regular expression the whole name must match; a list names layers by their name or its last parts."""
    names = [n for n, _ in module.named_modules() if n]
    if isinstance(targets, str):
        return [n for n in names if re.fullmatch(targets, n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def lora_config(cfg: Any, arch: str) -> dict[str, Any]:
    """The resolved adapter settings of a recipe's ``lora`` block for ``arch`` (what run.json records and
    ``add_lora`` takes): ``rank``, ``alpha``, ``dropout``, ``target_modules``."""
    targets = list(cfg.target_modules) if cfg.target_modules else default_targets(arch)
    if isinstance(targets, list) and len(targets) == 1 and any(c in targets[0] for c in "*()|$\\"):
        targets = targets[0]  # one regular expression given as a list
    return {"rank": int(cfg.rank), "alpha": float(cfg.alpha), "dropout": float(cfg.dropout),
            "target_modules": targets}


def add_lora(encoder: Any, arch: str, conf: dict[str, Any]) -> Any:
    """``encoder`` wrapped in a peft model with adapters on ``conf["target_modules"]`` (``lora_config``);
    only the adapters train. The wrapper forwards as the encoder does (``[B, 3, S, S] -> [B, D]``) and
    exposes its attributes (``num_features``)."""
    targets = conf["target_modules"]
    found = matched(encoder, targets)
    if not found:
        shown = targets if isinstance(targets, str) else ", ".join(targets)
        raise UsageError(f"LoRA targets attention and linear layers; no layer of '{arch}' matches "
                         f"lora.target_modules ({shown}): use --method full or linear, or name its layers "
                         "in lora.target_modules (peft adapts Linear and Conv2d layers)")
    peft = _peft()
    config = peft.LoraConfig(r=conf["rank"], lora_alpha=conf["alpha"], lora_dropout=conf["dropout"],
                             target_modules=targets, bias="none")
    try:
        return peft.get_peft_model(encoder, config)
    except (ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UsageError(f"LoRA cannot adapt lora.target_modules of '{arch}' ({first}); name Linear or "
                         "Conv2d layers") from None


def parameter_counts(module: Any) -> dict[str, int]:
    """``{"trainable": n, "total": N}``: parameters that receive gradients, and all of them."""
    params = list(module.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


def save_adapter(model: Any, folder: str | Path) -> Path:
    """peft's ``save_pretrained`` (safetensors) into ``folder``, written beside it and renamed into
    place so a folder that exists is complete."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_adapter(encoder: Any, folder: str | Path) -> Any:
    """``encoder`` (the base weights) with the adapter saved in ``folder``: a peft model in eval mode."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(f"'{folder}' holds no LoRA adapter (adapter_config.json); it is written by "
                         "`midol finetune --method lora` into the run dir")
    return _peft().PeftModel.from_pretrained(encoder, str(folder)).eval()


def merged_state(encoder: Any, arch: str, conf: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The plain timm state dict of ``encoder`` (built from the run's spec) with a LoRA run's trained
    adapters merged into its weights (``W + (alpha / r) B A``): ``state`` is the peft-wrapped encoder's
    state dict (``base_model.model.…`` names, as a checkpoint holds it)."""
    model = add_lora(encoder, arch, conf)
    model.load_state_dict(state)
    return model.merge_and_unload().state_dict()

"""The model under evaluation: ``--weights`` in its three forms, and a stable short id.

- a midol run dir, or an exported ``encoder.safetensors`` (with its projector + router if present);
- ``timm:<model_name>=<local file>``: any timm backbone a user has on disk (DINOv2, RETFound,
  ImageNet Swin-B ...), with timm's own input size and normalisation for that model;
- ``NAME=<local file>`` for a model of the registry (``midol models``): the entry's architecture,
  input size, normalisation, pooling and checkpoint format (``models.registry``);
- ``random:<model_name | registry name>`` or ``random:<run dir | export>``: random init (seed 0), the floor.
  The second form uses the exact architecture of that midol model, which is the fair
  baseline for it.

Nothing is ever downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError


@dataclass
class EvalModel:
    id: str
    kind: str  # midol | timm | registry | random
    weights: str
    weights_hash: str
    spec: Any  # EncoderSpec
    encoder: Any  # nn.Module, eval mode
    projector: Any = None  # MoEProjector or None
    modalities: list[str] = field(default_factory=list)
    calibration: Any = None  # eval.routing.RouterCalibration beside the export, or None
    init: dict[str, Any] | None = None  # the released weights a midol run started from (export metadata)

    @property
    def load_report(self) -> dict[str, Any] | None:
        """What the weights load did (``models.weights.LoadReport.to_dict``); None for random init."""
        rep = getattr(self.encoder, "load_report", None)
        return rep.to_dict() if rep is not None else None

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "weights": self.weights, "weights_hash": self.weights_hash,
                "arch": self.spec.arch, "img_size": self.spec.img_size, "pooling": self.spec.pooling,
                "mean": list(self.spec.mean), "std": list(self.spec.std), "load_report": self.load_report,
                "init": self.init}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def _midol_export_path(p: Path) -> Path:
    from midol_cli.models.export import ENCODER_FILE

    if p.is_dir():
        cand = p / "export" / ENCODER_FILE
        if cand.is_file():
            return cand
        if (p / ENCODER_FILE).is_file():
            return p / ENCODER_FILE
        raise UsageError(f"'{p}' has no export/{ENCODER_FILE}; run `midol export {p}` first")
    if p.is_file():
        return p
    raise UsageError(f"weights '{p}' do not exist (give a run dir, an exported .safetensors, timm:NAME=FILE "
                     "or random:NAME)")


def _timm_spec(name: str):
    import timm

    from midol_cli.models.encoder import EncoderSpec

    if not timm.is_model(name):
        raise UsageError(f"'{name}' is not a timm model name (see timm.list_models())")
    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None else 224
    mean = tuple(cfg.mean) if cfg is not None else None
    std = tuple(cfg.std) if cfg is not None else None
    spec = EncoderSpec(arch=name, img_size=size)
    if mean and std:
        spec.mean, spec.std = mean, std
    return spec


@dataclass(frozen=True)
class WeightsRef:
    """What a ``--weights`` value names, parsed once (``parse_weights``): ``kind`` is ``random`` (``target``
    a model name, registry name, run dir or export), ``timm`` (``target`` the architecture, ``file`` its
    weights), ``registry`` (``target`` the entry name, ``file``) or ``midol`` (``target`` a run dir or
    export; ``midol=PATH`` says so explicitly)."""

    kind: str
    target: str
    file: str | None = None


def parse_weights(weights: str) -> WeightsRef:
    """The ``--weights`` grammar, in one place: ``random:NAME|PATH``, ``timm:NAME=FILE``, ``NAME=FILE``
    (a registry model; ``midol=PATH`` a midol run), else a run dir or export."""
    if weights.startswith("random:"):
        target = weights[len("random:") :]
        if not target:
            raise UsageError("random: needs a model name or a midol run/export, e.g. "
                             "random:swin_base_patch4_window7_224")
        return WeightsRef("random", target)
    if weights.startswith("random-bn:"):  # issue 28.3: random init, BN statistics of DATA (eval/floor.py)
        target, _, data = weights[len("random-bn:") :].rpartition("@")
        if not target or not data:
            raise UsageError(f"'{weights}' must look like random-bn:<model name or run>@<training images: "
                             "shard dir or manifest>")
        return WeightsRef("random-bn", target, data)
    if weights.startswith("timm:"):
        body = weights[len("timm:") :]
        if "=" not in body:
            raise UsageError(f"'{weights}' must look like timm:<model_name>=<local weights file>")
        arch, file = body.split("=", 1)
        return WeightsRef("timm", arch, file)
    if "=" in weights and not Path(weights).exists():
        entry_name, file = weights.split("=", 1)
        if entry_name == "midol":
            return WeightsRef("midol", file)
        return WeightsRef("registry", entry_name, file)
    return WeightsRef("midol", weights)


def load_eval_model(weights: str, name: str | None = None, lenient: bool = False) -> EvalModel:
    """Parse ``--weights`` and build the encoder (eval mode).

    Loads are strict (``models.weights.load_into``); ``lenient`` (``--weights-lenient``) loads what
    fits and records what stayed at random init in the model's ``load_report``."""
    import torch

    from midol_cli.artifacts import sha256_file
    from midol_cli.models.encoder import build_encoder
    from midol_cli.models.export import load_exported_encoder, load_exported_projector, read_export_meta

    ref = parse_weights(weights)
    if ref.kind == "random":
        target = ref.target
        p = Path(target)
        if p.exists():
            from midol_cli.models.encoder import EncoderSpec

            meta = read_export_meta(_midol_export_path(p))
            spec = EncoderSpec(arch=meta["arch"], img_size=meta["img_size"], arch_kwargs=meta["arch_kwargs"],
                               mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                               pooling=meta.get("pooling", "default"))
            default_id = f"random-{_slug(p.name if p.is_dir() else p.parent.parent.name or p.stem)}"
        else:
            from midol_cli.models.registry import get_entry, is_entry

            spec = get_entry(target).spec() if is_entry(target) else _timm_spec(target)
            default_id = f"random-{_slug(target)}"
        torch.manual_seed(0)
        enc = build_encoder(spec).eval()
        return EvalModel(name or default_id, "random", weights, "random-seed0", spec, enc)

    if ref.kind == "random-bn":
        import dataclasses

        from midol_cli.eval.floor import with_bn_reestimated

        floor = with_bn_reestimated(load_eval_model(f"random:{ref.target}"), ref.file or "")
        return dataclasses.replace(floor, id=name) if name else floor

    if ref.kind == "timm":
        arch, file = ref.target, ref.file or ""
        if not Path(file).is_file():
            raise UsageError(f"weights file '{file}' does not exist (midol never downloads weights)")
        spec = _timm_spec(arch)
        enc = build_encoder(spec, weights=file, lenient=lenient).eval()
        return EvalModel(name or f"{_slug(arch)}-{_slug(Path(file).stem)}", "timm", weights,
                         sha256_file(file)[:16], spec, enc)

    if ref.kind == "registry":
        return _load_registry_model(ref.target, ref.file or "", name, lenient)
    weights = ref.target
    path = _midol_export_path(Path(weights))
    if path.suffix != ".safetensors":
        raise UsageError(
            f"'{path}' is not a midol export; for another checkpoint use timm:<model_name>={path}"
        )
    enc, spec, meta = load_exported_encoder(path, lenient=lenient)
    proj = load_exported_projector(path, enc.num_features)
    p = Path(weights)
    default_id = (
        _slug(p.name)
        if p.is_dir()
        else _slug(path.parent.parent.name if path.parent.name == "export" else path.stem)
    )
    from midol_cli.eval.routing import calibration_beside

    return EvalModel(name or default_id, "midol", weights, sha256_file(path)[:16], spec, enc, proj,
                     list(meta["modalities"]), calibration_beside(path) if proj is not None else None,
                     meta.get("init"))


def _load_registry_model(entry_name: str, file: str, name: str | None, lenient: bool) -> EvalModel:
    """``NAME=FILE``: build the registry entry's encoder and load FILE strictly, in the entry's format."""
    from midol_cli.artifacts import sha256_file
    from midol_cli.models.encoder import build_encoder
    from midol_cli.models.registry import get_entry, load_named

    entry = get_entry(entry_name)
    if not Path(file).is_file():
        raise UsageError(entry.missing_file_message(file))
    spec = entry.spec()
    enc = build_encoder(spec)
    enc.load_report = load_named(enc, entry, file, lenient=lenient)
    enc.eval()
    return EvalModel(name or f"{_slug(entry.name)}-{_slug(Path(file).stem)}", "registry",
                     f"{entry.name}={file}", sha256_file(file)[:16], spec, enc)

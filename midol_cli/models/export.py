"""Export: the encoder as a plain timm state dict in safetensors, plus the projector and router.

``export/encoder.safetensors`` holds prefix-free, timm-named tensors, so

    timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file="encoder.safetensors"),
    num_classes=0)

loads it with identical outputs (tested). Its metadata (strings) record the
architecture and its arguments, image size, normalisation, the modality ->
expert map, the midol version and the recipe hash. ``export/projector.safetensors``
holds the MoE projector and router so ``embed`` can route images of unknown
modality. The teacher is exported by default: in self-distillation the EMA
teacher is the better encoder (DINO, DINOv2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from midol_cli import __version__
from midol_cli.artifacts import atomic_path
from midol_cli.errors import UsageError

ENCODER_FILE = "encoder.safetensors"
PROJECTOR_FILE = "projector.safetensors"


def projector_path(encoder_path: str | Path) -> Path:
    """Where the projector + router of an exported encoder live: ``projector.safetensors`` beside
    ``encoder.safetensors``, else ``<name>.projector.safetensors`` beside ``<name>.safetensors``."""
    encoder_path = Path(encoder_path)
    if encoder_path.name == ENCODER_FILE:
        return encoder_path.with_name(PROJECTOR_FILE)
    return encoder_path.with_name(encoder_path.name.replace(".safetensors", "") + ".projector.safetensors")


def _save(tensors: dict[str, Any], meta: dict[str, str], target: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _meta(spec: dict[str, Any], modalities: list[str], n_experts: int, recipe_hash: str, step: int,
          which: str) -> dict[str, str]:
    """The strings an exported encoder carries: how to rebuild it and where it came from."""
    return {
        "format": "midol-export-1",
        "arch": spec["arch"],
        "img_size": str(spec["img_size"]),
        "arch_kwargs": json.dumps(spec.get("arch_kwargs", {})),
        "mean": json.dumps(spec["mean"]),
        "std": json.dumps(spec["std"]),
        "pooling": str(spec.get("pooling", "default")),
        "modalities": json.dumps(modalities),
        "expert_map": json.dumps({m: (0 if n_experts == 1 else i) for i, m in enumerate(modalities)}),
        "n_experts": str(n_experts),
        "midol_version": __version__,
        "recipe_hash": str(recipe_hash),
        "step": str(step),
        "which": which,
    }


def _plain(enc: dict[str, Any]) -> dict[str, Any]:
    """Without the buffers timm rebuilds itself (non-persistent in spirit)."""
    return {k: v for k, v in enc.items() if "relative_position_index" not in k and "attn_mask" not in k}


def export_finetuned(best_path: str | Path, out_file: str | Path) -> dict[str, Path]:
    """The encoder of a classification fine-tuning run's best epoch (``best.pt``: the model it tested) as
    ``out_file``; a LoRA run's adapters merged into its weights (``models.lora.merged_state``), so every
    method exports a plain timm state dict. No projector: a fine-tuned encoder has none."""
    import torch

    best_path = Path(best_path)
    try:
        state = torch.load(best_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"'{best_path}' is unreadable ({type(e).__name__}); re-run the fine-tuning"
                         ) from None
    if not isinstance(state, dict) or state.get("kind") != "finetune":
        kind = state.get("kind") if isinstance(state, dict) else None
        raise UsageError(f"'{best_path}' is a {kind or 'foreign'} run; `midol export` takes pre-training and "
                         "classification fine-tuning runs")
    spec = state["encoder_spec"]
    enc = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    if state.get("lora"):
        from midol_cli.models.encoder import EncoderSpec, build_encoder
        from midol_cli.models.lora import merged_state

        es = EncoderSpec(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])})
        enc = merged_state(build_encoder(es), es.arch, state["lora"], enc)
    modalities = [state["modality"]] if state.get("modality") else []
    run_json = best_path.parent / "run.json"  # best.pt carries no recipe hash; the run's record does
    rec = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
    meta = _meta(spec, modalities, 1, rec.get("recipe_hash", ""), int(state.get("epoch", 0)),
                 f"finetuned ({state.get('method', 'full')})")
    out_file = Path(out_file)
    _save(_plain(enc), meta, out_file)
    return {"encoder": out_file}


def export_checkpoint(ckpt_path: str | Path, out_file: str | Path, which: str = "teacher") -> dict[str, Path]:
    """Write encoder (``out_file``) and projector (beside it) from a pre-training checkpoint."""
    from midol_cli.checkpoint import load_checkpoint

    if which not in ("teacher", "student"):
        raise UsageError("--which must be teacher or student")
    state = load_checkpoint(ckpt_path)
    net = state[which]
    enc = {k[len("encoder.") :]: v for k, v in net.items() if k.startswith("encoder.")}
    proj = {k[len("projector.") :]: v for k, v in net.items() if k.startswith("projector.")}
    enc = _plain(enc)
    meta = _meta(state["encoder_spec"], list(state["modalities"]), state["n_experts"],
                 state.get("recipe_hash", ""), state["step"], which)
    init = state.get("init")
    if init:  # the released weights the run started from: file, sha256 and how they loaded
        meta["init"] = json.dumps({k: init.get(k) for k in ("weights", "model", "sha256")} |
                                  {"format": (init.get("load_report") or {}).get("format")})
    out_file = Path(out_file)
    _save(enc, meta, out_file)
    proj_file = projector_path(out_file)
    recipe = state.get("recipe", {})
    pmeta = dict(meta)
    pmeta["projector"] = json.dumps(recipe.get("projector", {}))
    _save(proj, pmeta, proj_file)
    return {"encoder": out_file, "projector": proj_file}


def export_run(
    run_dir: str | Path, out_file: str | Path | None = None, which: str = "teacher"
) -> dict[str, Path]:
    """Export the newest checkpoint of ``run_dir`` (default target: RUN_DIR/export/encoder.safetensors); a
    fine-tuning run's best epoch (``best.pt``, ``export_finetuned``)."""
    from midol_cli.checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run dir '{run_dir}' does not exist")
    target = Path(out_file) if out_file else run_dir / "export" / ENCODER_FILE
    if (run_dir / "best.pt").is_file():  # only supervised runs write one (train.engine.BEST_NAME)
        return export_finetuned(run_dir / "best.pt", target)
    found = list_checkpoints(run_dir)
    if not found:
        raise UsageError(f"'{run_dir}' holds no checkpoint (checkpoints/ckpt-*.pt); pre-train first")
    return export_checkpoint(found[-1], target, which)


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of an exported encoder, decoded (arch_kwargs, mean, std, modalities as Python values)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"exported encoder '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise UsageError(f"'{path}' is not a readable safetensors file ({type(e).__name__})") from None
    if meta.get("format") != "midol-export-1":
        raise UsageError(
            f"'{path}' is not a midol export (no midol metadata); use timm:<arch>=<file> instead"
        )
    out: dict[str, Any] = dict(meta)
    for k in ("arch_kwargs", "mean", "std", "modalities", "expert_map"):
        out[k] = json.loads(meta[k])
    out["init"] = json.loads(meta["init"]) if meta.get("init") else None
    out["img_size"] = int(meta["img_size"])
    out["n_experts"] = int(meta["n_experts"])
    return out


def load_exported_encoder(path: str | Path, lenient: bool = False):
    """Rebuild the encoder of an export: (module in eval mode, EncoderSpec, metadata)."""
    from midol_cli.models.encoder import EncoderSpec, build_encoder

    meta = read_export_meta(path)
    spec = EncoderSpec(
        arch=meta["arch"],
        img_size=meta["img_size"],
        arch_kwargs=meta["arch_kwargs"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        pooling=meta.get("pooling", "default"),
    )
    model = build_encoder(spec, weights=str(path), lenient=lenient, weights_format="midol-export")
    return model.eval(), spec, meta


def load_exported_projector(encoder_path: str | Path, in_dim: int):
    """The MoE projector + router saved beside an exported encoder, or None if absent."""
    from safetensors.torch import load_file

    from midol_cli.models.moe import MoEProjector

    cand = projector_path(encoder_path)
    if not cand.is_file():
        return None
    read_export_meta(cand)  # a midol export, or a one-line error
    # Shaped by its own tensors: a matched width (projector.match_params) or k experts per modality
    # (projector.experts_per_modality) need no recipe to rebuild.
    proj = MoEProjector.from_state_dict(load_file(str(cand)))
    if proj.router.in_features != in_dim:
        raise UsageError(f"projector '{cand}' reads {proj.router.in_features} features, the encoder gives "
                         f"{in_dim}")
    return proj.eval()


FOLDER_WEIGHTS = "model.safetensors"


def export_folder(run_dir: str | Path, out_dir: str | Path | None = None, which: str = "teacher",
                  study: str | Path | None = None) -> dict[str, Path]:
    """A self-describing model folder (default ``RUN_DIR/export/timm``): ``model.safetensors`` (timm
    names), ``config.json`` (timm's Hugging Face layout, so ``timm.create_model("local-dir:DIR",
    pretrained=True)`` rebuilds it and loads the folder's own weights file, with no download),
    ``projector.safetensors`` and a model card ``README.md``.
    Written into a temporary folder and renamed into place, so a folder that exists is complete."""
    import shutil
    import tempfile

    from midol_cli.artifacts import write_json_atomic, write_text_atomic
    from midol_cli.models.card import model_card, timm_config

    run_dir = Path(run_dir)
    target = Path(out_dir) if out_dir else run_dir / "export" / "timm"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        paths = export_run(run_dir, tmp / FOLDER_WEIGHTS, which)
        meta = read_export_meta(paths["encoder"])
        enc, _, _ = load_exported_encoder(paths["encoder"])
        n_params = sum(p.numel() for p in enc.parameters())
        cfg = timm_config(meta, enc.num_features)
        write_json_atomic(tmp / "config.json", cfg)
        write_text_atomic(tmp / "README.md", model_card(run_dir, meta, n_params, enc.num_features,
                                                        Path(study) if study else None))
        proj = paths.get("projector")  # a fine-tuned encoder has none
        if proj is not None and proj.name != PROJECTOR_FILE:
            proj.rename(tmp / PROJECTOR_FILE)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"folder": target, "weights": target / FOLDER_WEIGHTS, "config": target / "config.json",
            "card": target / "README.md", "projector": target / PROJECTOR_FILE}


def export_onnx(run_dir: str | Path, out_file: str | Path | None = None, which: str = "teacher",
                opset: int = 18) -> dict[str, Any]:
    """The encoder as ONNX (``RUN_DIR/export/encoder.onnx`` by default) with a dynamic batch axis,
    checked with onnxruntime on CPU: the ONNX outputs must equal PyTorch's (max abs difference 1e-4
    on a batch of 2). Needs the ``onnx`` extra; returns the file and the measured difference."""
    from midol_cli.extras import has, missing_message

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if not has(m)]
    if missing:  # checked before torch is imported or anything is exported
        raise UsageError(missing_message("ONNX export", ", ".join(missing), "onnx"))

    import torch

    from midol_cli.artifacts import atomic_path
    run_dir = Path(run_dir)
    enc_file = run_dir / "export" / ENCODER_FILE
    if not enc_file.is_file():
        export_run(run_dir, enc_file, which)
    enc, spec, meta = load_exported_encoder(enc_file)
    enc = enc.float().eval()
    target = Path(out_file) if out_file else run_dir / "export" / "encoder.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn(2, 3, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(0))
    with atomic_path(target) as tmp:
        import contextlib
        import io
        import warnings

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                enc,
                (x,),
                str(tmp),
                input_names=["pixel_values"],
                output_names=["features"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                opset_version=opset,
                external_data=False,
            )
        diff = _check_onnx(tmp, enc, spec.img_size)
    return {"file": target, "max_abs_diff": diff, "opset": opset, "img_size": spec.img_size}


def _check_onnx(path: Path, enc, img_size: int) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    worst = 0.0
    for batch in (1, 3):  # a batch size other than the traced one: the batch axis is dynamic
        x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = enc(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        if got.shape != want.shape:
            raise UsageError(f"ONNX export gives features of shape {got.shape}, PyTorch {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > 1e-4:
        raise UsageError(f"ONNX export does not match PyTorch (max abs difference {worst:.2e} > 1e-4); "
                         "the file was not written")
    return worst

"""The model card (README.md) and timm config.json of an exported model folder.

The card says what a reader deciding whether to use the model needs: what it is and how to load it,
what data it was pre-trained on (from the shards' index: images per modality and split, the
manifests it came from), the recipe and its hash, the released weights it started from, the study
table where one exists, and the intended use and its limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def timm_config(meta: dict[str, Any], num_features: int) -> dict[str, Any]:
    """``config.json`` in timm's Hugging Face layout (what ``timm.create_model("local-dir:DIR")`` and
    ``hf-hub:`` read): architecture, constructor arguments and the preprocessing midol evaluates with
    (shorter side resized bicubic to the input size, centre crop, the recorded mean/std)."""
    size = int(meta["img_size"])
    model_args = {"img_size": size, **meta["arch_kwargs"]}
    return {
        "architecture": meta["arch"],
        "num_classes": 0,
        "num_features": int(num_features),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "num_classes": 0,
            "license": "see README.md",
        },
        "midol": {
            k: meta.get(k)
            for k in ("midol_version", "recipe_hash", "step", "which", "modalities", "init", "pooling")
        },
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def data_summary(run_dir: Path) -> list[str]:
    """Markdown lines describing the pre-training data, from run.json's shard folder and its index."""
    run = _read_json(run_dir / "run.json") or {}
    shards = run.get("shards")
    index = _read_json(Path(shards) / "index.json") if shards else None
    if not index:
        return [
            "The shard index of this run is not available here, so the pre-training data cannot be "
            "summarised."
        ]
    totals = index.get("totals", {})
    lines = [f"{totals.get('samples', '?')} images in {totals.get('shards', '?')} shards "
             f"(shard index sha256 `{run.get('shard_index_sha', '?')}`).", "",
             "| modality | " + " | ".join(sorted(totals.get("per_split", {}))) + " | total |",
             "|---|" + "---|" * (len(totals.get("per_split", {})) + 1)]
    splits = sorted(totals.get("per_split", {}))
    for mod, per in sorted(totals.get("counts", {}).items()):
        lines.append(
            f"| {mod} | " + " | ".join(str(per.get(s, 0)) for s in splits) + f" | {sum(per.values())} |"
        )
    inputs = index.get("inputs") or []
    if inputs:
        lines += ["", "From the manifests:"]
        for item in inputs[:20]:  # shard index `inputs`: path, manifest_hash, samples, root
            if isinstance(item, dict):
                name = Path(str(item.get("path", "?"))).name
                extra = [f"{item['samples']} images" if "samples" in item else "",
                         f"manifest hash `{item['manifest_hash']}`" if item.get("manifest_hash") else ""]
                extra = [e for e in extra if e]
                lines.append(f"- `{name}`" + (f" ({', '.join(extra)})" if extra else ""))
        if len(inputs) > 20:
            lines.append(f"- ... and {len(inputs) - 20} more")
    split = _recipe_split(run_dir)
    if split:
        lines += [
            "",
            f"Pre-training read only the `{split}` split (recipe `data.split`); the other splits' images "
            "were held out of pre-training.",
        ]
    elif split is None:
        lines += [
            "",
            "Pre-training read every split (recipe `data.split: null`): evaluate only on other images.",
        ]
    return lines


def _recipe_split(run_dir: Path) -> str | None | bool:
    """The run's ``data.split`` (None: all splits); False when its recipe.yaml cannot be read."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import load_yaml

    try:
        data = load_yaml(run_dir / "recipe.yaml") or {}
        return (data.get("data") or {}).get("split", "train")
    except (UsageError, AttributeError):
        return False


def find_study(run_dir: Path, study: Path | None) -> Path | None:
    """``study.md`` given (a file or a study folder), or the one of the study this run dir belongs to
    (``STUDY/runs/<variant>-s<seed>``)."""
    if study is not None:
        cand = study / "study.md" if study.is_dir() else study
        return cand if cand.is_file() else None
    cand = run_dir.resolve().parent.parent / "study.md"
    return cand if run_dir.resolve().parent.name == "runs" and cand.is_file() else None


def model_card(
    run_dir: Path, meta: dict[str, Any], num_params: int, num_features: int, study: Path | None
) -> str:
    recipe = _read_json(run_dir / "run.json") or {}
    name = run_dir.resolve().name
    mods = ", ".join(meta.get("modalities") or []) or "?"
    init = meta.get("init")
    arch_kwargs = json.dumps(meta["arch_kwargs"]) if meta["arch_kwargs"] else ""
    which = str(meta.get("which", "teacher"))
    tuned = which.startswith("finetuned")  # export_finetuned: "finetuned (full|linear|lora)", step = epoch
    made = f"fine-tuned ({which.partition('(')[2].rstrip(')') or 'full'})" if tuned else "pre-trained"
    weights = (f"the best epoch's encoder (epoch {meta.get('step', '?')})" if tuned
               else f"the {which} at step {meta.get('step', '?')}")
    out = [
        f"# midol encoder: {name}",
        "",
        f"An {'' if tuned else 'M-IDoL '}encoder {made} by midol {meta.get('midol_version', '')} on "
        f"{mods} images: a headless `{meta['arch']}` ({num_params / 1e6:.1f} M parameters) giving a "
        f"{num_features}-d feature per image.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{meta['arch']}` {arch_kwargs} |",
        f"| input | {meta['img_size']} px RGB; shorter side resized (bicubic), centre crop |",
        f"| normalisation | mean {list(meta['mean'])}, std {list(meta['std'])} |",
        f"| weights | {weights} |",
        f"| recipe hash | `{meta.get('recipe_hash', '')}` |",
        f"| started from | {_init_text(init)} |",
        *([f"| command | `{recipe['command']}` |"] if recipe.get("command") else []),
        "",
        "## Loading",
        "",
        "```python",
        "import timm",
        "model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()",
        "cfg = timm.data.resolve_data_config({}, model=model)   # the preprocessing above",
        "transform = timm.data.create_transform(**cfg)",
        "```",
        "",
        "Or with plain PyTorch: build the same timm architecture with `num_classes=0` and the arguments "
        "in `config.json` (`model_args`), and load `model.safetensors` with `safetensors.torch.load_file`. "
        "`projector.safetensors` holds the MoE projector and router, used by `midol embed` to route images "
        "of unknown modality.",
        "",
        "## Pre-training data",
        "",
        *data_summary(run_dir),
        "",
    ]
    out += _evaluation_section(run_dir, study) + _use_and_limits(mods)
    return "\n".join(out)


def _evaluation_section(run_dir: Path, study: Path | None) -> list[str]:
    """The card's evaluation section: the run's study if one is found, else where to get one."""
    out: list[str] = []
    found = find_study(run_dir, study)
    if found is not None:
        out += [
            "## Evaluation: the study",
            "",
            f"From `{found}`:",
            "",
            found.read_text(encoding="utf-8").strip(),
            "",
        ]
    else:
        out += [
            "## Evaluation",
            "",
            "No study was found for this run. `midol study` measures the model against its "
            "ablations and its own initialisation with paired confidence intervals; `midol probe` and "
            "`midol report` compare it with other models on your labelled data.",
            "",
        ]
    return out


def _use_and_limits(mods: str) -> list[str]:
    """The card's intended-use and limitations sections."""
    return [
        "## Intended use",
        "",
        f"A frozen or fine-tuned feature extractor for research on {mods} images: linear probes, k-NN, "
        "fine-tuning and retrieval. It is **not a medical device** and was not validated for diagnosis, "
        "triage or any clinical decision.",
        "",
        "## Limitations",
        "",
        "- It has seen only the modalities above, from the sources in the manifests; images from other "
        "scanners, sites, populations or stains may be represented worse, and routing flags images unlike "
        "any training modality as unknown.",
        "- Self-supervised features carry the biases of the pre-training data (site, device, demographics); "
        "evaluate per subgroup before any use on people.",
        "- Results depend on the preprocessing above; other normalisation or input sizes change the "
        "features.",
        "",
    ]


def _init_text(init: dict[str, Any] | None) -> str:
    if not init:
        return "random initialisation"
    return f"`{init.get('weights')}` (sha256 `{str(init.get('sha256', ''))[:16]}`, {init.get('format')})"

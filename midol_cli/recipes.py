"""Recipes: YAML checked by pydantic, with ``key.sub=value`` overrides.

Rules (ARCHITECTURE.md): defaults live in code, YAML files override only what
differs, unknown keys are errors (``extra="forbid"``), every problem is reported
at once with its dotted key and the bad value, and the resolved recipe is
written next to every output.

A YAML file may start with ``inherit: other.yaml`` (relative to itself): the
other file is loaded first and this one is merged over it. Ablation recipes use
this so that each is a one-line switch away from its parent.
"""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from midol_cli.errors import UsageError
from midol_cli.recipe_files import (  # noqa: F401  (the recipe API: loaders are re-exported here)
    MAX_INHERIT_DEPTH,
    PACKAGED_DIR,
    _merge,
    _Whole,
    load_yaml,
    packaged_recipes,
    parse_overrides,
    parse_yaml,
    read_yaml,
    recipe_description,
    resolve_recipe,
)
from midol_cli.suggest import did_you_mean, keys_at

T = TypeVar("T", bound=BaseModel)


def _numeric(annotation: Any) -> bool:
    """True when a field takes numbers (int, float, their optional/tuple forms) and never a bool."""
    args = typing.get_args(annotation)
    if annotation is bool or bool in args:
        return False
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in args if a is not Ellipsis)


def _bools_in(value: Any) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, bool) or (
        isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


class Strict(BaseModel):
    # allow_inf_nan=False: a non-finite hyper-parameter (optim.lr=.inf) is refused before a step is taken.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1 (train.steps=true runs one step): a bool where a number belongs
        # is a mistake. Checked here once for every recipe and settings model, not per field (issue 25.10).
        field = cls.model_fields.get(info.field_name or "")
        ann = field.annotation if field is not None else None
        if ann is not None and _bools_in(value) and _numeric(ann):
            raise ValueError("must be a number, not true/false")
        return value


def plain_name(v: str) -> str:
    """A run name becomes a folder under ``runs/``: one plain name, so it never writes elsewhere."""
    if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0") or v.startswith("~"):
        raise ValueError("must be a plain name without '/', '\\', '..' or a leading '~' (it names the run's "
                         "folder under runs/)")
    return v


# ---------------------------------------------------------------- pretraining


class ModelCfg(Strict):
    arch: str = Field("swin_base_patch4_window7_224", description="any timm model name")
    img_size: int = Field(224, ge=16)
    arch_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra timm constructor args (tiny test models: embed_dim, depths, "
                                          "...)"
    )
    weights: str | None = Field(
        None,
        description="start student and teacher from released weights: a local .pth/.safetensors in timm "
        ""
        ""
        ""
        "names (or any format `midol models` documents), or NAME=FILE for a registry model; loaded strictly",
    )
    weights_lenient: bool = Field(False, description="load what fits of model.weights; the rest stays at "
                                                     "random init")
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    grad_checkpointing: bool = False


class ProjectorCfg(Strict):
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    n_prototypes: int = Field(4096, ge=2)
    n_layers: int = Field(3, ge=1)
    shared_expert: bool = Field(False, description="ablation no_moe: one expert for every modality (K=1)")
    match_params: bool = Field(
        False, description="with shared_expert: size the one expert's hidden width so the projector has as "
        "many parameters as the one-expert-per-modality projector (within 2%; issue 28.2)")
    modality_router: bool = Field(
        False, description="with shared_expert: keep a router over the modalities, so L_route (and what it "
        "does to the encoder) stays as in M-IDoL")
    experts_per_modality: int = Field(
        1, ge=1, description="k experts in each modality's block, one chosen per image by a learned top-1 "
        "gate, kept in use by loss.w_balance (issue 28.7); 1: one expert per modality")


class LossCfg(Strict):
    intra: Literal["distill", "contrastive"] = "distill"
    w_intra: float = Field(1.0, ge=0)
    w_inter: float = Field(1.0, ge=0)
    w_route: float = Field(0.1, ge=0)
    route_detach: bool = Field(
        False, description="train the router on detached features: L_route does not shape the encoder"
    )
    negatives: Literal["modality", "all"] | None = Field(
        None, description="the intra term's negatives (contrastive) or centre (distill): the image's own "
        "modality, or every image; default: modality with one expert per modality, all with a shared expert")
    w_balance: float = Field(0.01, ge=0, description="load balancing of projector.experts_per_modality > 1")
    inter_ramp_frac: float = Field(
        0.1, ge=0, le=1, description="w_inter rises linearly over this fraction of steps"
    )
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0)
    teacher_temp_warmup: float = Field(0.04, gt=0, description="teacher temperature at step 0")
    teacher_temp_warmup_frac: float = Field(0.1, ge=0, le=1)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    contrastive_temp: float = Field(0.1, gt=0)
    queue_size: int = Field(1024, ge=0, description="per-modality queue of teacher keys (contrastive)")
    freeze_prototypes_frac: float = Field(0.02, ge=0, le=1, description="prototype layer frozen for this "
                                                                        "fraction")

    @model_validator(mode="after")
    def _some_term(self) -> LossCfg:
        if self.w_intra == 0 and self.w_inter == 0 and self.w_route == 0:
            raise ValueError("at least one of w_intra, w_inter, w_route must be > 0")
        return self


class AugCfg(Strict):
    """Augmentations for one modality. Views are (global_views x img_size) + (local_views x local_size)."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.0, ge=0, le=0.5)
    jitter_p: float = Field(0.8, ge=0, le=1)
    blur_p: float = Field(0.2, ge=0, le=1)
    blur_sigma: tuple[float, float] = Field(
        (0.1, 2.0), description="Gaussian blur sigma range, pixels of the view"
    )
    noise: float = Field(0.0, ge=0, le=0.5, description="sensor-noise std drawn from [0, noise] (intensity "
                                                        "0..1)")
    noise_p: float = Field(0.5, ge=0, le=1)
    grayscale: bool = Field(False, description="the modality is grayscale: colour jitter touches intensity "
                                               "only")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1] <= 1):
            raise ValueError("crop_scale must satisfy 0 < min <= max <= 1")
        return v

    @field_validator("blur_sigma")
    @classmethod
    def _sigma(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError("blur_sigma must satisfy 0 < min <= max")
        return v


def default_augs() -> dict[str, AugCfg]:
    """Per-modality defaults: no hue for grayscale modalities, flips/rotations where anatomy allows."""
    return {
        # Chest X-ray: left/right matters (heart side), so no horizontal flip.
        "xray": AugCfg(hflip=False, saturation=0.0, grayscale=True, crop_scale=(0.5, 1.0)),
        "fundus": AugCfg(hflip=True, vflip=False, hue=0.02, saturation=0.2),
        "oct": AugCfg(hflip=True, saturation=0.0, grayscale=True, crop_scale=(0.5, 1.0)),
        "dermoscopy": AugCfg(hflip=True, vflip=True, rot90=True, hue=0.05),
        # Histology has no canonical orientation: all 8 dihedral transforms are valid.
        "pathology": AugCfg(hflip=True, vflip=True, rot90=True, hue=0.05, saturation=0.3),
    }


class DataCfg(Strict):
    shards: str = Field("shards", description="folder written by `midol shard`, or shard URLs: a brace list "
                                                "of paths, file: or pipe:CMD URLs (docs/distributed.md)")
    modalities: list[str] = Field(
        default_factory=lambda: ["xray", "fundus", "oct", "dermoscopy", "pathology"]
    )
    split: Literal["train", "val", "test"] | None = Field(
        "train", description="use only this split; null for all"
    )
    global_views: int = Field(2, ge=2)
    local_views: int = Field(0, ge=0)
    local_size: int = Field(96, ge=16)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    augment: dict[str, AugCfg] = Field(default_factory=default_augs)
    num_workers: int = Field(4, ge=0)
    shuffle_buffer: int = Field(2000, ge=1)
    decode: Literal["cpu", "gpu"] = Field(
        "cpu", description="pre-training views: cpu (loader workers decode and augment) or gpu (workers draw "
        "the augmentation parameters only; the training process decodes the JPEGs and renders the views on "
        "its "
        "CUDA device, data/gpu_views.py; docs/performance.md)")
    mix: Literal["proportional", "balanced"] | dict[str, float] = Field(
        "proportional",
        description="how pre-training samples modalities: proportional (to their images), balanced (equal), "
                    "or weights per modality, e.g. {xray: 0.3, fundus: 0.7} (normalised)")

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: Any) -> Any:
        if isinstance(v, dict):
            if not v:
                raise ValueError("give a weight per modality, or 'proportional' / 'balanced'")
            bad = {k: w for k, w in v.items() if not (w > 0 and w < float("inf"))}
            if bad:
                raise ValueError(f"weights must be positive and finite (got {bad})")
        return v

    @field_validator("modalities")
    @classmethod
    def _mods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one modality")
        if len(set(v)) != len(v):
            raise ValueError("modalities must be unique")
        from midol_cli.errors import UsageError
        from midol_cli.modalities import check_modality

        out = []
        for m in v:
            try:
                out.append(check_modality(m, allow_new=True))
            except UsageError as e:  # collected with the other problems, not raised alone
                raise ValueError(str(e)) from None
        return out


class OptimCfg(Strict):
    global_batch_size: int = Field(1024, ge=1, description="images per optimiser step over all ranks")
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0, description="peak LR for a global batch of 256; scaled linearly")
    min_lr: float = Field(1e-6, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(3.0, gt=0)
    encoder_lr_scale: float = Field(
        1.0, gt=0, le=1, description="encoder LR = this x the schedule's (a lower rate for released weights)")
    fused: bool = Field(True, description="fused AdamW where the device supports it")


class TrainCfg(Strict):
    steps: int = Field(100_000, ge=1)
    freeze_encoder_steps: int = Field(
        0, ge=0, description="first steps in which only the projector and router train (the encoder is kept)")
    momentum_teacher: float = Field(0.996, ge=0, le=1)
    momentum_teacher_end: float = Field(1.0, ge=0, le=1)
    routing: Literal["label", "learned"] = "label"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every rank holds the whole model; fsdp: parameters, gradients and optimiser "
        "state of student and teacher sharded over the ranks (FSDP2), checkpoints as DCP directories "
        "(docs/distributed.md)")
    seed: int = 0
    deterministic: bool = False
    log_every: int = Field(20, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    max_bad_steps: int = Field(5, ge=1)
    collapse_ratio: float = Field(
        0.95, gt=0, le=1, description="warn when teacher entropy stays above this x log P"
    )


class LoggingCfg(Strict):
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="trackers beside metrics.jsonl "
                                                             "(docs/tracking.md)")
    project: str | None = Field(None, description="wandb project / MLflow experiment; default: the recipe's "
                                                  "name")
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="offline: wandb sync "
                                                                                        "later")
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite store in the run dir "
                                                              "(mlflow.db)")
    tags: list[str] = Field(default_factory=list)

    @field_validator("backends")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each backend at most once")
        return v


class PretrainRecipe(Strict):
    name: str = "midol"
    model: ModelCfg = Field(default_factory=ModelCfg)
    projector: ProjectorCfg = Field(default_factory=ProjectorCfg)
    loss: LossCfg = Field(default_factory=LossCfg)
    data: DataCfg = Field(default_factory=DataCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    logging: LoggingCfg = Field(default_factory=LoggingCfg)

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @model_validator(mode="after")
    def _freeze_below_steps(self) -> PretrainRecipe:
        if self.train.freeze_encoder_steps and self.train.freeze_encoder_steps >= self.train.steps:
            raise ValueError(f"train.freeze_encoder_steps ({self.train.freeze_encoder_steps}) must be below "
                             f"train.steps ({self.train.steps}), or the encoder never trains")
        return self

    @model_validator(mode="after")
    def _mix_covers(self) -> PretrainRecipe:
        mix = self.data.mix
        if isinstance(mix, dict):
            mods = set(self.data.modalities)
            extra, missing = sorted(set(mix) - mods), sorted(mods - set(mix))
            if extra or missing:
                raise ValueError(
                    "data.mix must give a weight to each of data.modalities"
                    + (f"; not in data.modalities: {', '.join(extra)}" if extra else "")
                    + (f"; no weight for: {', '.join(missing)}" if missing else ""))
        return self

    @model_validator(mode="after")
    def _augs_cover(self) -> PretrainRecipe:
        defaults = default_augs()
        for m in self.data.modalities:
            if m not in self.data.augment:
                # A user-declared modality without its own augmentations gets the photographic default.
                self.data.augment[m] = defaults.get(m, AugCfg())
        return self


# ---------------------------------------------------------------- loading


# The recipe a missing-file message suggests, by schema.
_EXAMPLES = {"FinetuneRecipe": "recipes/finetune_smoke.yaml", "SegmentationRecipe": "recipes/segment.yaml"}


def format_validation_error(err: ValidationError, source: str, flags: dict[str, str] | None = None,
                            schema: type[BaseModel] | None = None) -> str:
    """Every problem on one line, ``key: message (got value)``; ``flags`` names a key's flag (a missing key
    then says how to give it); an unknown key of ``schema`` its closest (``seeed: ... 'seed'?``)."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        flag = (flags or {}).get(key)
        if e["type"] == "extra_forbidden":  # loc is never empty here: an extra key is named
            msg = "unknown key" + did_you_mean(str(e["loc"][-1]), keys_at(schema, tuple(e["loc"][:-1])))
        if e["type"] == "missing" and flags is not None:
            problems.append(f"{key}: required (give {flag + ' or ' if flag else ''}{key}=...)")
            continue
        if flag:
            key = f"{key} ({flag})"
        bad = e.get("input")
        shown = json.dumps(bad, default=str) if not isinstance(bad, dict) else "{...}"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        problems.append(f"{key}: {msg} (got {shown})")
    n = len(problems)
    return f"{source} has {n} problem{'s' if n > 1 else ''}: " + "; ".join(problems)


def validate(schema: type[T], data: dict[str, Any], source: str) -> T:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UsageError(format_validation_error(e, source, schema=schema)) from None


def load_recipe(schema: type[T], path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``path`` (or the schema defaults when None), apply overrides, validate everything at once."""
    data = (
        read_yaml(path, example=_EXAMPLES.get(schema.__name__, "recipes/smoke.yaml"))
        if path is not None
        else {}
    )
    data = _merge(data, parse_overrides(list(overrides)))
    src = f"recipe '{path}'" if path is not None else "recipe"
    if overrides:
        src += " with overrides"
    return validate(schema, data, src)


# Pre-training keys added after run dirs existed (issue 28): left out of a recipe's dict while they hold
# their default, so a run made before them keeps its recipe hash (a study reuses it) and resumes without
# a "recipe changed" refusal. A key set to anything else is written, hashed and compared as usual.
_LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "projector": {"match_params": False, "modality_router": False, "experts_per_modality": 1},
    "loss": {"negatives": None, "w_balance": 0.01},
}


def recipe_dict(recipe: BaseModel) -> dict[str, Any]:
    d = recipe.model_dump(mode="json")
    if isinstance(recipe, PretrainRecipe):
        for section, keys in _LATER_DEFAULTS.items():
            for key, default in keys.items():
                if key in d[section] and d[section][key] == default:
                    del d[section][key]
    # a fine-tuning recipe's later top-level keys (recipe_finetune: its LoRA block)
    for key, default in getattr(recipe, "LATER_DEFAULTS", {}).items():
        if d.get(key) == default:
            del d[key]
    return d


def recipe_hash(recipe: BaseModel) -> str:
    """What the run learns from: every key but ``logging`` (where metrics go changes nothing learned, so
    a run resumed or reused with other trackers is the same run)."""
    d = recipe_dict(recipe)
    d.pop("logging", None)
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_recipe(recipe: BaseModel, path: str | Path) -> None:
    """Write the resolved recipe (every default filled in) atomically as YAML."""
    from midol_cli.artifacts import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(recipe_dict(recipe), sort_keys=False))


# ---------------------------------------------------------------- fine-tuning

# The fine-tuning recipes live in recipe_finetune.py, which builds on the classes above; these names are
# looked up there on first use (PEP 562), so ``from midol_cli.recipes import FinetuneRecipe`` keeps working
# without an import cycle.
_FINETUNE_NAMES = frozenset({"FinetuneOptimCfg", "LoraCfg", "FinetuneRecipe", "SegmentationRecipe",
                             "_FinetuneBase", "augment_for", "finetune_schema"})


def __getattr__(name: str) -> Any:
    if name in _FINETUNE_NAMES:
        from midol_cli import recipe_finetune

        return getattr(recipe_finetune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

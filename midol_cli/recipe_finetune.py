"""Fine-tuning recipes: the engine's settings shared by classification and segmentation, and the LoRA
block of ``midol finetune --method lora``.

Split out of ``recipes.py`` (which re-exports every name here, so ``from midol_cli.recipes import
FinetuneRecipe`` keeps working); the rules are that module's: defaults in code, ``extra="forbid"``,
``key.sub=value`` overrides, every problem reported at once.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from midol_cli.recipes import AugCfg, LoggingCfg, Strict, default_augs, plain_name


class FinetuneOptimCfg(Strict):
    batch_size: int = Field(64, ge=1, description="global batch over all ranks")
    lr: float = Field(5e-4, gt=0, description="peak LR for a global batch of 256 (scaled linearly)")
    min_lr: float = Field(1e-6, ge=0)
    layer_decay: float = Field(0.75, gt=0, le=1, description="layer-wise LR decay (RETFound/BEiT); 1 = off")
    weight_decay: float = Field(0.05, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    clip_grad: float | None = Field(None, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)


def augment_for(augment: AugCfg | dict[str, AugCfg] | None, modality: str) -> AugCfg:
    """A fine-tuning recipe's augmentations for ``modality``: its own entry, else the code default."""
    if isinstance(augment, AugCfg):
        return augment
    if augment and modality in augment:
        return augment[modality]
    return default_augs().get(modality, AugCfg())


class LoraCfg(Strict):
    """Low-rank adapters (``--method lora``): ``W x + (alpha / rank) B A x`` on the target layers, with
    ``A`` ``[rank, in]`` and ``B`` ``[out, rank]`` trained and ``W`` frozen (Hu et al. 2021, arXiv
    2106.09685; through Hugging Face peft). Rank 8 sits in the paper's range where a larger rank adds
    little (its Table 6); alpha = 2 x rank and dropout 0.1 are peft's image-classification example's."""

    rank: int = Field(8, ge=1, description="r, the adapters' rank")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: the update is (alpha / rank) B A")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(
        None, description="layer names (suffixes) or one regular expression to adapt; default per encoder "
        "family: the attention qkv and output projections of ViT / DINOv2 / Swin (models/lora.py); a CNN "
        "has none and needs its layers named here")

    @field_validator("target_modules")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not t.strip() for t in v)):
            raise ValueError("name at least one layer (or leave it out for the encoder family's default)")
        return v


class _FinetuneBase(Strict):
    """What every fine-tuning recipe has: the engine's settings (``train.engine``)."""

    name: str = "finetune"
    epochs: int = Field(50, ge=1)
    optim: FinetuneOptimCfg = Field(default_factory=FinetuneOptimCfg)
    img_size: int | None = Field(None, ge=16, description="input size; default: the encoder's own")
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    augment: AugCfg | dict[str, AugCfg] | None = Field(
        None, description="one AugCfg, or one per modality; default: the modality's pre-training "
                          "augmentations"
    )
    early_stopping: int = Field(
        10, ge=0, description="stop after this many epochs without val improvement; 0 = off"
    )
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    num_workers: int = Field(4, ge=0)
    seed: int = 0
    ckpt_every: int = Field(1, ge=1, description="epochs between resumable checkpoints")
    n_boot: int = Field(1000, ge=10)
    max_train_samples: int | None = Field(None, ge=1, description="cap the training set (quick runs)")
    logging: LoggingCfg = Field(default_factory=LoggingCfg)

    # Keys added after run dirs existed, left out of the recipe's dict while they hold their default
    # (``recipes.recipe_dict``): older runs keep their recipe hash and resume without a "recipe changed".
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)


class FinetuneRecipe(_FinetuneBase):
    """Fine-tuning encoder + linear head on a classification task: the whole encoder (``--method full``),
    none of it (``linear``) or low-rank adapters on it (``lora``, its ``lora`` block)."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_balanced: bool = Field(False, description="weight the loss by inverse class frequency")
    lora: LoraCfg = Field(default_factory=LoraCfg, description="--method lora: the adapters (issue 29.3)")

    # run.json and the adapter's own adapter_config.json record what a LoRA run used (issue 29.3)
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {"lora": LoraCfg().model_dump(mode="json")}


class SegmentationRecipe(_FinetuneBase):
    """Fine-tuning encoder + FPN decoder on a segmentation task (CE + dice_weight x soft Dice)."""

    name: str = "segment"
    decoder_dim: int = Field(128, ge=8, description="channels of the segmentation decoder (FPN)")
    dice_weight: float = Field(1.0, ge=0)


def finetune_schema(label_type: str) -> type[_FinetuneBase]:
    """The recipe schema of a task: ``SegmentationRecipe`` for segmentation, else ``FinetuneRecipe``."""
    return SegmentationRecipe if label_type == "segmentation" else FinetuneRecipe

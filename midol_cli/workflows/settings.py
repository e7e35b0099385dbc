"""Settings of every command: one pydantic model per command, the only declaration of its options.

A field is a key (``seed=1`` on the command line, in a config YAML, or a keyword of the Python API)
and, unless its ``cli(...)`` says otherwise, the flag ``--seed``: its type, default and help (the
field's description) are what ``midol COMMAND --help`` shows, since the CLI generates its options
from these models (``cli/_config.py``). The stage's ``run(settings, reporter)`` takes the model whole.

Every command resolves its settings the same way (``settings_resolve.resolve``): the defaults, then an
optional config YAML (``inherit:`` works as in recipes), then the command's positional arguments
and the flags given on the command line, then ``key=value`` overrides; every problem is reported at
once with its dotted key. The CLI's flags are shortcuts for these keys; the Python API
(``midol_cli.api``) takes the same models. The resolved settings are written beside each output
(``write_settings``) and can be handed back to the command as its config.

Pre-training and fine-tuning keep their recipes (``recipes.py``); fine-tuning's command keys
(``FinetuneSettings``) sit beside the recipe's in the same file, the study's under ``study:``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from midol_cli.errors import UsageError
from midol_cli.eval.contamination import DEFAULT_RADIUS
from midol_cli.recipes import Strict
from midol_cli.workflows.settings_paths import (  # noqa: F401  (public here too)
    path_text,
    path_texts,
    rebase_paths,
    settings_dict,
    settings_path,
    settings_yaml,
    write_settings,
)
from midol_cli.workflows.settings_resolve import (  # noqa: F401  (public here too)
    resolve,
    settings_data,
    split_args,
    split_keys,
    validate_settings,
)

# The study's variants when none are named (workflows/study.py): midol and each ablation.
DEFAULT_VARIANTS = ("midol", "no_moe", "no_inter", "no_intra", "other_reading", "random")


def cli(flag: str | None = "", *, short: str | None = None, repeat: bool = False, metavar: str | None = None,
        arg: str | None = None) -> dict[str, Any]:
    """How a key appears on the command line (``json_schema_extra``): ``flag`` spells it ("" = ``--key``,
    ``"--a/--no-a"`` a switch pair, None = no flag: ``key=value`` only); ``short`` adds ``-x``;
    ``repeat`` makes a list or mapping a repeatable flag (else a list is comma-separated); ``arg`` makes
    it the command's positional argument, shown as ``arg`` (``RAW_DIR``; ``MANIFEST...`` takes many)."""
    return {"cli": {"flag": flag, "short": short, "repeat": repeat, "metavar": metavar, "arg": arg}}


def _csv_list(v: Any) -> Any:
    """``"a,b"`` (a flag's comma-separated form) -> ``["a", "b"]``; lists pass through."""
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return v


def _kv_dict(v: Any) -> Any:
    """``["k=v", ...]`` (a repeatable ``KEY=VALUE`` flag) -> ``{"k": "v"}``; mappings pass through."""
    if isinstance(v, list | tuple):
        out = {}
        for tok in v:
            if not isinstance(tok, str) or "=" not in tok:
                raise ValueError(f"'{tok}' must look like KEY=VALUE")
            k, val = (s.strip() for s in tok.split("=", 1))
            out[k] = val
        return out
    if isinstance(v, dict):
        return {str(k): str(x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------- data plane


class IngestSettings(Strict):
    raw_dir: Path = Field(..., description="Raw folder of images (read only; nothing is written inside it).",
                          json_schema_extra=cli(arg="RAW_DIR"))
    modality: str = Field(..., description="xray, fundus, oct, dermoscopy, pathology, ...",
                          json_schema_extra=cli(short="-m"))
    layout: str = Field("auto", description="auto (detect it) or a layout named above.")
    out: Path | None = Field(None, description="Manifest path (default: ./manifests/<RAW_DIR name>.parquet).",
                             json_schema_extra=cli(short="-o"))
    workers: int | None = Field(None, ge=1, description="Decoding processes (default: min(4, CPUs); 1 = one "
                                "decoding process).", json_schema_extra=cli(short="-j"))
    seed: int = Field(0, description="Seed of the derived train/val/test split.")
    max_pixels: int | None = Field(None, ge=1, description="Reject images with more pixels than this "
                                   "(default: 178956970).")
    new_modality: bool = Field(False, description="Accept a modality name midol does not know.")
    rehash: bool = Field(False, description="Read (hash and decode) every file again instead of reusing the "
                         "earlier manifest's rows of files whose size and modification time did not change.")
    dataset: str | None = Field(None, description="Dataset name (default: the layout's, else the folder "
                                "name).")
    labels: Path | None = Field(None, description="csv layout: the labels CSV; slides / volumes layouts: a "
                                "CSV with slide (volume), label and patient columns.")
    path_col: str | None = Field(None, description="csv layout: column with image paths.")
    label_col: str | None = Field(None, description="csv layout: column with labels.")
    group_col: str | None = Field(None, description="csv layout: patient/lesion column.")
    split_col: str | None = Field(None, description="csv layout: official split column.")
    label_sep: str | None = Field(None, description="csv layout: multi-label separator, e.g. '|'.")
    meta_cols: list[str] = Field(default_factory=list, description="csv layout: metadata columns for "
                                 "subgroup results, e.g. sex,age,site.")

    mpp: float | None = Field(None, gt=0, description="slides: micrometres per pixel of the tiles (default "
                              "0.5, about 20x).")
    tile: int | None = Field(None, ge=16, description="slides: tile side in pixels (default 224).")
    min_tissue: float | None = Field(None, ge=0, le=1, description="slides: least tissue fraction a tile "
                                     "keeps (default 0.5).")
    slide_mpp: float | None = Field(None, gt=0, description="slides: pixel size (um) of slides that record "
                                    "none (without it they are rejected).")
    max_tiles_per_slide: int | None = Field(None, ge=0, description="slides: a seeded uniform sample of this "
                                            "many tiles per slide (default 0: all).")
    part: str | None = Field(None, description="slides / volumes: only part I of N, 0 <= I < N (a SLURM "
                             "array index, or RANK/WORLD_SIZE), e.g. 0/3; `midol shard` takes the N "
                             "manifests together.", json_schema_extra=cli(metavar="I/N"))
    frames: str | None = Field(None, description="volumes: all (default), central:N (N frames around the "
                               "middle) or every:K (frames 0, K, 2K, ...).",
                               json_schema_extra=cli(metavar="all|central:N|every:K"))

    @field_validator("meta_cols", mode="before")
    @classmethod
    def _meta(cls, v: Any) -> Any:
        return [] if v is None else _csv_list(v)


class ShardSettings(Strict):
    manifests: list[Path] = Field(..., min_length=1, description="Manifest(s) written by `midol ingest` "
                                  "(e.g. one per modality).", json_schema_extra=cli(arg="MANIFEST..."))
    out: Path = Field(..., description="Folder for the shards (not inside any raw folder).",
                      json_schema_extra=cli(short="-o"))
    split: Literal["train", "val", "test"] | None = Field(None, description="Only this split: train, val or "
                                                                            "test.")
    modalities: list[str] = Field(default_factory=list, description="Only this modality (repeatable; "
                                  "default: all).", json_schema_extra=cli("--modality", repeat=True))
    max_side: int = Field(512, ge=16, description="Longer image side after resizing (never upscaled).")
    max_count: int = Field(1000, ge=1, description="Most samples per shard.")
    max_size: str = Field("256MB", description="Most bytes per shard (e.g. 256MB, 1GiB).")
    seed: int = Field(0, description="Shuffle seed (part of the plan).")
    min_shards: int = Field(16, ge=1, description="At least this many shards (fewer only with fewer "
                            "samples).")
    workers: int | None = Field(None, ge=1, description="Encoding processes (default: CPUs, up to 8).")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality for RGB images (1-100).")

    @field_validator("modalities", mode="before")
    @classmethod
    def _mods(cls, v: Any) -> Any:
        return [] if v is None else _csv_list(v)

    @field_validator("max_size")
    @classmethod
    def _size(cls, v: str) -> str:
        from midol_cli.data.shard_format import parse_size

        try:
            parse_size(v)
        except (UsageError, ValueError) as e:
            raise ValueError(str(e)) from None
        return str(v)


# --------------------------------------------------------------------------- training


class PretrainSettings(Strict):
    """``midol pretrain``'s own keys; the training itself is the recipe's (``recipes.PretrainRecipe``)."""

    out: Path | None = Field(None, description="Run dir (default: runs/<recipe name>).")
    resume: str | None = Field(None, description="'auto' (newest checkpoint in the run dir) or a ckpt file.")
    max_steps: int | None = Field(None, description="Stop after this step without changing schedules.")
    init: str | None = Field(None, description="Start student and teacher from released weights (a registry "
                             "NAME=FILE, see `midol models`; timm:ARCH=FILE as --weights takes it; or a "
                             "file); loaded strictly. Same as model.weights=...",
                             json_schema_extra=cli(metavar="NAME=FILE"))
    overwrite: bool = Field(False, description="Move a run already in the run dir aside (<run>.old-<time>) "
                            "and start afresh.")
    allow_recipe_change: bool = Field(False, description="Resume although the recipe changed (recorded as a "
                                      "new segment of run.json).")


# --------------------------------------------------------------------------- evaluation plane


class _Model(Strict):
    weights: str = Field(..., description="Run dir, export .safetensors, NAME=FILE, timm:NAME=FILE or "
                         "random:NAME.")
    model_id: str | None = Field(None, description="Model id in results (default: derived from --weights).",
                                 json_schema_extra=cli("--name"))
    weights_lenient: bool = Field(False, description="Load what fits of a partial checkpoint and leave the "
                                                     "rest "
                                  "at random init (recorded in the load report); the default refuses any "
                                  "mismatch.", json_schema_extra=cli("--weights-lenient/--weights-strict"))


class _Weights(_Model):
    batch_size: int = Field(64, ge=1, description="Images per forward pass when embedding.")
    workers: int = Field(2, ge=0, description="Data-loading processes (0: read in this process).")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if available).")
    cache: bool = Field(True, description="Reuse the embeddings cached for the same weights and data; "
                        "--no-cache recomputes them.", json_schema_extra=cli("--cache/--no-cache"))


class EmbedSettings(_Weights):
    data: str = Field(..., description="Manifest (.parquet), shard dir, or shard URLs as data.shards takes "
                      "them (shards/shard-{000000..000003}.tar, file:, pipe:CMD, ::-joined).")
    out: Path = Field(..., description="Embeddings Parquet to write.")
    plot: Path | None = Field(None, description="Folder for t-SNE PNGs (by modality, and per modality by "
                                                "label).")

    _data = field_validator("data", mode="before")(path_text)


class _TaskSettings(Strict):
    task: str = Field(..., description="Task: a name (see `midol tasks`), a task file (.yaml), or auto.")
    data: str = Field(..., description="Manifest, shard dir, shard URLs (as data.shards takes them), or the "
                      "raw download folder.")
    out: Path = Field(Path("results"), description="Results root.")
    task_options: dict[str, str] = Field(default_factory=dict, description="Task switch, e.g. "
                                         "uncertainty=u-zeros (repeatable; see `midol tasks show`).",
                                         json_schema_extra=cli("--task-option", repeat=True,
                                                               metavar="KEY=VALUE"))
    subgroups: list[str] | None = Field(
        None, description="Metadata columns to report per subgroup, e.g. sex,age,site (default: the task's "
                          "own; "
                          "'none' for no subgroups). Age is binned.")
    min_subgroup: int = Field(10, ge=1, description="Fewest positives (and negatives) a subgroup needs to be "
                              "reported.")

    @field_validator("task_options", mode="before")
    @classmethod
    def _task_opts(cls, v: Any) -> Any:
        return _kv_dict(v)

    _data = field_validator("data", mode="before")(path_text)

    @field_validator("subgroups", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        v = _csv_list(v)
        return [] if v == ["none"] else v


class ProbeSettings(_Weights, _TaskSettings):
    fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], min_length=1,
                                   description="Label fractions for the fraction probes.")
    seeds: int = Field(3, ge=1, description="Seeds per label fraction.")
    n_boot: int = Field(1000, ge=10, description="Bootstrap resamples for the CIs.")
    allow_changed: bool = Field(False, description="Probe although raw files changed since ingest (size or "
                                "modification time differs from the manifest) under their recorded labels.")
    protocol: Literal["image", "abmil"] = Field(
        "image", description="image: the per-image suite (linear, k-NN, fractions); abmil: a case-level "
                             "task's "
        "gated attention MIL on each case's tiles / B-scans, with the mean and max baselines.")
    runs: int = Field(5, ge=1, description="ABMIL runs (seeds 0..N-1) of --protocol abmil: mean ± SD over "
                                           "runs.")
    heatmaps: int = Field(0, ge=0, description="--protocol abmil: draw attention heatmaps of the N most "
                          "confident true positives and the N worst errors (needs matplotlib).")
    simpleshot: bool = Field(False, description="Also run SimpleShot few-shot (protocols "
                             "simpleshot_<shots>): centred, L2-normalised features, nearest class mean.")
    shots: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1,
                             description="--simpleshot: support images per class, one protocol each.")
    episodes: int = Field(100, ge=1, description="--simpleshot: seeded episodes per shot count.")
    retrieval: bool = Field(False, description="Also run cosine k-NN retrieval: protocols retrieval (test "
                            "against train) and retrieval_loo (within test), mAP@k, precision@k, majority@k.")

    @field_validator("fractions", "shots", mode="before")
    @classmethod
    def _fracs(cls, v: Any) -> Any:
        return _csv_list(v)

    @field_validator("fractions")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("every fraction must be in (0, 1]")
        return v


class ContaminationSettings(Strict):
    sources: list[str] = Field(..., min_length=1, description="Pre-training data: shard dirs, shard URLs "
                               "(as data.shards takes them) and/or manifests.",
                               json_schema_extra=cli(arg="SOURCES..."))
    against: list[Path] = Field(..., min_length=1, description="Test manifest to check (repeatable).",
                                json_schema_extra=cli(repeat=True))
    radius: int = Field(DEFAULT_RADIUS, description="Most differing pHash bits (of 64) for a near copy.")
    splits: list[str] = Field(default_factory=lambda: ["test"], min_length=1,
                              description="Comma-separated splits of --against to check.")
    source_splits: list[str] | None = Field(
        None, description="Only these splits of SOURCES count (e.g. train: what a run with data.split=train "
        "read); default: every row.")
    format: Literal["md", "json"] = Field("md", description="md (tables) or json (stdout).",
                                          json_schema_extra=cli(short="-f"))
    out: Path | None = Field(None, description="Write every pair to this CSV file.")
    fail_on_overlap: bool = Field(False, description="Exit with code 1 when any overlap is found.")
    _sources = field_validator("sources", mode="before")(path_texts)

    @field_validator("splits", "source_splits", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _csv_list(v)


class FinetuneSettings(_Model, _TaskSettings):
    """The command's keys; the training hyper-parameters are the fine-tuning recipe's, in the same file."""

    run_dir: Path | None = Field(None, description="Checkpoints and metrics (default: OUT/<model id>/<task>/"
                                 "run_finetune).")
    resume: str | None = Field(None, description="'auto' (newest checkpoint in the run dir) or a ckpt file.")
    method: Literal["full", "linear", "lora"] = Field(
        "full", description="What trains: full (encoder + head, protocol 'finetune'), linear (the head on a "
        "frozen encoder, 'linear_ft'; on a segmentation task a 1x1-conv dense probe, 'dense_probe') or lora "
        "(the head and low-rank adapters, 'lora_ft'; the recipe's lora block; needs midol[peft]).")
    linear: bool = Field(False, description="Alias of --method linear: freeze the encoder and train only the "
                                            "head (protocol 'linear_ft'; on a segmentation task a 1x1-conv "
                                            "dense probe, protocol 'dense_probe').")

    @model_validator(mode="before")
    @classmethod
    def _linear_is_a_method(cls, data: Any) -> Any:
        # --linear came first; it stays, as another name for --method linear (issue 29.3)
        if isinstance(data, dict) and data.get("linear") in (True, "true", "True", "1", 1):
            if data.get("method", "linear") != "linear":
                raise ValueError(f"--linear is --method linear; it contradicts --method {data['method']}")
            data = {**data, "method": "linear"}
        return data


class ExportSettings(Strict):
    run_dir: Path = Field(..., description="Run dir written by `midol pretrain`.",
                          json_schema_extra=cli(arg="RUN_DIR"))
    out: Path | None = Field(None, description="Target file or folder (default under RUN_DIR/export/).")
    which: Literal["teacher", "student"] = Field("teacher", description="teacher (default, EMA) or student.")
    format: Literal["safetensors", "folder", "onnx"] = Field("safetensors",
                                                             description="safetensors, folder or onnx.")
    study: Path | None = Field(None, description="study.md (or its folder) for the model card (default: the "
                               "study this run belongs to).")


class ReportSettings(Strict):
    results_dir: Path = Field(..., description="Folder holding results/<model>/<task>/summary.json files.",
                              json_schema_extra=cli(arg="RESULTS"))
    format: Literal["md", "csv", "json", "html"] = Field(
        "md", description="md, csv, json (stdout or --out) or html (needs --out).",
        json_schema_extra=cli(short="-f"))
    reference: str | None = Field(None, description="Add published numbers as a labelled column: 'paper' "
                                  "(M-IDoL, arXiv 2604.08936).")
    protocol: str = Field("linear", description="Protocol to tabulate: linear, knn_k10, knn_k20, "
                          "fraction_0.01, simpleshot_8, retrieval, retrieval_loo, finetune, linear_ft, "
                          "lora_ft, dense_probe, abmil... (not given: linear, and abmil for a case-level "
                          "task without linear results).", json_schema_extra=cli(short="-p"))
    metric: str | None = Field(None, description="Metric to show (default: each task's primary metric).",
                               json_schema_extra=cli(short="-m"))
    plot: Path | None = Field(None, description="Also write a bar chart (PNG) of models x tasks to this "
                              "file.")
    out: Path | None = Field(None, description="Write the report to this file (atomically) instead of "
                             "stdout.", json_schema_extra=cli(short="-o"))
    tsne: list[Path] = Field(default_factory=list, description="HTML: also embed tsne_*.png maps from this "
                             "folder (repeatable; RESULTS is searched too).",
                             json_schema_extra=cli(repeat=True))
    compare: str | None = Field(None, description="A,B: paired difference A - B per task (bootstrap CI and "
                                "p, DeLong, Holm) instead.")
    n_boot: int = Field(2000, ge=100, description="--compare: paired bootstrap replicates.")


class TrendSettings(Strict):
    studies: list[Path] = Field(..., min_length=2, description="Study folders written by `midol study` (or "
                                "their study.json), in the factor's order.",
                                json_schema_extra=cli(arg="STUDY..."))
    labels: list[str] | None = Field(None, description="Comma-separated label per study, e.g. its data "
                                     "scale (default: the folders' names).")
    baseline: str | None = Field(None, description="Variant the gaps are taken against (default: the first "
                                 "study's baseline).")
    variants: list[str] | None = Field(None, description="Comma-separated variants to compare (default: "
                                       "every variant all studies share).")
    seeds: list[int] | Literal["all"] | None = Field(
        None, description="Comma-separated seeds (default: those every study has), or all: each study's "
        "own (the change between studies is unpaired).")
    format: Literal["md", "json"] = Field("md", description="md (tables) or json.",
                                          json_schema_extra=cli(short="-f"))
    out: Path | None = Field(None, description="Write the tables to this file (atomically) instead of "
                             "stdout.", json_schema_extra=cli(short="-o"))
    plot: Path | None = Field(None, description="Also write the gaps per study as a PNG to this file.")

    @field_validator("labels", "variants", "seeds", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return v if v == "all" else _csv_list(v)


class StudySettings(Strict):
    """``study:`` keys; the pre-training recipe (every variant's base) is the rest of the settings."""

    tasks: list[str] = Field(..., min_length=1, description="Comma-separated task names, task files (.yaml), "
                             "auto, or pooled (every modality's classes in one task).")
    task_data: dict[str, str] = Field(default_factory=dict, description="Probe TASK on another manifest or "
                                      "shard dir (repeatable).",
                                      json_schema_extra=cli(repeat=True, metavar="TASK=PATH"))
    variants: list[str] | None = Field(None, description="Comma-separated built-in variants (default: "
                                       f"{','.join(DEFAULT_VARIANTS)}).")
    custom_variants: list[str] = Field(default_factory=list, description="A custom variant (repeatable).",
                                       json_schema_extra=cli("--variant", repeat=True,
                                                             metavar="NAME:KEY=VALUE,..."))
    seeds: int = Field(5, ge=1, description="Pre-training seeds per variant (0..N-1).")
    out: Path = Field(Path("study"), description="Study folder (runs/, results/, study.*).")
    n_boot: int = Field(2000, ge=100, description="Bootstrap replicates of the paired differences.")
    finetune: Path | None = Field(None, description="Also fine-tune random and midol on every task with this "
                                  "recipe.", json_schema_extra=cli(metavar="RECIPE.yaml"))
    finetune_seeds: int = Field(1, ge=0, description="Seeds to fine-tune (the first N).")
    finetune_methods: list[Literal["full", "linear", "lora"]] = Field(
        ["full"], min_length=1, description="Comma-separated fine-tuning methods of --finetune: full "
        "(protocol finetune), linear (frozen encoder: linear_ft, or dense_probe on a segmentation task) and "
        "lora (lora_ft, the peft extra).")
    workers: int = Field(1, ge=0, description="Data-loading processes for embedding.")
    device: str | None = Field(None, description="cpu | cuda (default: cuda if available).")
    protocols: list[str] = Field(["linear"], min_length=1, description="Comma-separated probe protocols "
                                 "of summary.json to compare (linear, knn_k20, ...); the first drives the "
                                 "paired statistics.")

    @field_validator("tasks", "variants", "protocols", "finetune_methods", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _csv_list(v)

    @field_validator("task_data", mode="before")
    @classmethod
    def _task_data(cls, v: Any) -> Any:
        return _kv_dict(v)


class QuickstartSettings(Strict):
    """``midol quickstart``: one sub-folder per modality -> every stage with its normal files under ``out``.
    The stage sections take that stage's keys (``ingest.seed=1``, ``shard.max_side=256``,
    ``pretrain.train.steps=2000`` (recipe keys), ``probe.seeds=1``)."""

    raw_root: Path = Field(..., description="Folder with one sub-folder per modality.",
                           json_schema_extra=cli(arg="RAW_ROOT"))
    out: Path = Field(Path("quickstart"), description="Where manifests/, shards/, runs/, results/ and "
                                                      "report.md "
                      "go.", json_schema_extra=cli(short="-o"))
    recipe: Path | None = Field(None, description="Pre-training recipe (default: the built-in Swin-B base "
                                "recipe on a GPU; without one, the CPU-sized smoke).")
    modalities: dict[str, str] = Field(
        default_factory=dict, description="sub-folder -> modality, where a folder's name does not say it",
        json_schema_extra=cli(None))
    baseline: bool = Field(True, description="Also probe the same encoder at random init (the report's "
                                             "baseline).",
                           json_schema_extra=cli("--baseline/--no-baseline"))
    ingest: dict[str, Any] = Field(default_factory=dict, description="ingest keys for every folder",
                                   json_schema_extra=cli(None))
    shard: dict[str, Any] = Field(default_factory=dict, description="shard keys", json_schema_extra=cli(None))
    pretrain: dict[str, Any] = Field(default_factory=dict, description="recipe keys over the recipe",
                                     json_schema_extra=cli(None))
    probe: dict[str, Any] = Field(default_factory=dict, description="probe keys for every labelled modality",
                                  json_schema_extra=cli(None))

    @field_validator("modalities", mode="before")
    @classmethod
    def _folders(cls, v: Any) -> Any:
        return _kv_dict(v)

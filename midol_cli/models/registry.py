"""The registry of known models (``registry.yaml``): name -> how to build, feed and pool it.

The registry is data: each entry gives a timm architecture and its arguments, the input size, the
normalisation, the pooling (``cls``, ``mean``, ``both`` or the architecture's ``default``), the
checkpoint format its users download, and where they get the file. ``--weights NAME=FILE`` builds an
``EncoderSpec`` from an entry, so every baseline gets its own preprocessing rather than ImageNet
statistics by default. Nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from midol_cli.errors import UsageError

POOLINGS = ("default", "cls", "mean", "both")
FORMATS = ("state-dict", "dinov2-hub", "mae", "dino-teacher", "hf-vit", "hf-dinov2", "open_clip",
           "openai-clip", "moco-v3", "timm-train-ema", "midol-export")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    domain: str
    format: Literal[FORMATS]  # type: ignore[valid-type]
    source: str
    arch: str | None = None  # None only for `midol` (the export says)
    arch_kwargs: dict[str, Any] = {}
    img_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pooling: Literal[POOLINGS] = "default"  # type: ignore[valid-type]

    def spec(self):
        """The ``EncoderSpec`` this entry builds."""
        from midol_cli.models.encoder import EncoderSpec

        if self.arch is None:
            raise UsageError(
                f"'{self.name}' takes its architecture from the export: pass the export or run dir"
            )
        return EncoderSpec(arch=self.arch, img_size=self.img_size, arch_kwargs=dict(self.arch_kwargs),
                           mean=self.mean, std=self.std, pooling=self.pooling)

    def missing_file_message(self, file: str) -> str:
        return (f"weights file '{file}' for {self.name} does not exist; midol never downloads weights: "
                f"get it from {self.source}")


REGISTRY_FILE = Path(__file__).with_name("registry.yaml")


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelEntry]:
    from midol_cli.recipes import load_yaml

    raw = load_yaml(REGISTRY_FILE, what="model registry")
    out: dict[str, ModelEntry] = {}
    for name, body in raw.items():
        try:
            out[name] = ModelEntry(name=name, **body)
        except ValidationError as e:  # a packaging error, not a user error: say which entry
            raise RuntimeError(f"registry entry '{name}' is invalid: {e}") from None
    return out


def get_entry(name: str) -> ModelEntry:
    reg = registry()
    if name not in reg:
        import difflib

        close = difflib.get_close_matches(name, list(reg), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"'{name}' is not a known model{hint}; `midol models` lists them")
    return reg[name]


def is_entry(name: str) -> bool:
    return name in registry()


def parse_named(weights: str) -> tuple[ModelEntry, str] | None:
    """``NAME=FILE`` with NAME in the registry -> (entry, file); anything else -> None."""
    if "=" not in weights or Path(weights).exists():
        return None
    name, file = weights.split("=", 1)
    if "/" in name or not name:
        return None
    return get_entry(name), file


def load_named(model, entry: ModelEntry, file: str, *, lenient: bool = False):
    """Load ``file`` into ``model`` (built from ``entry``) strictly; a checkpoint of another format
    than the entry's (a plain state dict of the same tensors is as good) is refused unless ``lenient``.
    Returns the ``LoadReport``."""
    from midol_cli.models.weights import load_file_into, load_into, read_state_dict, recognise

    if not Path(file).is_file():
        raise UsageError(entry.missing_file_message(file))
    if entry.format == "midol-export":
        return load_file_into(model, file, lenient=lenient, fmt="midol-export")
    found, sd, dropped = recognise(read_state_dict(file))
    if found not in (entry.format, "state-dict") and not lenient:
        raise UsageError(f"'{file}' is a {found} checkpoint, but {entry.name} ships as {entry.format} "
                         f"({entry.source}); pass --weights-lenient to load it anyway")
    return load_into(model, sd, f"'{file}'", lenient=lenient, fmt=found, dropped=dropped)

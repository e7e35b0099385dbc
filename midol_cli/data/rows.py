"""Rows of a manifest as a map-style dataset, read when a sample is asked for.

``RowDataset`` maps an index to a sample through a caller's loader (``load(row) -> (x, y)``); a file
that no longer decodes becomes a ``Bad`` marker (path and a short reason, never pixel data), which
``collate_skip`` drops and lists so the caller can total it. One dataset for every reader of a
manifest: fine-tuning and segmentation (``train/``) and embedding (``eval/embed.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


class Bad:
    """A row that could not be read at training time."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


class RowDataset(torch.utils.data.Dataset):
    """``(x, y, row)`` for each of ``indices``, from ``load(row)``; ``Bad`` for an unreadable row."""

    def __init__(self, indices: Sequence[int], load: Callable[[int], tuple[Any, Any]],
                 path_of: Callable[[int], str]) -> None:
        self.indices = [int(i) for i in indices]
        self.load, self.path_of = load, path_of

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from midol_cli.data.readers import ImageRejected

        row = self.indices[i]
        try:
            x, y = self.load(row)
        except ImageRejected as e:
            return Bad(self.path_of(row), e.reason)
        except (OSError, ValueError) as e:  # changed or removed since ingest
            return Bad(self.path_of(row), type(e).__name__)
        return x, y, row


def collate_skip(batch: list) -> dict[str, Any]:
    """Stack readable samples: ``{"x": [B, ...] | None, "y": [B, ...] | None, "idx": [B], "bad": [(path,
    reason)]}``."""
    good = [b for b in batch if not isinstance(b, Bad)]
    bad = [(b.path, b.reason) for b in batch if isinstance(b, Bad)]
    if not good:
        return {"x": None, "y": None, "idx": torch.zeros(0, dtype=torch.long), "bad": bad}
    ys = [g[1] for g in good]
    y = (
        torch.stack(ys)
        if isinstance(ys[0], torch.Tensor)
        else torch.as_tensor(np.stack([np.asarray(v) for v in ys]))
    )
    return {"x": torch.stack([g[0] for g in good]), "y": y,
            "idx": torch.as_tensor([g[2] for g in good], dtype=torch.long), "bad": bad}


class LoadImage:
    """``load(row) -> (transform(image), target)`` for ``RowDataset``: one manifest row read through the
    readers' decoder (ingest's caps and reject reasons). ``targets`` None gives target 0 (embedding).
    A class, not a closure, so DataLoader worker processes can take it."""

    def __init__(self, root: str | Any, paths: Sequence[str], transform: Callable[[Any], Any],
                 targets: Any = None) -> None:
        self.root, self.paths, self.transform, self.targets = str(root), paths, transform, targets

    def __call__(self, row: int) -> tuple[Any, Any]:
        import os

        from midol_cli.data.readers import read_image

        img = read_image(os.path.join(self.root, self.paths[row])).image
        return self.transform(img), (0 if self.targets is None else self.targets[row])

"""PatchCamelyon (PCam): 96x96 lymph-node patches in HDF5 arrays, binary tumour label.

PCam is not a folder of image files: each split is one array file
``camelyonpatch_level_2_split_<split>_x.h5`` (dataset ``x``, [N, 96, 96, 3]
uint8) with labels in ``..._y.h5`` (dataset ``y``, [N, 1, 1, 1]). Entries name
one patch each with a member path ``<x file>#<index>``, which
``readers.read_file_bytes``/``read_image`` understand; ingest hashes the patch
itself, so duplicates are found across the whole set.
"""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, Layout, LayoutOptions, cell, find_column, read_csv
from midol_cli.data.layouts._switches import switches
from midol_cli.data.readers import member_path
from midol_cli.errors import UsageError

CLASSES: tuple[str, ...] = ("normal", "tumor")
_PREFIX = "camelyonpatch_level_2_split_"
# (file-name split, manifest split): all three are official.
_SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))
# The Zenodo files sit in one folder; torchvision's PCAM puts them under <root>/pcam/.
_BASES = ("", "pcam")


def _name(split: str, kind: str) -> str:
    return f"{_PREFIX}{split}_{kind}.h5" if kind in ("x", "y") else f"{_PREFIX}{split}_meta.csv"


def _dataset(fh, name: str):
    """Dataset ``name``, else the file's only top-level dataset, else None."""
    import h5py

    ds = fh.get(name)
    if isinstance(ds, h5py.Dataset):
        return ds
    found = [v for v in fh.values() if isinstance(v, h5py.Dataset)]
    return found[0] if len(found) == 1 else None


class PcamLayout(Layout):
    name = "pcam"
    dataset = "pcam"
    label_source = "camelyonpatch_level_2_split_*_y.h5"
    description = (
        "PatchCamelyon (Veeling et al., Zenodo 2546921; gunzip the .h5.gz files first):\n"
        "  camelyonpatch_level_2_split_{train,valid,test}_x.h5   dataset x: [N,96,96,3] uint8\n"
        "  camelyonpatch_level_2_split_{train,valid,test}_y.h5   dataset y: [N,1,1,1] (0 normal, 1 tumor)\n"
        "  camelyonpatch_level_2_split_{train,valid,test}_meta.csv   optional, row i = patch i;\n"
        "    columns read by name: coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
        "  (the files may also sit in a pcam/ subfolder, as torchvision stores them)\n"
        "Each patch is one manifest row, path '<x file>#<index>'. Label = y (normal/tumor);\n"
        "group = wsi from the meta CSV (each patch alone without it); official split train/valid/test."
    )

    def _base(self, root: Path) -> str | None:
        for base in _BASES:
            folder = root / base
            if any((folder / _name(s, k)).is_file() for s, _ in _SPLITS for k in ("x", "y")):
                return base
        return None

    def detect(self, root: Path) -> bool:
        if self._base(root) is not None:
            return True
        return any((root / b / f"{_name(s, 'x')}.gz").is_file() for b in _BASES for s, _ in _SPLITS)

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        base = self._base(root)
        if base is None:
            gz = [b for b in _BASES if any((root / b / f"{_name(s, k)}.gz").is_file()
                                           for s, _ in _SPLITS for k in ("x", "y"))]
            if gz:
                raise UsageError(
                    f"'{root / gz[0]}' holds the compressed camelyonpatch_*.h5.gz files; decompress them "
                    "(gunzip -k *.h5.gz) into a folder of your own and pass that folder"
                )
            raise UsageError(
                f"'{root}' has no camelyonpatch_level_2_split_{{train,valid,test}}_{{x,y}}.h5 files; "
                "the pcam layout reads patches and labels from them"
            )
        from midol_cli.extras import require

        require(
            "h5py", "hdf5", "the pcam layout (HDF5 patch files)"
        )  # one clear line before any file is read
        entries: list[Entry] = []
        for split, official in _SPLITS:
            x_path, y_path = root / base / _name(split, "x"), root / base / _name(split, "y")
            if not x_path.is_file() and not y_path.is_file():
                continue
            labels = self._labels(y_path, x_path.name)
            groups = self._groups(root / base / _name(split, "meta"), len(labels), y_path.name)
            entries += self._entries(x_path, y_path.name, labels, groups, official, base)
        return entries

    def _labels(self, y_path: Path, x_name: str) -> list[int]:
        """The y array flattened to one int per patch; UsageError for a missing or damaged file."""
        import h5py
        import numpy as np

        if not y_path.is_file():
            raise UsageError(f"'{y_path}' is missing beside {x_name}; the pcam layout reads labels from it")
        try:
            with h5py.File(y_path, "r") as fh:
                ds = _dataset(fh, "y")
                if ds is None:
                    raise UsageError(f"{y_path.name} has no dataset 'y'; expected y of shape [N,1,1,1]")
                y = np.asarray(ds[()])
        except UsageError:
            raise
        except Exception:
            raise UsageError(f"'{y_path}' is not a readable HDF5 file; download it again") from None
        if y.ndim == 0 or (y.size and y.size != y.shape[0]):
            raise UsageError(f"{y_path.name} holds y of shape {tuple(y.shape)}; expected [N,1,1,1] labels")
        return [int(v) for v in y.reshape(-1)]

    def _groups(self, meta: Path, n: int, y_name: str) -> list[str] | None:
        """wsi per patch from the meta CSV (row i = patch i), or None when the CSV is absent."""
        if not meta.is_file():
            return None
        header, rows = read_csv(meta, "PCam meta file")
        i_wsi = find_column(header, ("wsi",), meta, self.name)
        if len(rows) != n:
            raise UsageError(
                f"{meta.name} has {len(rows)} rows but {y_name} has {n} labels; both must come from the same "
                "PCam split (row i describes patch i)"
            )
        return [cell(r, i_wsi) for r in rows]

    @staticmethod
    def _entries(
        x_path: Path, y_name: str, labels: list[int], groups: list[str] | None, split: str, base: str
    ) -> list[Entry]:
        import h5py

        rel = f"{base}/{x_path.name}" if base else x_path.name
        n_x: int | None = None
        missing = ""
        if not x_path.is_file():
            missing = f"{x_path.name} is missing"
        else:
            try:
                with h5py.File(x_path, "r") as fh:
                    ds = _dataset(fh, "x")
                    n_x = int(ds.shape[0]) if ds is not None and ds.ndim >= 1 else None
            except Exception:
                n_x = None  # the reader rejects each patch of a damaged file with its own reason
        out: list[Entry] = []
        for i in range(max(len(labels), n_x or 0)):
            path = member_path(rel, i)
            group = groups[i] if groups is not None and i < len(groups) and groups[i] else ""
            if i >= len(labels):
                out.append(Entry(path, "", [], group, split, f"no label in {y_name}"))
                continue
            y = labels[i]
            label = CLASSES[y] if y in (0, 1) else ""
            reason = missing or ("" if label else f"invalid label {y} in {y_name}")
            out.append(Entry(path, label, [label] if label else [], group, split, reason))
        return out


LAYOUT = PcamLayout()

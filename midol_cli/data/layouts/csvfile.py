"""Generic labels-CSV layout: any folder plus a CSV naming each image's path and label columns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from midol_cli.data.layouts import (
    SUPPORTED_EXTENSIONS,
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    normalize_split,
    read_csv,
    read_meta,
    split_labels,
    strip_ext,
)
from midol_cli.errors import UsageError


def _positive(value: str) -> bool:
    """A 0/1 indicator cell: 1, 1.0, true, yes (any case) are positive; anything else is not."""
    v = value.strip().lower()
    if v in ("true", "yes", "y", "t"):
        return True
    try:
        return float(v) == 1.0
    except ValueError:
        return False


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


class CsvLayout(Layout):
    name = "csv"
    dataset = ""  # the raw folder's name
    label_source = "the labels CSV"
    description = (
        "Any folder of images plus a labels CSV (never auto-detected):\n"
        "  --labels FILE --path-col COL --label-col COL [--group-col COL] [--split-col COL] "
        "[--label-sep '|']\n"
        "(a task file may instead list several 0/1 label columns: one per label, multi-label)\n"
        "Paths are relative to the raw folder; a name without extension (IDRiD) or with another\n"
        "extension is matched by stem. Split values: train/val/test (valid, validation, testing).\n"
        "Group = --group-col, else the image's own path."
    )

    def detect(self, root: Path) -> bool:
        # Which columns mean what cannot be guessed safely (never infer labels by position).
        return False

    @staticmethod
    def _resolve(value: str, root: Path, index: FileIndex) -> list[str]:
        """Files a CSV cell may name: exact relative path, else same folder + same stem, else any folder."""
        v = value.replace("\\", "/").strip()
        if Path(v).is_absolute():
            try:
                v = Path(v).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                return []
        v = str(PurePosixPath(v))
        if v in index.paths:
            return [v]
        pv = PurePosixPath(v)
        stem = PurePosixPath(strip_ext(v)).name if pv.suffix.lower() in SUPPORTED_EXTENSIONS else pv.name
        hits = index.stem_matches(stem)
        if str(pv.parent) not in ("", "."):
            hits = [h for h in hits if _parent(h) == str(pv.parent)]
        return hits

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        if opts.labels is None:
            raise UsageError("--layout csv needs --labels FILE (the CSV with one row per image)")
        if not opts.path_col or not (opts.label_col or opts.label_cols):
            raise UsageError("--layout csv needs --path-col and --label-col (the CSV's column names)")
        csv_path = Path(opts.labels)
        header, rows = read_csv(csv_path, "labels file")
        i_path = find_column(header, (opts.path_col.strip(),), csv_path, self.name)
        i_label = (
            find_column(header, (opts.label_col.strip(),), csv_path, self.name) if opts.label_col else None
        )
        # One 0/1 column per label (multi-label tables): the image carries the names of its positive columns.
        i_flags = [(c, find_column(header, (c.strip(),), csv_path, self.name)) for c in opts.label_cols]
        i_group = (
            find_column(header, (opts.group_col.strip(),), csv_path, self.name) if opts.group_col else None
        )
        i_split = (
            find_column(header, (opts.split_col.strip(),), csv_path, self.name) if opts.split_col else None
        )
        i_meta = {c.strip(): find_column(header, (c.strip(),), csv_path, self.name) for c in opts.meta_cols}
        index = FileIndex(self.candidates(root, opts))

        resolved: list[tuple[list[str], str, list[str], str, str | None, str, dict[str, str]]] = []
        for n, row in enumerate(rows, start=2):
            value = cell(row, i_path)
            if not value:
                continue
            if i_label is not None:
                labels = split_labels(cell(row, i_label), opts.label_sep)
            else:
                labels = sorted(c for c, i in i_flags if _positive(cell(row, i)))
            where = f"{csv_path.name} line {n}"
            split = normalize_split(cell(row, i_split), where) if i_split is not None else None
            resolved.append(
                (self._resolve(value, root, index), value, labels, cell(row, i_group), split, where,
                 read_meta(row, i_meta))
            )

        # A bare name found in several folders (IDRiD's training and testing sets both hold
        # IDRiD_001.jpg) is resolved to the folder most of this CSV's images live in.
        votes = Counter(_parent(h[0]) for h, *_ in resolved if len(h) == 1)
        entries: list[Entry] = []
        for hits, value, labels, group, split, _where, meta in resolved:
            label = "|".join(labels)
            if len({_parent(h) for h in hits}) > 1:
                ranked = sorted({_parent(h) for h in hits}, key=lambda p: (-votes[p], p))
                if votes[ranked[0]] > votes[ranked[1]]:
                    hits = [h for h in hits if _parent(h) == ranked[0]]
                else:
                    reason = f"ambiguous: {len(hits)} files match '{value}' in {csv_path.name}"
                    entries.append(
                        Entry(hits[0], label, labels, group or strip_ext(hits[0]), split, reason, meta)
                    )
                    continue
            if not hits:
                path = value.replace("\\", "/")
                entries.append(
                    Entry(
                        path,
                        label,
                        labels,
                        group or strip_ext(path),
                        split,
                        f"listed in {csv_path.name} but missing",
                        meta,
                    )
                )
                continue
            for path in hits:
                entries.append(Entry(path, label, labels, group or strip_ext(path), split, meta=meta))
        return entries


LAYOUT = CsvLayout()

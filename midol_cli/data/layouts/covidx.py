"""COVIDx CXR (COVID-Net): chest radiographs from several public sources, official train/test lists."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import Entry, FileIndex, Layout, LayoutOptions
from midol_cli.data.layouts._switches import switches
from midol_cli.errors import UsageError

# Class spellings across releases -> the label emitted. v9+ (COVIDx CXR-3/4) is binary
# positive/negative; releases up to v8 use normal/pneumonia/COVID-19.
CLASSES: dict[str, str] = {
    "positive": "positive",
    "negative": "negative",
    "normal": "normal",
    "pneumonia": "pneumonia",
    "covid-19": "COVID-19",
    "covid19": "COVID-19",
}
_SPLITS = ("train", "val", "test")


def _list_file(root: Path, split: str) -> Path | None:
    """``<split>.txt``, else a versioned ``<split>_COVIDx*.txt`` (the newest name sorts last)."""
    plain = root / f"{split}.txt"
    if plain.is_file():
        return plain
    versioned = sorted(p for p in root.glob(f"{split}_COVIDx*.txt") if p.is_file())
    return versioned[-1] if versioned else None


def parse_line(line: str) -> tuple[str, str, str] | None:
    """``patient_id filename class [data_source]`` -> (patient_id, filename, raw class), or None.

    File names may hold spaces, so the patient id is the first token and the class is found
    from the end (last token in 3-column lists, second to last when data_source follows).
    """
    tok = line.split()
    if len(tok) < 3:
        return None
    if tok[-1].lower() in CLASSES or len(tok) == 3:
        return tok[0], " ".join(tok[1:-1]), tok[-1]
    return tok[0], " ".join(tok[1:-2]), tok[-2]


class CovidxLayout(Layout):
    name = "covidx"
    dataset = "covidx"
    label_source = "train.txt/test.txt"
    description = (
        "COVIDx CXR (COVID-Net, Kaggle/GitHub):\n"
        "  train.txt, test.txt (val.txt when the release has one), or train_COVIDx9A.txt-style names;\n"
        "    no header, space separated: patient_id filename class data_source\n"
        "    (older releases omit data_source)\n"
        "  train/<filename>, test/<filename>  (val/ if present; a listed file found elsewhere is used)\n"
        "Label = class: positive/negative (v9 and later) or normal/pneumonia/COVID-19 (older releases).\n"
        "Group = patient_id. Official split from the lists; val carved from train by patient if absent."
    )

    def detect(self, root: Path) -> bool:
        return _list_file(root, "train") is not None and (root / "train").is_dir()

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        switches(opts.extra, {}, self.name)
        lists = {s: _list_file(root, s) for s in _SPLITS}
        for need in ("train", "test"):
            if lists[need] is None:
                raise UsageError(
                    f"'{root}' has no {need}.txt (nor {need}_COVIDx*.txt); the covidx layout reads labels "
                    "and the official split from train.txt and test.txt"
                )
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for split in _SPLITS:
            path = lists[split]
            if path is None:
                continue
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except (OSError, UnicodeDecodeError):
                raise UsageError(f"split list '{path}' is not readable UTF-8 text") from None
            for n, line in enumerate(lines, 1):
                if line.strip():
                    entries.append(self._entry(line, n, path.name, split, index))
        return entries

    @staticmethod
    def _entry(line: str, n: int, list_name: str, split: str, index: FileIndex) -> Entry:
        parsed = parse_line(line)
        if parsed is None:
            tok = line.split()
            name = tok[-1] if tok else f"line{n}"
            return Entry(f"{split}/{name}", "", [], name, split, f"malformed line {n} in {list_name}")
        pid, filename, raw_cls = parsed
        label = CLASSES.get(raw_cls.lower(), "")
        reason = "" if label else f"unknown class '{raw_cls}' in {list_name}"
        # The split's own folder first (a name can repeat across folders), then anywhere.
        path = f"{split}/{filename}"
        if path not in index.paths:
            elsewhere = index.by_name.get(filename, [])
            if elsewhere:
                path = elsewhere[0]
            else:
                reason = reason or f"listed in {list_name} but missing"
        return Entry(path, label, [label] if label else [], pid, split, reason)


LAYOUT = CovidxLayout()

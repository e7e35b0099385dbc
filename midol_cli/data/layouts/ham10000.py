"""HAM10000 (dermoscopy, 7 diagnoses; several images per lesion)."""

from __future__ import annotations

from pathlib import Path

from midol_cli.data.layouts import (
    Entry,
    FileIndex,
    Layout,
    LayoutOptions,
    cell,
    find_column,
    optional_columns,
    read_csv,
    read_meta,
)

_CSV = "HAM10000_metadata.csv"


class Ham10000Layout(Layout):
    name = "ham10000"
    dataset = "ham10000"
    label_source = _CSV
    description = (
        "HAM10000 (Harvard Dataverse / Kaggle):\n"
        "  HAM10000_metadata.csv     header: lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "  HAM10000_images_part_1/ISIC_XXXXXXX.jpg\n"
        "  HAM10000_images_part_2/ISIC_XXXXXXX.jpg\n"
        "Label = dx (akiec, bcc, bkl, df, mel, nv, vasc); group = lesion_id; dx_type is never used\n"
        "(it leaks the label). No official split (derived). Metadata: age, sex, localization, and\n"
        "source = the 'dataset' column of newer releases (vidir_modern, rosendahl, ...)."
    )

    def detect(self, root: Path) -> bool:
        return (root / _CSV).is_file()

    def scan(self, root: Path, opts: LayoutOptions) -> list[Entry]:
        csv_path = root / _CSV
        header, rows = read_csv(csv_path, "HAM10000 metadata file")
        i_lesion = find_column(header, ("lesion_id",), csv_path, self.name)
        i_image = find_column(header, ("image_id",), csv_path, self.name)
        i_dx = find_column(header, ("dx",), csv_path, self.name)
        i_meta = optional_columns(
            header,
            {"age": ("age",), "sex": ("sex",), "localization": ("localization",), "source": ("dataset",)},
        )
        index = FileIndex(self.candidates(root, opts))
        entries: list[Entry] = []
        for row in rows:
            image_id, dx = cell(row, i_image), cell(row, i_dx)
            if not image_id:
                continue
            group = cell(row, i_lesion) or image_id
            reason = "" if dx else f"empty dx in {_CSV}"
            meta = read_meta(row, i_meta)
            # The Kaggle copy ships both HAM10000_images_part_* and lower-case duplicates of
            # them: every copy is the same lesion, so all get the label and the group.
            hits = index.stem_matches(image_id)
            if not hits:
                entries.append(
                    Entry(
                        f"HAM10000_images_part_1/{image_id}.jpg",
                        dx,
                        [dx] if dx else [],
                        group,
                        None,
                        f"listed in {_CSV} but missing",
                        meta,
                    )
                )
                continue
            for path in hits:
                entries.append(Entry(path, dx, [dx] if dx else [], group, None, reason, meta))
        return entries


LAYOUT = Ham10000Layout()

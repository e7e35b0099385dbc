"""``midol probe --protocol abmil``: a case-level task's cases (the bags of each slide's tiles or each
volume's B-scans, ``eval.cases``) through ABMIL and its mean and max baselines (``eval.case_protocols``),
the results (summary.json, predictions.parquet with case ids, attention.parquet) and, with
``--heatmaps N``, the attention heatmaps of the picked test cases (``report.heatmaps``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from midol_cli.progress import Reporter
from midol_cli.workflows.settings import ProbeSettings

HEATMAPS_DIR = "heatmaps"


def _expected_cases(src: Path, modality: str, unit: str) -> tuple[list[str] | None, str]:
    """(every case the manifest names, rejected slides and volumes too; the manifest's root), or
    (None, "") for a shard dir."""
    if not Path(src).is_file():
        return None, ""
    from midol_cli.data.manifest import read_manifest
    from midol_cli.eval.cases import manifest_cases

    df, meta = read_manifest(src)
    df = df[df["modality"].astype(str) == modality]
    labelled = df["label"].fillna("").astype(str) != ""
    cases = manifest_cases(df[labelled | (df["status"] != "ok")], unit)
    return cases, str(meta.get("root", ""))


def check_case_source(spec, s: ProbeSettings, src: Path) -> None:
    """The one-line refusals of the data before anything is embedded: labels varying within a case (a
    manifest), and ``--heatmaps`` on a shard dir (heatmaps read the slides and volumes from the manifest's
    root)."""
    from midol_cli.errors import UsageError

    if Path(src).is_file():
        from midol_cli.data.manifest import read_manifest
        from midol_cli.eval.cases import check_case_labels

        check_case_labels(read_manifest(src, only_ok=True)[0], spec.eval_task(spec.split), spec.case)
    elif s.heatmaps:
        raise UsageError(f"--heatmaps draws slides and volumes from the manifest's folder, and '{s.data}' "
                         "is a shard dir: give the manifest as --data, or drop --heatmaps and draw cases "
                         "later with `midol heatmap RUN --case ID --root RAW_DIR`")


def probe_cases(spec, s: ProbeSettings, emb, src: Path, model, out_dir: Path,
                subgroups: tuple[str, ...] | None, reporter: Reporter,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The case protocols of ``spec`` (a case-level ``TaskSpec``) on the embeddings ``emb`` (``log``: the
    protocols' lines); the summary (with ``out_dir``) as written to ``out_dir/summary.json``, its
    ``n.dropped`` the unreadable instances (tiles, B-scans) embedding left out (issue 25.4)."""
    from midol_cli.eval.case_protocols import run_case_protocols, write_case_results
    from midol_cli.eval.cases import case_data
    from midol_cli.eval.embed import dropped_summary
    from midol_cli.eval.subgroups import resolve_columns
    from midol_cli.workflows.probe_checks import record_dropped

    task = spec.eval_task(spec.split)
    unit = spec.case
    expected, root = _expected_cases(src, spec.modality, unit)
    cd = case_data(emb, task, unit, expected=expected)
    for note in cd.notes:
        reporter.line(f"  note: {note}")
    run = run_case_protocols(
        cd, task, runs=s.runs, seed=0, n_boot=s.n_boot,
        subgroups=resolve_columns(emb, spec.subgroups, subgroups),
        group_unit="patient" if unit != "patient" else "", min_positives=s.min_subgroup, log=log)
    summary = write_case_results(out_dir, cd, task, run, model.info(), emb.attrs.get("data_hash", ""),
                                 data_root=root)
    # the instances embedding left out (already printed by the caller), as for the image protocol
    dropped = dropped_summary(list(emb.attrs.get("dropped_rows") or []), spec.modality)
    cont = case_contamination(s.weights, src, cd.df["sample_id"][cd.mask("test")].tolist(), unit,
                              spec.name, spec.modality, lambda m: reporter.line(f"  {m}"))
    if cont is not None:  # written to summary.json with n.dropped
        summary["contamination"] = cont
    record_dropped(summary, dropped, out_dir)
    for name, block in summary["protocols"].items():
        if block.get("degenerate", {}).get("flag"):
            d = block["degenerate"]
            reporter.line(f"  warning: {model.id} on {spec.name}: {name} predicts '{d['top']}' for "
                          f"{d['share']:.0%} of the test {unit}s (degenerate)")
    if s.heatmaps:
        summary["heatmaps"] = draw_run_heatmaps(out_dir, s.heatmaps)
    summary["out_dir"] = str(out_dir)
    return summary


def case_contamination(weights: str, src: Path, test_cases: list[str], unit: str, name: str,
                       modality: str, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The probe's contamination check (``warn_if_contaminated``: the test rows of ``src`` against the
    shards the run behind ``weights`` pre-trained on) stated per case: one warning line naming how many
    of the ``test_cases`` have an instance (tile, B-scan) in those shards; the record for summary.json.
    None (and no line) where the check does not apply; never raises (the check is advisory)."""
    from midol_cli.eval.contamination import warn_if_contaminated

    lines: list[str] = []
    rep = warn_if_contaminated(weights, src, name, lines.append, modality)
    if rep is None:
        for line in lines:  # 'contamination check skipped (...)'
            log(line)
        return None
    try:
        case_of = _instance_cases(src, unit)
    except Exception:  # a shard dir: its rows name no case here, so the instances' line stands
        case_of = None
        for line in lines:
            log(line)
    wanted = {str(c) for c in test_cases}
    hit = sorted({str(case_of.get(p.test_path, "")) for p in rep.pairs} & wanted) if case_of else []
    record = {"test_cases": len(wanted), "cases": len(hit) if case_of else None, "first": hit[:5],
              "instances_checked": rep.checked, "instances": rep.overlaps, "exact": rep.exact,
              "near": rep.near}
    if case_of is not None and rep.overlaps:
        kind = {"slide": "tiles", "volume": "B-scans"}.get(unit, "images")
        log(f"probe: WARNING {len(hit)} of {len(wanted)} test {unit}s of {name} have {kind} in the "
            f"pre-training shards ({rep.overlaps} of {rep.checked} test {kind}: {rep.exact} exact, "
            f"{rep.near} near; first: '{hit[0] if hit else '-'}'); see midol contamination")
    return record


def _instance_cases(src: Path, unit: str) -> dict[str, str]:
    """Each ok row's path as the contamination check names it (under the manifest's root) -> its case."""
    from midol_cli.data.manifest import read_manifest
    from midol_cli.eval.cases import case_keys

    df, meta = read_manifest(src, only_ok=True)
    df = df[df["label"].fillna("").astype(str) != ""]
    base = Path(str(meta.get("root") or "")) if meta.get("root") else None
    paths = [str(base / str(p)) if base else str(p) for p in df["path"]]
    return dict(zip(paths, case_keys(df, unit).tolist(), strict=True))


def draw_run_heatmaps(out_dir: Path, n: int) -> list[dict[str, str]]:
    """``--heatmaps N``: the picked test cases' PNGs under ``out_dir/heatmaps``, recorded in summary.json
    (``heatmaps``: case, why, png relative to the run dir) for the HTML report."""
    import json

    from midol_cli.artifacts import SUMMARY_NAME, write_json_atomic
    from midol_cli.report.heatmaps import draw_heatmaps

    drawn = draw_heatmaps(out_dir, None, out_dir / HEATMAPS_DIR, n=n)
    listing = [{"case": case, "why": why, "png": Path(hm.png).relative_to(out_dir).as_posix()}
               for case, why, hm in drawn]
    summary = json.loads((out_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    summary["heatmaps"] = listing
    write_json_atomic(out_dir / SUMMARY_NAME, summary)
    return listing

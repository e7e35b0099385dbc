"""``midol probe``'s one home: one task for one model: resolve the data, embed (cached), run the probe
suite, write the results and the resolved settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.probe_checks import check_changed, dropped_rows, record_dropped
from midol_cli.workflows.probe_fewshot import add_protocols, wanted
from midol_cli.workflows.settings import ProbeSettings, write_settings


def run(s: ProbeSettings, reporter: Reporter) -> dict[str, Any]:
    """Probe ``s.weights`` on task ``s.task``; the summary (also in OUT/<model>/<task>/summary.json,
    with ``probe.yaml`` beside it)."""
    from midol_cli.paths import writable_out
    from midol_cli.tasks import resolve_task

    spec = resolve_task(s.task, s.data)
    writable_out(s.out)
    summary = probe_task(spec, s, reporter)
    write_settings(s, summary["out_dir"], "probe", folder=True)
    return summary


def probe_task(spec, s: ProbeSettings, reporter: Reporter) -> dict[str, Any]:
    """The probe of a resolved task ``spec`` (a ``tasks.TaskSpec``; a study resolves its own) with the
    keys of ``s``; embedding shows a bar on ``reporter``."""
    from midol_cli.artifacts import cache_root
    from midol_cli.eval.contamination import warn_if_contaminated
    from midol_cli.eval.embed import embed
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.results import run_probe_suite
    from midol_cli.eval.subgroups import resolve_columns
    from midol_cli.tasks import resolve_data, task_options
    from midol_cli.tasks.custom import complete_classes

    if spec.label_type == "segmentation":
        raise UsageError(f"task {spec.name} is a segmentation task: frozen-encoder probes do not apply; "
                         f"use `midol finetune --task {spec.name}`")
    check_case_task(spec, s)
    options = task_options(spec, [f"{k}={v}" for k, v in s.task_options.items()])
    src = resolve_data(spec, s.data, cache_root(), options)
    check_changed(src, s.allow_changed, reporter)
    if s.protocol == "abmil":  # a shard dir with --heatmaps, labels varying within a case: before embedding
        from midol_cli.workflows.probe_cases import check_case_source

        check_case_source(spec, s, src)
    model = load_eval_model(s.weights, s.model_id, lenient=s.weights_lenient)
    rep = getattr(model.encoder, "load_report", None)
    if rep is not None and rep.partial:
        reporter.line(f"  warning: lenient weights load: {rep.summary()}")
    if s.subgroups and Path(src).is_file():  # a misspelt --subgroups column fails before embedding, not after
        from midol_cli.data.manifest import read_manifest

        resolve_columns(read_manifest(src, only_ok=True)[0], spec.subgroups, tuple(s.subgroups))
    emb = embed(model, src, batch_size=s.batch_size, workers=s.workers, device=s.device, use_cache=s.cache,
                reporter=reporter)
    dropped = dropped_rows(emb, spec.modality, model.id, spec.name, reporter)
    emb_all, emb = emb, emb[emb["modality"] == spec.modality].reset_index(drop=True)
    if emb.empty:
        raise UsageError(f"no {spec.modality} images in '{s.data}' for task {spec.name}")
    spec = complete_classes(spec, emb, f"'{s.data}'")
    out_dir = Path(s.out) / model.id / spec.name
    subgroups = None if s.subgroups is None else tuple(s.subgroups)
    if s.protocol != "abmil":  # a case-level run states it per case (probe_cases.case_contamination)
        warn_if_contaminated(s.weights, src, spec.name, lambda m: reporter.line(f"  {m}"), spec.modality)
    if s.protocol == "abmil":
        from midol_cli.workflows.probe_cases import probe_cases

        return probe_cases(spec, s, emb, src, model, out_dir, subgroups, reporter,
                           probe_log(model.id, spec, reporter))
    summary = run_probe_suite(
        emb, spec.eval_task(spec.split), out_dir, model_info=model.info(),
        data_hash=emb.attrs.get("data_hash", ""), fractions=tuple(s.fractions), seeds=tuple(range(s.seeds)),
        n_boot=s.n_boot, split_source=spec.split, log=probe_log(model.id, spec, reporter),
        subgroups=resolve_columns(emb, spec.subgroups, subgroups), group_unit=spec.group_unit,
        aggregation=spec.aggregation, min_positives=s.min_subgroup)
    if wanted(s):  # SimpleShot / retrieval, on the same embeddings (issue 29.1, 29.2)
        add_protocols(summary, emb_all, emb, spec.eval_task(spec.split), out_dir, s,
                      probe_log(model.id, spec, reporter))
    record_dropped(summary, dropped, out_dir)
    summary["out_dir"] = str(out_dir)
    return summary


def check_case_task(spec, s: ProbeSettings) -> None:
    """``--protocol abmil``'s one-line refusals before any work: a task without a case level, and
    ``--heatmaps`` without matplotlib (or without ``--protocol abmil``, whose attention they draw)."""
    if s.protocol != "abmil":
        if s.heatmaps:
            raise UsageError("--heatmaps draws the attention of case-level runs: add --protocol abmil (a "
                             "task with a case level: slide, volume or patient)")
        return
    if wanted(s):
        raise UsageError("--simpleshot and --retrieval score images (--protocol image); drop them for "
                         "--protocol abmil, or run the image protocol separately")
    if not spec.case:
        raise UsageError(f"task {spec.name} is not case-level, so --protocol abmil has no cases: add `case: "
                         "slide` (volume, patient) to its task file, or use --task auto on a manifest of "
                         "slides or volumes whose labels are constant within each (else --protocol image)")
    if s.heatmaps:
        from midol_cli.plotting import require_plots

        require_plots("--heatmaps")


def probe_log(model_id: str, spec, reporter: Reporter):
    """The probe suite's log callback: each line names the model and the task (``m on t1: ...``) on
    ``reporter``. A degenerate-prediction warning is dropped where it means nothing (a multi-label task
    scored by AUROC/AUPRC, whose 0.5-threshold "prediction" is often the empty set)."""
    from midol_cli.eval.metrics import degenerate_matters

    def log(msg: str) -> None:
        if msg.endswith("(degenerate)") and not degenerate_matters(spec.label_type, spec.metric):
            return
        named = f"{model_id} on {msg}" if msg.startswith(f"{spec.name}: ") else msg
        reporter.line(f"  {named}")

    return log


class WarningsOnly(Reporter):
    """Passes warnings (a line that says 'warning', or the contamination check's) and bars on to
    ``inner``, nothing else: the probes inside quickstart and study, whose own lines say what happens."""

    def __init__(self, inner: Reporter) -> None:
        super().__init__()
        self.inner, self.bar = inner, inner.bar

    def start(self, label: str, total: int, completed: int = 0) -> None:
        self.inner.start(label, total, completed)

    def advance(self, completed: int, info: str = "") -> None:
        self.inner.advance(completed, info)

    def line(self, msg: str) -> None:
        if "warning" in msg.lower() or "contamination" in msg:
            self.inner.line(msg)

    def stop(self) -> None:
        self.inner.stop()

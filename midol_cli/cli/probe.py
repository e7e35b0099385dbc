"""`midol probe`: frozen-encoder evaluation (linear probe, k-NN, label fractions) on a task."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import ProbeSettings

    settings_command(app, "probe", ProbeSettings, probe, help=(
        "Evaluate a frozen encoder on a task: linear probe (L2 chosen on val), k-NN (k=10,20), "
        "label-fraction probes; 95% bootstrap CIs on test; --protocol abmil: a case-level task's slides or "
        "volumes by attention MIL with mean and max baselines. Writes results/<model>/<task>/.\n\n"
        "Examples:\n\n"
        "  midol probe --task synth-fundus --weights demo/runs/smoke --data demo/manifests/fundus.parquet\n\n"
        "  midol probe --task ham10000 --weights timm:swin_base_patch4_window7_224=swinb.pth --data "
        "~/HAM10000\n\n"
        "  midol probe results/smoke/synth-fundus/probe.yaml seeds=5 n_boot=2000"))


def probe(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import _fmt, console, progress_reporter, subgroup_lines
    from midol_cli.workflows.probe import run
    from midol_cli.workflows.settings import ProbeSettings

    s = command_settings(ctx, ProbeSettings, args, "probe", print_config=print_config)
    summary = run(s, progress_reporter(transient=True))
    c = console()
    if "case_level" in summary:
        print_cases(c, summary)
        return
    lin = summary["protocols"]["linear"]["metrics"]
    m = summary["primary_metric"]
    v = lin[m]
    c.print(f"[bold]{summary['task']['name']}[/] / {summary['model']['id']}: linear {m} {_fmt(v['value'])} "
            f"\\[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]  (n test {summary['n']['test']})")
    for k in ("knn_k10", "knn_k20"):
        if k in summary["protocols"]:
            kv = summary["protocols"][k]["metrics"][m]
            c.print(f"  {k}: {m} {_fmt(kv['value'])}")
    for line in subgroup_lines(summary["protocols"]["linear"], m):
        c.print(line)
    c.print(f"-> {summary['out_dir']}")


def print_cases(c: Any, summary: dict[str, Any]) -> None:
    """A case-level run: per protocol the mean ± SD over runs and the case-level bootstrap CI."""
    from midol_cli.cli._common import _fmt

    m, cl = summary["primary_metric"], summary["case_level"]
    c.print(f"[bold]{summary['task']['name']}[/] / {summary['model']['id']}: {cl['unit']}-level, "
            f"{summary['n']['test']} test {cl['unit']}s, {cl['runs']} abmil runs")
    for name, block in summary["protocols"].items():
        v, r = block["metrics"][m], block["runs"]["metrics"][m]
        c.print(f"  {name}: {m} {_fmt(r['mean'])} ± {_fmt(r['std'])} over {len(r['values'])} run(s)  "
                f"\\[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
    if cl.get("n_skipped"):
        c.print(f"  {cl['n_skipped']} {cl['unit']}(s) with no readable instance skipped")
    for h in summary.get("heatmaps", []):
        c.print(f"  heatmap ({h['why']}): {h['png']}")
    c.print(f"-> {summary['out_dir']}")

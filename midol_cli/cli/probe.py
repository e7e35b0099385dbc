"""`midol probe`: frozen-encoder evaluation (linear probe, k-NN, label fractions) on a task."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import ARGS_HELP, print_config_option


def register(app: typer.Typer) -> None:
    @app.command(
        "probe",
        help=(
            "Evaluate a frozen encoder on a task: linear probe (L2 chosen on val), k-NN (k=10,20), "
            "label-fraction probes; 95% bootstrap CIs on test. Writes results/<model>/<task>/.\n\n"
            "Examples:\n\n"
            "  midol probe --task synth-fundus --weights demo/runs/smoke --data demo/manifests/fundus.parquet\n\n"
            "  midol probe --task ham10000 --weights timm:swin_base_patch4_window7_224=swinb.pth --data ~/HAM10000\n\n"
            "  midol probe results/smoke/synth-fundus/probe.yaml seeds=5 n_boot=2000"
        ),
    )
    def probe(
        ctx: typer.Context,
        args: list[str] = typer.Argument(None, metavar="[CONFIG.yaml] [KEY=VALUE]...", help=ARGS_HELP),
        task: str = typer.Option(None, "--task", help="Task: a name (see `midol tasks`), a task file (.yaml), or auto."),
        weights: str = typer.Option(None, "--weights", help="Run dir, export .safetensors, timm:NAME=FILE or random:NAME."),
        data: Path = typer.Option(None, "--data", help="Manifest, shard dir, or the raw download folder."),
        out: Path = typer.Option(Path("results"), "--out", help="Results root."),
        name: str = typer.Option(None, "--name", help="Model id in results (default: derived from --weights)."),
        fractions: str = typer.Option("0.01,0.1,1.0", "--fractions", help="Label fractions for the fraction probes."),
        seeds: int = typer.Option(3, "--seeds", help="Seeds per label fraction."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for the CIs."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass when embedding."),
        workers: int = typer.Option(2, "--workers", help="Data-loading processes for embedding."),
        device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda if available)."),
        task_option: list[str] = typer.Option(None, "--task-option", help="KEY=VALUE task switch (see `midol tasks show`)."),
        subgroups: str = typer.Option(None, "--subgroups",
                                      help="Metadata columns to report per subgroup, e.g. sex,age,site (default: the "
                                           "task's own; 'none' for no subgroups). Age is binned."),
        min_subgroup: int = typer.Option(10, "--min-subgroup",
                                         help="Fewest positives (and negatives) a subgroup needs to be reported."),
        lenient: bool = typer.Option(False, "--weights-lenient/--weights-strict",
                                     help="Load what fits of a partial checkpoint and leave the rest at random init "
                                          "(recorded in the load report); the default refuses any mismatch."),
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.api.settings import ProbeSettings
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, ProbeSettings, args, FLAGS, "probe", print_config=print_config)
        summary = api.probe(s)
        from midol_cli.cli._common import console

        c = console()
        lin = summary["protocols"]["linear"]["metrics"]
        m = summary["primary_metric"]
        v = lin[m]
        from midol_cli.cli._common import _fmt  # 'n/a' for an undefined metric (None)

        c.print(f"[bold]{summary['task']['name']}[/] / {summary['model']['id']}: linear {m} {_fmt(v['value'])} "
                f"\\[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]  (n test {summary['n']['test']})")
        for k in ("knn_k10", "knn_k20"):
            if k in summary["protocols"]:
                kv = summary["protocols"][k]["metrics"][m]
                c.print(f"  {k}: {m} {_fmt(kv['value'])}")
        from midol_cli.cli._common import subgroup_lines

        for line in subgroup_lines(summary["protocols"]["linear"], m):
            c.print(line)
        c.print(f"-> {summary['out_dir']}")


# Flags -> settings keys (midol_cli.api.settings.ProbeSettings).
FLAGS = {"task": "task", "weights": "weights", "data": "data", "out": "out", "name": "model_id",
         "fractions": "fractions", "seeds": "seeds", "n_boot": "n_boot", "batch_size": "batch_size",
         "workers": "workers", "device": "device", "task_option": "task_options", "subgroups": "subgroups",
         "min_subgroup": "min_subgroup", "lenient": "weights_lenient"}

"""``midol export``'s one home: a run's encoder as safetensors + projector, a model folder, or ONNX."""

from __future__ import annotations

from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import ExportSettings, write_settings


def run(s: ExportSettings, reporter: Reporter) -> dict[str, Any]:
    """Export ``s.run_dir``; where each file went (and ``settings``: the file written beside them)."""
    from midol_cli.models.export import export_folder, export_onnx, export_run
    from midol_cli.paths import writable_out

    if s.format != "safetensors" and not s.run_dir.is_dir():
        raise UsageError(f"run dir '{s.run_dir}' does not exist")
    if s.out is not None:
        writable_out(s.out, "--out", folder=s.format == "folder")
    elif s.run_dir.is_dir():
        writable_out(s.run_dir / "export", "the run's export folder")
    if s.format == "folder":
        res = export_folder(s.run_dir, s.out, s.which, s.study)
        res["settings"] = str(write_settings(s, res["folder"], "export", folder=True))
        return res
    if s.format == "onnx":
        res = export_onnx(s.run_dir, s.out, s.which)
        res["settings"] = str(write_settings(s, res["file"], "export", folder=False))
        return res
    res = dict(export_run(s.run_dir, s.out, s.which))
    # the calibration lives beside RUN_DIR/export/encoder.safetensors (a fine-tuned encoder has no router)
    if s.out is None and "projector" in res:
        from midol_cli.eval.calibrate import calibrate_routing

        res["routing"] = calibrate_routing(s.run_dir)
    res["settings"] = str(write_settings(s, res["encoder"], "export", folder=False))
    return res

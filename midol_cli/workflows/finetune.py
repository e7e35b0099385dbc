"""``midol finetune``'s one home: an encoder + head trained on a task (``train.finetune`` does the work).

The command's keys (``FinetuneSettings``) and the training recipe sit side by side in one file; the
CLI and the Python API both resolve the pair (``resolve``) and call ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import FinetuneSettings, settings_dict, write_settings


def run(s: FinetuneSettings, recipe: Any, reporter: Reporter) -> dict[str, Any]:
    """Fine-tune ``s.weights`` on ``s.task`` with ``recipe`` (``recipes.finetune_schema`` of the task);
    the summary (rank 0; other ranks ``{}``), with the resolved settings beside it."""
    from midol_cli.paths import writable_out
    from midol_cli.tasks import resolve_task, task_options
    from midol_cli.train.finetune import run_finetune

    spec = resolve_task(s.task, s.data)
    opts = task_options(spec, [f"{k}={v}" for k, v in s.task_options.items()])
    from midol_cli.eval.embed import shard_urls

    if shard_urls(s.data) is not None:  # data.shards' forms and their one-line errors (issue 25.19)
        raise UsageError(f"'{s.data}' names shards; finetune reads images through a manifest: pass the "
                         "manifest written by `midol ingest` (or the raw folder) as --data")
    if not Path(s.data).exists():
        raise UsageError(f"data '{s.data}' for task {spec.name} does not exist; `midol tasks show "
                         f"{spec.name}` shows the expected layout")
    writable_out(s.out)
    writable_out(s.run_dir, "--run-dir")
    summary = run_finetune(spec, s.weights, s.data, recipe, out_root=s.out, name=s.model_id,
                           run_dir=s.run_dir, resume=s.resume, method=s.method, reporter=reporter,
                           options=opts, lenient=s.weights_lenient,
                           subgroups=None if s.subgroups is None else tuple(s.subgroups),
                           min_positives=s.min_subgroup)
    if summary:  # rank 0
        # the settings' paths absolute, as every written settings file's (issue 25.26)
        write_settings({**settings_dict(s), **settings_dict(recipe)}, summary["out_dir"], "finetune",
                       folder=True)
    return summary


def resolve(data: dict[str, Any], overrides: list[str], source: str, flags: dict[str, Any] | None = None,
            flag_names: dict[str, str] | None = None) -> tuple[FinetuneSettings, Any]:
    """(``FinetuneSettings``, recipe) from one mapping holding both models' keys, flags and ``key=value``
    overrides: every problem of either is reported at once."""
    from midol_cli.recipes import FinetuneRecipe, _merge, finetune_schema, parse_overrides, validate
    from midol_cli.workflows.settings import settings_data, split_keys, validate_settings

    mine, my_over, rest, rest_over = split_keys(data, overrides, set(FinetuneSettings.model_fields))
    problems, s = [], None
    try:
        merged = settings_data(FinetuneSettings, mine, flags=flags, overrides=my_over, flag_names=flag_names)
        s = validate_settings(FinetuneSettings, merged, source, flag_names)
    except UsageError as e:
        problems.append(str(e))
    schema = FinetuneRecipe
    if s is not None:
        from midol_cli.tasks import resolve_task

        schema = finetune_schema(resolve_task(s.task, s.data).label_type)
    recipe = None
    try:
        recipe = validate(schema, _merge(rest, parse_overrides(rest_over)),
                          source + (" with overrides" if overrides else ""))
    except UsageError as e:
        problems.append(str(e))
    if problems:
        raise UsageError("; ".join(problems))
    return s, recipe

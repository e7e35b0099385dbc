"""The commands' settings models for users of the Python API. They are declared once, in
``midol_cli.workflows.settings``, beside the stages that take them (``run(settings, reporter)``)."""

from midol_cli.workflows.settings import (  # noqa: F401  (re-exported)
    EmbedSettings,
    ExportSettings,
    FinetuneSettings,
    IngestSettings,
    PretrainSettings,
    ProbeSettings,
    QuickstartSettings,
    ReportSettings,
    ShardSettings,
    StudySettings,
    cli,
    resolve,
    settings_data,
    settings_path,
    settings_yaml,
    split_args,
    split_keys,
    validate_settings,
    write_settings,
)

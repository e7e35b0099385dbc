"""Every command's one home: ``<stage>.run(settings, reporter)`` (ingest, shard, pretrain, embed,
probe, finetune, export, report, quickstart; the study's in ``study_setup``), taking the command's
validated settings model (``settings``, the only declaration of its options) whole and a
``midol_cli.progress.Reporter``. The CLI and the Python API both call these.

This layer may import every package below it (data, models, losses, tasks, train, eval, report);
none of those imports it, so the packages stay acyclic.
"""

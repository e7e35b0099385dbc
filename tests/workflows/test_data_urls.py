"""issue 25.19: probe and finetune take --data in every form data.shards takes (a brace list, file:,
pipe:), with data.shards' one-line errors for the forms midol does not read (s3://, gs://, https://)."""

from __future__ import annotations

import pytest

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows import probe
from midol_cli.workflows.settings import ProbeSettings
from tests.pipeline import build_pipeline
from tests.train.test_segment import tiny_swin_export


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("urls")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIDOL_CACHE_DIR", str(base / "cache"))
    p = build_pipeline(base / "data", per_class=6, modalities=("oct",), min_shards=3)
    yield {"shards": p["shards"], "weights": f"random:{tiny_swin_export(base / 'tiny' / 'e.safetensors')}",
           "base": base}
    mp.undo()


def _probe(setup, data, out):
    s = ProbeSettings(task="synth-oct", data=str(data), out=out, weights=setup["weights"], workers=0,
                      fractions=[1.0], seeds=1, n_boot=10, batch_size=8)
    return probe.run(s, Reporter())


def test_probe_on_a_brace_list_and_pipe_urls_equals_the_shard_dir(setup, tmp_path):
    shards = setup["shards"]
    names = sorted(p.name for p in shards.glob("shard-*.tar"))
    whole = _probe(setup, shards, tmp_path / "a")
    brace = f"{shards}/shard-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"
    pipes = "::".join(f"pipe:cat {shards / n}" for n in names)
    for spec in (brace, pipes):
        got = _probe(setup, spec, tmp_path / "b")
        assert got["n"] == whole["n"], spec


def test_a_url_form_midol_does_not_read_is_one_line(setup, tmp_path):
    with pytest.raises(UsageError, match=r"cannot read 's3:' URLs directly.*pipe:aws s3 cp"):
        _probe(setup, "s3://bucket/shard-{000000..000003}.tar", tmp_path / "c")


def test_finetune_names_shards_instead_of_does_not_exist(setup, tmp_path):
    from midol_cli.recipes import finetune_schema
    from midol_cli.workflows import finetune
    from midol_cli.workflows.settings import FinetuneSettings

    names = sorted(p.name for p in setup["shards"].glob("shard-*.tar"))
    spec = f"{setup['shards']}/shard-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"
    s = FinetuneSettings(task="synth-oct", data=spec, weights=setup["weights"], out=tmp_path)
    with pytest.raises(UsageError, match=r"names shards; finetune reads images through a manifest"):
        finetune.run(s, finetune_schema("multiclass")(), Reporter())

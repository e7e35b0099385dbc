"""The rich reporter's bar moves: driven by a real stage (embedding, which `midol probe` and `midol embed`
show while they work, issue 25.22) its completed count reaches its total."""

from __future__ import annotations

import io

from rich.console import Console

from midol_cli.cli._common import RichReporter


class Recorded(RichReporter):
    """The rich reporter, its bar's state kept at every stop."""

    def __init__(self) -> None:
        super().__init__(con=Console(file=io.StringIO(), force_terminal=True))
        self.bars: list[tuple[str, float, float | None]] = []
        self.moves = 0

    def advance(self, completed: int, info: str = "") -> None:
        super().advance(completed, info)
        self.moves += 1

    def stop(self) -> None:
        if self.progress is not None:
            t = self.progress.tasks[0]
            self.bars.append((str(t.description), t.completed, t.total))
        super().stop()


def test_the_rich_bar_reaches_its_total_while_embedding(tmp_path, monkeypatch):
    from midol_cli.eval.embed import embed
    from midol_cli.eval.models import load_eval_model
    from tests.pipeline import build_pipeline

    monkeypatch.setenv("MIDOL_CACHE_DIR", str(tmp_path / "cache"))
    p = build_pipeline(tmp_path / "data", per_class=4, modalities=("oct",))
    rep = Recorded()
    df = embed(load_eval_model("random:resnet10t"), p["manifests"] / "oct.parquet", batch_size=4, workers=0,
               reporter=rep)
    assert rep.bars == [("embedding", len(df), len(df))] and rep.moves >= 2, rep.bars


def test_the_callback_adapter_moves_the_rich_bar():
    rep = Recorded()
    fn = rep.callback("reading")
    for done in range(1, 6):
        fn(done, 5)
    assert rep.bars == [("reading", 5, 5)] and rep.moves == 5

"""The HTML report in a real browser: headless Chromium renders it, takes a screenshot and dumps the DOM.

Marked ``browser``; skipped with a reason when no ``chromium`` / ``chromium-browser`` /
``google-chrome`` is on PATH (Debian: ``apt-get install chromium``). The page must render with no
console message at all (it has no script, and its Content-Security-Policy makes Chromium log any
resource that would leave the file), show its tables, and decode every embedded image. Each check
is first shown to fail on a page built to fail it, so a silent detector cannot pass the report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from midol_cli.cli.main import app
from tests.report.test_html import parse, rich_tree

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((p for p in map(shutil.which, BROWSERS) if p), None)

# CI (.ci/run, as root) installs chromium and sets this: there a missing browser fails, never skips.
REQUIRED = os.environ.get("MIDOL_REQUIRE_BROWSER", "") not in ("", "0")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None and not REQUIRED,
        reason="no chromium, chromium-browser or google-chrome "
        "on PATH: install Debian's chromium package (apt-get install chromium)",
    ),
]

# A line Chromium writes (with --enable-logging=stderr) for each console message of the page, e.g.
# '[..:INFO:CONSOLE:0] "Loading the image ... violates ... Content Security Policy ...", source: file://...'
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]|Uncaught ")

# Appended to a copy of the page (whose policy then allows this one inline script): after load, the
# body records how many images there are and how many failed to decode.
IMAGE_PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute('data-images', imgs.length + ' ' + bad);
});</script>"""


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a throw-away profile; ``--no-sandbox`` because tests may run as root."""
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    env = {**os.environ, "HOME": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


def images_decoded(tmp: Path, page: str, name: str) -> tuple[int, int]:
    """(images, images that failed to decode) of ``page`` in Chromium, via ``IMAGE_PROBE``."""
    from midol_cli.report.html import CSP

    assert CSP in page
    probe = page.replace(
        CSP, CSP.replace("default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'")
    )
    path = tmp / name
    path.write_text(probe.replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
    res = chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", path.as_uri())
    m = re.search(r'data-images="(\d+) (\d+)"', res.stdout)
    assert m, f"the image probe did not run: {res.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, Path, str]:
    if CHROMIUM is None:
        pytest.fail("MIDOL_REQUIRE_BROWSER is set but no chromium is on PATH (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("browser")
    results = rich_tree(tmp)
    out = tmp / "report.html"
    res = CliRunner().invoke(app, ["report", str(results), "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return tmp, out, out.read_text(encoding="utf-8")


def test_console_detector_sees_errors_of_a_bad_page(page):
    from midol_cli.report.html import CSP

    tmp, _, _ = page
    bad = tmp / "bad.html"
    bad.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                   '</head><body><img src="http://127.0.0.1:9/x.png"><p>bad</p></body></html>')
    res = chromium(tmp, f"--screenshot={tmp / 'bad.png'}", "--window-size=400,300", bad.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    lines = console_lines(res.stderr)
    assert lines and any("Content Security Policy" in line for line in lines), res.stderr[-2000:]


def test_report_renders_without_console_messages(page):
    from PIL import Image, ImageStat

    tmp, out, _ = page
    shot = tmp / "report.png"
    res = chromium(tmp, f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_lines(res.stderr) == []
    assert shot.is_file() and shot.stat().st_size > 20_000
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        spread = ImageStat.Stat(im.convert("L")).stddev[0]
    assert spread > 10  # text, tables and figures, not a blank page


def test_dom_holds_the_tables(page):
    tmp, out, source = page
    res = chromium(tmp, "--dump-dom", out.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_lines(res.stderr) == []
    dom = parse(res.stdout)
    # benchmark, calibration, 2 operating-point, subgroup, patient-level and provenance tables
    assert dom.tags["table"] == parse(source).tags["table"] == 7
    bench = dom.table_with("modality")
    assert [c for c, _ in bench[0]][-2:] == ["m-a", "m-b"]
    assert any(r[1][0] == "ham10000" and r[5][0] == "85.00 [83.00, 87.00] n=30" for r in bench[1:])
    assert not dom.tables_with("p (bootstrap)")  # no comparison was given: no comparison table
    for header in ("ECE [95% CI]", "threshold", "sex", "weights hash"):
        assert dom.tables_with(header), header
    assert dom.tables_starting("metric")  # patient level
    assert len(dom.imgs) == 6


def test_every_image_decodes_in_the_browser(page):
    tmp, _, source = page
    assert images_decoded(tmp, source, "probe.html") == (6, 0)
    # the probe does see a broken image
    start = source.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = source[:start] + "AAAA" + source[start + 4:]
    assert images_decoded(tmp, broken, "broken.html") == (6, 1)


def test_the_pretraining_loss_curves_render_and_decode(tmp_path):
    from tests.report.test_pretraining import make_run, results_with

    results = results_with(tmp_path, make_run(tmp_path))
    out = tmp_path / "pre.html"
    res = CliRunner().invoke(app, ["report", str(results), "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    source = out.read_text(encoding="utf-8")
    dom = chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0 and console_lines(dom.stderr) == []
    assert "Pre-training" in dom.stdout and "pre-training losses of midol-s0" in dom.stdout
    assert images_decoded(tmp_path, source, "pre-probe.html") == (1, 0)

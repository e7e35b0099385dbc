"""CI renders the HTML report in a real browser (issue 25.28): `.ci/run` installs Debian's chromium with
apt-get when no browser is on PATH and it runs as root, and makes the browser tests fail, not skip, there.

The script's browser step runs alone (`.ci/run --ensure-browser`) with a PATH of stand-ins: `id` says
who we are, `apt-get` records how it was called, `chromium` is present or not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / ".ci" / "run"


def _stand_ins(tmp: Path, uid: int, browser: bool) -> tuple[Path, Path]:
    bin_ = tmp / "bin"
    bin_.mkdir()
    calls = tmp / "apt-calls"
    scripts = {"id": f'#!/bin/sh\necho {uid}\n', "apt-get": f'#!/bin/sh\necho "$@" >> {calls}\n'}
    if browser:
        scripts["chromium"] = "#!/bin/sh\nexit 0\n"
    for name, text in scripts.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    return bin_, calls


def _ensure(tmp: Path, uid: int, browser: bool) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_, calls = _stand_ins(tmp, uid, browser)
    bash = "/bin/bash"
    res = subprocess.run([bash, str(CI), "--ensure-browser"], capture_output=True, text=True, timeout=60,
                         env={"PATH": str(bin_), "HOME": str(tmp)}, check=False)
    return res, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs /bin/bash")
def test_root_without_a_browser_installs_chromium_with_apt(tmp_path):
    res, calls = _ensure(tmp_path, 0, browser=False)
    assert res.returncode == 0, res.stderr
    assert calls == ["update -qq", "install -y -qq chromium"]


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs /bin/bash")
@pytest.mark.parametrize("uid,browser", [(0, True), (1000, False), (1000, True)])
def test_nothing_is_installed_with_a_browser_or_without_root(tmp_path, uid, browser):
    res, calls = _ensure(tmp_path, uid, browser)
    assert res.returncode == 0, res.stderr
    assert calls == []
    assert ("not root" in res.stderr) == (not browser)


def test_ci_requires_the_browser_tests_to_run_as_root():
    text = CI.read_text()
    assert "export MIDOL_REQUIRE_BROWSER=1" in text
    assert text.index("ensure_browser\n") < text.index("make test\n")
    assert os.access(CI, os.X_OK)


def test_with_the_browser_required_a_missing_chromium_fails_instead_of_skipping(tmp_path):
    import sys

    env = {**os.environ, "PATH": str(tmp_path), "MIDOL_REQUIRE_BROWSER": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           "tests/report/test_html_browser.py"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 1, res.stdout[-2000:]
    assert "MIDOL_REQUIRE_BROWSER is set but no chromium is on PATH" in res.stdout
    assert "skipped" not in res.stdout.splitlines()[-1]

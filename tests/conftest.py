from __future__ import annotations

import os

# 2-core machines: keep each test process to its share of threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)


def tiny_encoder():
    """A headless random tiny Swin at 64 px (seed 0)."""
    import torch

    from midol_cli.models.encoder import EncoderSpec, build_encoder

    torch.manual_seed(0)
    return build_encoder(EncoderSpec(img_size=64, arch_kwargs=TINY_SWIN))


def run_midol(*args, env: dict[str, str] | None = None, cwd=None, timeout: int = 300, check: bool = False):
    """The real CLI in a subprocess (``python -m midol_cli``), from the repository root unless ``cwd``.

    ``check``: assert exit 0 and show the end of stderr otherwise."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "midol_cli", *map(str, args)], cwd=cwd or root, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"midol {args[0]} failed:\n{res.stderr[-3000:]}"
    return res


def one_line_error(res, code: int = 2) -> str:
    """Assert the README's promise for bad input: exit ``code``, one ``error: ...`` line, no traceback."""
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    return lines[0]

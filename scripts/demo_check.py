"""The demo's verdict: does pre-training beat the same encoder at random init, beyond chance?

    python scripts/demo_check.py RESULTS PRETRAINED_ID RANDOM_ID

Reads the linear-probe predictions of both models on the five synth tasks and computes the paired
difference of each task's primary metric (pre-trained - random) and of their mean, with a 95%
bootstrap CI over the test patients (``midol_cli.eval.paired``). Exits 1 unless the CI of the mean
difference lies above 0: a point estimate that merely comes out higher is not evidence.
"""

from __future__ import annotations

import sys

from midol_cli.eval.paired import compare_models
from midol_cli.tasks import SYNTH_TASKS


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root, pre, rnd = sys.argv[1:]
    diffs = compare_models(root, pre, rnd, list(SYNTH_TASKS), n_boot=2000)
    print(
        f"\npaired difference {pre} - {rnd} (primary metric, x100, 95% CI over test patients):",
        file=sys.stderr,
    )
    for task in [*SYNTH_TASKS, "mean"]:
        d = diffs[task]
        print(
            f"  {task:18s} {100 * d.value:+6.1f}  [{100 * d.ci_low:+6.1f}, "
            f"{100 * d.ci_high:+6.1f}]  p={d.p_value:.3f}",
            file=sys.stderr,
        )
    mean = diffs["mean"]
    if not mean.ci_low > 0:
        print("demo check failed: the paired CI of the mean difference does not exclude 0, so pre-training "
              "is not shown to beat random init", file=sys.stderr)
        return 1
    print(
        "demo check passed: pre-training beats random init (the paired CI of the mean difference excludes 0)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

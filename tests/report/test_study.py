"""The study report (report/study.py): the degenerate-probe lines name model and task, and leave out
multi-label AUROC tasks, where "predicts ''" (the empty label set) means nothing (issue 25.23); the paired
comparison is the seed-level t-interval with its detectable effect, and no mean mixes metrics (issue 28)."""

from __future__ import annotations

import math

import pytest

from midol_cli.eval.seeds import min_detectable_effect, seed_t_interval
from midol_cli.report.study import _degenerate_lines, honest_means, render_markdown, seed_level


def test_degenerate_lines_name_model_and_task_but_skip_multilabel_auroc():
    rec = {"tasks": {"cxr": {"metric": "auroc"}, "derm": {"metric": "accuracy"}},
           "degenerate": [{"model": "midol-s0", "task": "cxr", "top": "", "share": 1.0},
                          {"model": "random-s1", "task": "derm", "top": "nv", "share": 0.97}]}
    assert _degenerate_lines(rec) == ["- random-s1 on derm: predicts 'nv' for 97% of test images"]
    rec["degenerate"] = rec["degenerate"][:1]
    assert _degenerate_lines(rec)[0].startswith("None: no probe predicts one class")


# --------------------------------------------------------------------------- issue 28.1, 28.4

SEEDS = [0, 1, 2, 3]
# task -> (metric, chance, {variant: per-seed values})
SPEC = {
    "derm": ("accuracy", 0.4, {"midol": [0.70, 0.74, 0.66, 0.72], "no_moe": [0.73, 0.75, 0.71, 0.73]}),
    "oct": ("accuracy", 0.25, {"midol": [0.80, 0.78, 0.82, 0.76], "no_moe": [0.79, 0.80, 0.80, 0.79]}),
    "cxr": ("auroc", 0.5, {"midol": [0.90, 0.86, 0.88, 0.92], "no_moe": [0.85, 0.84, 0.86, 0.88]}),
}


def _ms(vals):
    m = sum(vals) / len(vals)
    return {"mean": m, "std": math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1)), "values": vals}


def _rec():
    tasks = {t: {"metric": m, "chance": c, "modality": "x", "n_test": 100,
                 "variants": {v: _ms(vals) for v, vals in per.items()}} for t, (m, c, per) in SPEC.items()}
    variants = {"midol": [], "no_moe": ["projector.shared_expert=true"]}
    pooled = {"value": 0.01, "ci_low": -0.01, "ci_high": 0.03, "p_value": 0.3, "excludes_zero": False}
    paired = {"no_moe": {t: dict(pooled) for t in [*SPEC, "mean"]}}
    return {"recipe": "r.yaml", "overrides": [], "data": "d", "baseline": "midol", "variants": variants,
            "seeds": SEEDS, "tasks": tasks, "mean_accuracy": {v: _ms([0.7] * 4) for v in variants},
            "paired": paired, "n_boot": 200, "representation": {v: {"modality_silhouette": _ms([0.1] * 4),
                                                                    "router_accuracy": _ms([0.9] * 4),
                                                                    "effective_rank": {}, "knn_accuracy": {}}
                                                                for v in variants},
            "finetune": {}, "degenerate": []}


def _diffs(task):
    per = SPEC[task][2]
    return [a - b for a, b in zip(per["no_moe"], per["midol"], strict=True)]


def test_seed_level_is_the_t_interval_of_the_per_seed_differences():
    sl = seed_level(_rec())["no_moe"]
    for t in SPEC:
        want = seed_t_interval(_diffs(t))
        assert sl[t]["value"] == pytest.approx(want.value) and sl[t]["ci_low"] == pytest.approx(want.ci_low)
        assert sl[t]["p_value"] == pytest.approx(want.p_value) and sl[t]["df"] == 3
        assert sl[t]["mde"] == pytest.approx(min_detectable_effect(want.sd, 4))
    # cxr: -0.05, -0.02, -0.02, -0.04 -> mean -0.0325, sd 0.015: excluded 0, MDE 2.1 x sd
    assert sl["cxr"]["value"] == pytest.approx(-0.0325) and sl["cxr"]["excludes_zero"]
    assert sl["cxr"]["mde"] == pytest.approx(0.015 * min_detectable_effect(1.0, 4))
    # The mean of the two accuracy tasks, per seed; the AUROC task is never averaged with them.
    acc = [(a + b) / 2 for a, b in zip(_diffs("derm"), _diffs("oct"), strict=True)]
    assert sl["mean accuracy"]["diffs"] == pytest.approx(acc)
    assert "mean auroc" not in sl
    # Chance-normalised: diff / (1 - chance), averaged over all three tasks per seed.
    triples = zip(_diffs("derm"), _diffs("oct"), _diffs("cxr"), strict=True)
    norm = [(d / 0.6 + o / 0.75 + c / 0.5) / 3 for d, o, c in triples]
    assert sl["mean chance-normalised"]["diffs"] == pytest.approx(norm)
    assert "p_holm" in sl["derm"] and "p_holm" not in sl["mean accuracy"]


def test_means_never_mix_metrics_and_are_labelled():
    rec = _rec()
    means = {m["key"]: m for m in honest_means(rec)}
    assert set(means) == {"mean accuracy", "mean chance-normalised"}
    assert means["mean accuracy"]["per_seed"]["midol"][1] == pytest.approx((0.74 + 0.78) / 2)
    assert means["mean chance-normalised"]["per_seed"]["midol"][0] == pytest.approx(
        ((0.70 - 0.4) / 0.6 + (0.80 - 0.25) / 0.75 + (0.90 - 0.5) / 0.5) / 3)
    md = render_markdown(rec)
    table = md.split("## Linear probe")[1].split("##")[0]
    assert "| **mean** (accuracy, 2 tasks) | accuracy | |" in table
    assert "| mean, chance-normalised | (x - chance)/(1 - chance) | |" in table
    assert "| **mean** | primary |" not in table
    # One metric only: the mean row is plainly the mean, of that metric.
    for t in ("cxr",):
        del rec["tasks"][t]
    assert "| **mean** | accuracy | |" in render_markdown(rec)


def test_study_md_gives_the_seed_level_interval_and_the_detectable_effect():
    md = render_markdown(_rec())
    paired = md.split("## Paired difference")[1]
    assert "t-interval with 3 df" in paired and "MDE" in paired
    want = seed_t_interval(_diffs("cxr"))
    row = next(line for line in paired.splitlines() if line.startswith("| cxr |"))
    assert f"{100 * want.value:+.1f} [{100 * want.ci_low:+.1f}, {100 * want.ci_high:+.1f}]" in row
    assert f"MDE {100 * want.mde:.1f}" in row and " *" in row
    assert "Pooled bootstrap (for reference)" in paired
    one = _rec()
    one["seeds"] = [0]
    for row in one["tasks"].values():
        for v in row["variants"].values():
            v["values"] = v["values"][:1]
    assert "(1 seed: no interval)" in render_markdown(one)


def test_write_outputs_records_the_seed_level_comparison(tmp_path):
    import json

    from midol_cli.report.study import write_outputs

    write_outputs(tmp_path, _rec())
    rec = json.loads((tmp_path / "study.json").read_text())
    assert rec["seed_level"]["no_moe"]["cxr"]["method"] == "t over seeds"
    assert [m["key"] for m in rec["means"]] == ["mean accuracy", "mean chance-normalised"]


# --------------------------------------------------------------------------- issue 28.5, 28.6, wiring


def test_study_md_prints_variant_changes_protocols_retrieval_and_the_held_out_images():
    rec = _rec()
    rec["variant_changes"] = {"midol": "the recipe as given", "no_moe": "one shared expert (matched)"}
    rec["protocols"] = ["linear", "knn_k20"]
    for row in rec["tasks"].values():
        row["protocols"] = {"knn_k20": {"metric": row["metric"], "variants": {
            "midol": _ms([0.5, 0.6, 0.5, 0.6]), "no_moe": _ms([0.6, 0.7, 0.6, 0.7])}}}
    rec["tasks"]["pooled"] = {**rec["tasks"]["derm"], "pooled": True, "chance": 0.05}
    rec["retrieval"] = {"pooled": {"map_10": {"midol": _ms([0.4] * 4), "no_moe": _ms([0.5, 0.5, 0.6, 0.5])},
                                   "cross_modality_10": {"midol": _ms([0.1] * 4), "no_moe": _ms([0.3] * 4)}}}
    for r in rec["representation"].values():
        r.update(split="val+test", n_images=30, n_excluded=70)
    md = render_markdown(rec)
    assert "| no_moe | one shared expert (matched) |" in md.split("## Linear probe")[0]
    knn = md.split("## Protocol knn_k20")[1].split("##")[0]
    assert "| oct | accuracy | 55.0 ± 5.8 | 65.0 ± 5.8 | +10.0 [+10.0, +10.0]" in knn
    ret = md.split("## Cross-modality retrieval (pooled")[1].split("##")[0]
    assert "| no_moe | 52.5 ± 5.0 | 30.0 ± 0.0 | +12.5 [" in ret
    assert "held-out images only (val+test: 30 images; the 70 pre-training (train) images excluded)" in md
    assert all("pooled" not in m["tasks"] for m in honest_means(rec))  # the pooled task is in no mean
    assert "mean (primary metrics)" not in md  # the old pooled mean row is gone

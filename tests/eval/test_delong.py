"""DeLong's test: pROC's worked example on aSAH, a brute-force check, edge cases, patients, coverage.

Known answers. The pROC documentation's ``roc.test`` example (man/roc.test.Rd) compares
``roc(aSAH$outcome, aSAH$s100b)`` with ``roc(aSAH$outcome, aSAH$wfns)`` by DeLong's test; pROC's own
test suite pins the numbers it prints (github.com/xrobin/pROC, commit ee2877e,
tests/testthat/test-roc.test.R: ``roc.test(r.wfns, r.s100b)`` Z = 2.20898359144091,
p = 0.0271757822291882, 95% CI of the difference [0.0104061769564846, 0.174214419249478]; wfns vs ndka
Z = 2.79777591868904, p = 0.00514557970691098; ndka vs s100b Z = -1.39077002573558,
p = 0.164295175223054; tests/testthat/test-var.R and test-cov.R: the DeLong variances and
covariances). A pROC session printed on blog.csdn.net/weixin_43935907/article/details/123599869
gives ``roc.test(roc(outcome~age), roc(outcome~s100b))``: Z = -1.7604, p-value = 0.07835, AUCs
0.6150068 and 0.7313686. The data are embedded below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from midol_cli.eval.delong import delong_auc, delong_covariance, delong_test, midranks, placements
from midol_cli.eval.paired import TaskScores, paired_differences

# aSAH (pROC's data set: 113 patients after an aneurysmal subarachnoid haemorrhage; Turck et al. 2010,
# Intensive Care Med 36:107-115), decoded from data/aSAH.RData of github.com/xrobin/pROC (commit ee2877e),
# in the file's row order. outcome: 1 = Poor (the positive class), 0 = Good. wfns: the WFNS grade 1-5.
OUTCOME = (
    '000011010010110010111010000000001001101100000000011000100'
    '01010011101101111000110100000010000000000001111110001000'
)
AGE = (
    '42 37 42 27 42 48 57 41 49 75 37 49 49 71 64 49 63 33 51 54 78 47 56 76 58 50 36 43 61 31 58 61 '
    '76 54 55 57 64 67 71 74 72 62 65 50 51 50 35 44 45 48 61 36 53 66 73 58 31 28 32 36 47 29 46 73 '
    '45 40 50 57 37 60 53 57 56 31 59 66 50 54 55 51 44 45 47 57 29 52 18 68 47 45 34 60 33 38 48 67 '
    '64 70 24 74 42 63 81 62 33 51 29 68 53 58 32 39 34'
)
WFNS = (
    '111132541252551252252111121211342145414255112411255212512'
    '22151125214524414121421232421451154221113125225552445111'
)
S100B = (
    '0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33 '
    '0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96 '
    '0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15 '
    '0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09 '
    '0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 '
    '0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48'
)
NDKA = (
    '3.01 8.54 8.09 10.42 17.4 12.75 6 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11 '
    '32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04 '
    '21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98 '
    '419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 '
    '8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37 '
    '11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 '
    '11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45'
)


def _asah() -> dict[str, np.ndarray]:
    cols = {
        "outcome": np.array([int(c) for c in OUTCOME]),
        "age": np.array(AGE.split(), dtype=float),
        "wfns": np.array([int(c) for c in WFNS], dtype=float),
        "s100b": np.array(S100B.split(), dtype=float),
        "ndka": np.array(NDKA.split(), dtype=float),
    }
    assert all(len(v) == 113 for v in cols.values())
    return cols


def test_the_embedded_data_is_aSAH():
    d = _asah()
    assert int(d["outcome"].sum()) == 41  # 41 Poor, 72 Good
    # head(aSAH), as printed in the pROC documentation and tutorials: rows 29-34 of the data set.
    assert d["age"][:6].tolist() == [42, 37, 42, 27, 42, 48]
    assert d["s100b"][:6].tolist() == [0.13, 0.14, 0.10, 0.04, 0.13, 0.10]
    assert d["ndka"][:6].tolist() == [3.01, 8.54, 8.09, 10.42, 17.40, 12.75]
    assert d["outcome"][:6].tolist() == [0, 0, 0, 0, 1, 1]


def test_proc_roc_test_example_s100b_vs_wfns():
    d = _asah()
    t = delong_test(d["outcome"], d["s100b"], d["wfns"])
    assert t.z == pytest.approx(-2.20898359144091, abs=1e-9)
    assert t.p_value == pytest.approx(0.0271757822291882, abs=1e-10)
    assert t.ci_low == pytest.approx(-0.174214419249478, abs=1e-9)
    assert t.ci_high == pytest.approx(-0.0104061769564846, abs=1e-9)
    assert t.auc_a == pytest.approx(0.7313686, abs=5e-8)
    assert t.auc_b == pytest.approx(0.8236789, abs=5e-8)
    assert (t.n_pos, t.n_neg) == (41, 72)
    # Reversing the pair flips z and the interval, never p.
    r = delong_test(d["outcome"], d["wfns"], d["s100b"])
    assert r.z == pytest.approx(2.20898359144091, abs=1e-9) and r.p_value == pytest.approx(t.p_value)


@pytest.mark.parametrize(("a", "b", "z", "p"), [
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054),
    ("age", "s100b", -1.7604, 0.07835),  # printed to 5 significant digits
])
def test_proc_pairs(a, b, z, p):
    d = _asah()
    t = delong_test(d["outcome"], d[a], d[b])
    assert t.z == pytest.approx(z, abs=1e-4 if a == "age" else 1e-9)
    assert t.p_value == pytest.approx(p, abs=1e-5 if a == "age" else 1e-10)


def test_proc_variances_covariances_and_sklearn_aucs():
    from sklearn.metrics import roc_auc_score

    d = _asah()
    names = ["wfns", "ndka", "s100b"]
    auc, cov = delong_covariance(d["outcome"], np.stack([d[n] for n in names]))
    want_var = [0.00146991470882363, 0.0031908105493913, 0.00266868245717244]
    assert np.diag(cov) == pytest.approx(want_var, abs=1e-14)
    assert cov[0, 1] == pytest.approx(-0.000532967856762438, abs=1e-14)
    assert cov[1, 2] == pytest.approx(-0.000756164938056579, abs=1e-14)
    assert cov[2, 0] == pytest.approx(0.00119615567376754, abs=1e-14)
    assert np.allclose(cov, cov.T)
    for i, n in enumerate(names):
        assert auc[i] == pytest.approx(roc_auc_score(d["outcome"], d[n]), abs=1e-12)
        one = delong_auc(d["outcome"], d[n])
        assert one.variance == pytest.approx(want_var[i], abs=1e-14)
        half = 1.959963984540054 * math.sqrt(want_var[i])
        assert one.ci_low == pytest.approx(auc[i] - half) and one.ci_high == pytest.approx(
            min(1.0, auc[i] + half)
        )


def test_midranks_share_tied_ranks():
    assert midranks(np.array([3.0, 1.0, 2.0, 2.0])).tolist() == [4.0, 1.0, 2.5, 2.5]
    assert midranks(np.array([5.0, 5.0, 5.0])).tolist() == [2.0, 2.0, 2.0]
    assert midranks(np.array([])).tolist() == []


def _brute_force(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong (1988) written out: the O(m n) kernel matrix, its row / column means, their covariances."""
    pos, neg = s[:, y == 1], s[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # [K, m, n]
    v10, v01 = psi.mean(2), psi.mean(1)
    return psi.mean((1, 2)), np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def test_fast_algorithm_matches_the_definition_with_heavy_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = int(rng.integers(20, 80))
        y = (rng.random(n) < 0.4).astype(int)
        y[:2] = [0, 1]
        s = rng.integers(0, 6, size=(3, n)).astype(float)  # coarse scores: many ties
        s[1] += y
        auc, cov = delong_covariance(y, s)
        want_auc, want_cov = _brute_force(y, s)
        assert np.allclose(auc, want_auc, atol=1e-12) and np.allclose(cov, want_cov, atol=1e-14)
        _, v10, v01 = placements(y, s)
        assert np.allclose(v10.mean(1), v01.mean(1))  # the AUC is the mean of either placement


def test_undefined_and_degenerate_cases():
    y = np.zeros(10, int)
    s = np.arange(10.0)
    t = delong_test(y, s, s[::-1])  # one class: undefined, no error
    assert math.isnan(t.z) and math.isnan(t.p_value) and math.isnan(t.auc_a)
    assert delong_test(y, s, s).to_dict()["p_value"] is None
    one = delong_auc(y, s)
    assert math.isnan(one.auc) and math.isnan(one.variance) and one.to_dict()["ci_low"] is None
    y = np.array([0, 1, 0, 1, 1, 0])
    same = delong_test(y, s[:6], s[:6].copy())
    assert same.z == 0.0 and same.p_value == 1.0 and same.diff == 0.0
    perfect, constant = y.astype(float), np.zeros(6)
    t = delong_test(y, perfect, constant)  # AUC 1 vs 0.5, both with zero variance
    assert t.diff == 0.5 and math.isinf(t.z) and t.p_value == 0.0
    with pytest.raises(ValueError, match="0/1"):
        delong_test(np.array([0, 1, 2]), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="cases"):
        delong_test(np.array([0, 1, 1]), np.ones(4), np.ones(4))


def test_clustered_delong_respects_patients():
    d = _asah()
    y, s = d["outcome"], np.stack([d["s100b"], d["wfns"]])
    auc, plain = delong_covariance(y, s)
    # One image per patient: Obuchowski's estimator is DeLong's.
    _, single = delong_covariance(y, s, groups=np.arange(113))
    assert np.allclose(single, plain, rtol=1e-12, atol=1e-16)
    # Every patient imaged three times, identically: the AUC is unchanged, the naive variance shrinks
    # about threefold (as if there were 339 patients), the clustered one stays that of 113 patients.
    y3, s3, g3 = np.repeat(y, 3), np.repeat(s, 3, axis=1), np.repeat(np.arange(113), 3)
    auc3, naive = delong_covariance(y3, s3)
    _, clustered = delong_covariance(y3, s3, groups=g3)
    assert np.allclose(auc3, auc)
    assert np.allclose(clustered, plain, rtol=1e-12, atol=1e-16)
    assert np.all(np.diag(naive) < 0.4 * np.diag(plain))
    t = delong_test(y3, s3[0], s3[1], groups=g3)
    assert t.z == pytest.approx(-2.20898359144091, abs=1e-9)
    assert delong_test(y3, s3[0], s3[1]).p_value < 1e-3  # the naive test, fooled by the copies


def _binormal(
    rng: np.random.Generator, n: int, mu: tuple[float, float], rho: float
) -> tuple[np.ndarray, ...]:
    y = (rng.random(n) < 0.4).astype(int)
    e = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    return y, e[:, 0] + mu[0] * y, e[:, 1] + mu[1] * y


def test_coverage_of_the_paired_bootstrap_and_delong_on_binormal_scores():
    """Two correlated binormal models, true AUROCs Phi(1.2 / sqrt 2) and Phi(0.8 / sqrt 2): over 300
    simulated test sets of 200 cases, the 95% intervals of the paired bootstrap (``paired_differences``)
    and of DeLong cover the true difference about 95% of the time (a loose band for 300 draws)."""
    from statistics import NormalDist

    phi = NormalDist().cdf
    truth = phi(1.2 / math.sqrt(2)) - phi(0.8 / math.sqrt(2))
    rng = np.random.default_rng(7)
    sims, boot_cover, delong_cover = 300, 0, 0
    for _ in range(sims):
        y, sa, sb = _binormal(rng, 200, (1.2, 0.8), 0.6)
        t = delong_test(y, sa, sb)
        delong_cover += t.ci_low <= truth <= t.ci_high
        def probs(s: np.ndarray) -> np.ndarray:
            p = 1 / (1 + np.exp(-s))
            return np.stack([1 - p, p], 1)
        ts = TaskScores("t", "binary", ["good", "poor"], "auroc", y, np.arange(200).astype(str),
                        {"b": {0: probs(sb)}, "a": {0: probs(sa)}})
        d = paired_differences([ts], "b", ["a"], n_boot=300, seed=int(rng.integers(1 << 30)))["a"]["t"]
        assert d.value == pytest.approx(t.diff, abs=1e-12)  # both see the same AUROCs
        boot_cover += d.ci_low <= truth <= d.ci_high
    assert 0.88 <= boot_cover / sims <= 0.99
    assert 0.88 <= delong_cover / sims <= 0.99

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from midol_cli.eval.metrics import (
    Metric,
    classification_metrics,
    confusion_matrix,
    encode_targets,
    metric_names,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _noisy_scores(y: np.ndarray, C: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.normal(size=(len(y), C))
    z[np.arange(len(y)), y] += 1.0
    return _softmax(z)


def test_hand_computed_binary_case():
    # 4 samples: positives score 0.9 and 0.4, negatives 0.6 and 0.1.
    y = np.array([1, 1, 0, 0])
    p1 = np.array([0.9, 0.4, 0.6, 0.1])
    score = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, score, "binary", ["neg", "pos"])
    # Pairs (pos, neg): (0.9,0.6) ok, (0.9,0.1) ok, (0.4,0.6) wrong, (0.4,0.1) ok -> 3/4.
    assert m["auroc"] == pytest.approx(0.75)
    # Predictions at argmax: 1,0,1,0 -> 2 correct of 4.
    assert m["accuracy"] == pytest.approx(0.5)
    # Ranking 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = 1/2 * (1/1) + 1/2 * (2/3).
    assert m["auprc"] == pytest.approx(0.5 + 1 / 3)
    # TP=1 FP=1 FN=1 TN=1 -> MCC 0, F1 of each class 0.5.
    assert m["mcc"] == pytest.approx(0.0)
    assert m["macro_f1"] == pytest.approx(0.5)


def test_hand_computed_ordinal_kappa():
    # Grades 0..2; one prediction off by two grades.
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 2, 0])
    score = np.eye(3)[pred]
    m = classification_metrics(y, score, "ordinal", ["g0", "g1", "g2"])
    # observed sum w*O = (2-0)^2 = 4; t=[1,1,2], p=[2,1,1]; expected = sum (i-j)^2 t_i p_j / 4
    t, p = np.array([1, 1, 2]), np.array([2, 1, 1])
    expected = sum((i - j) ** 2 * t[i] * p[j] for i in range(3) for j in range(3)) / 4
    assert m["qwk"] == pytest.approx(1 - 4 / expected)
    assert m["accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize("label_type,C", [("binary", 2), ("multiclass", 5), ("ordinal", 4)])
def test_single_label_matches_sklearn(label_type, C):
    rng = np.random.default_rng(C)
    y = rng.integers(0, C, 300)
    score = _noisy_scores(y, C, rng)
    classes = [f"c{i}" for i in range(C)]
    m = classification_metrics(y, score, label_type, classes)
    pred = score.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    if label_type == "binary":
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, score[:, 1]))
        assert m["auprc"] == pytest.approx(skm.average_precision_score(y, score[:, 1]))
    else:
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, score, multi_class="ovr", average="macro"))
        ap = np.mean([skm.average_precision_score(y == c, score[:, c]) for c in range(C)])
        assert m["auprc"] == pytest.approx(ap)
    if label_type == "ordinal":
        assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(C)))
        assert set(metric_names("ordinal")) == set(m) - {"auroc_n_classes", "auroc_n_skipped"}
    else:
        assert "qwk" not in m


def test_ties_in_scores_match_sklearn():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400)
    p1 = np.round(np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, 400), 0, 1) * 5) / 5
    score = np.stack([1 - p1, p1], 1)
    assert len(np.unique(p1)) <= 6
    m = classification_metrics(y, score, "binary", ["a", "b"])
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p1))


def test_class_absent_from_test_set_does_not_crash():
    rng = np.random.default_rng(3)
    C = 4
    y = rng.integers(0, 3, 200)  # class 3 never occurs
    score = _noisy_scores(y, C, rng)
    m = classification_metrics(y, score, "multiclass", ["a", "b", "c", "d"])
    present = [skm.roc_auc_score(y == c, score[:, c]) for c in range(3)]
    assert m["auroc"] == pytest.approx(np.mean(present))
    assert m["auroc_n_classes"] == 3 and m["auroc_n_skipped"] == 1
    pred = score.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(np.mean([np.mean(pred[y == c] == c) for c in range(3)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_multilabel_matches_sklearn_and_reports_skipped_labels():
    rng = np.random.default_rng(11)
    N, L = 250, 5
    Y = (rng.random((N, L)) < 0.3).astype(int)
    Y[:, 4] = 0  # a label with no positives: AUROC undefined -> skipped and counted
    score = np.clip(0.25 + 0.4 * Y + rng.normal(0, 0.2, (N, L)), 0, 1)
    m = classification_metrics(Y, score, "multilabel", [f"l{i}" for i in range(L)])
    assert m["auroc"] == pytest.approx(np.mean([skm.roc_auc_score(Y[:, j], score[:, j]) for j in range(4)]))
    assert m["auprc"] == pytest.approx(
        np.mean([skm.average_precision_score(Y[:, j], score[:, j]) for j in range(4)])
    )
    assert m["auroc_n_skipped"] == 1 and m["auroc_n_classes"] == 4
    pred = (score >= 0.5).astype(int)
    defined = [j for j in range(L) if Y[:, j].any() or pred[:, j].any()]
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="macro", labels=defined))


def test_names_and_lists_are_encoded():
    classes = ["nv", "mel", "bcc"]
    assert encode_targets(["mel", "nv", "bcc"], "multiclass", classes).tolist() == [1, 0, 2]
    Y = encode_targets(["mel|bcc", "", ["nv"]], "multilabel", classes)
    assert Y.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="'vasc'"):
        encode_targets(["vasc"], "multiclass", classes)
    with pytest.raises(ValueError, match="label_type"):
        metric_names("regression")


def test_metric_callable_and_confusion_matrix():
    y = np.array([0, 1, 2, 2, 1])
    score = np.eye(3)[[0, 2, 2, 2, 1]]
    acc = Metric("accuracy", "multiclass", ["a", "b", "c"])
    assert acc(y, score) == pytest.approx(0.8)
    assert confusion_matrix(y, score, ["a", "b", "c"]).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    with pytest.raises(ValueError, match="qwk"):
        Metric("qwk", "multiclass", ["a", "b", "c"])
    with pytest.raises(ValueError, match="y_score"):
        classification_metrics(y, score[:, :2], "multiclass", ["a", "b", "c"])


def test_multilabel_accuracy_is_sklearn_subset_accuracy():
    import numpy as np
    from sklearn.metrics import accuracy_score

    from midol_cli.eval.metrics import classification_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(40, 3))
    s = rng.random((40, 3)) * 0.5 + y * 0.3  # noisy: some labels fall on the wrong side of 0.5
    got = classification_metrics(y, s, "multilabel", ["a", "b", "c"])["accuracy"]
    assert got == accuracy_score(y, (s >= 0.5).astype(int))
    assert 0 < got < 1


def test_chance_levels_are_the_metrics_of_the_training_prior():
    from midol_cli.eval.metrics import chance_metrics

    y_tr = np.array([0, 0, 0, 1, 2, 2])  # majority: class 0
    y_te = np.array([0, 1, 1, 2])
    ch = chance_metrics(y_tr, y_te, "multiclass", ["a", "b", "c"])
    assert ch["accuracy"] == pytest.approx(0.25)  # "always a" on this test set
    assert ch["auroc"] == pytest.approx(0.5) and ch["mcc"] == pytest.approx(0.0)
    assert ch["balanced_accuracy"] == pytest.approx(1 / 3)
    # the training majority (a) absent from test: balanced accuracy's chance is still 1/K, not 0 (issue 25.23)
    ch = chance_metrics(y_tr, np.array([1, 2, 2, 1]), "multiclass", ["a", "b", "c"])
    assert ch["accuracy"] == pytest.approx(0.0) and ch["balanced_accuracy"] == pytest.approx(1 / 3)
    ch = chance_metrics(np.array([0, 1, 1, 1]), np.array([1, 1, 0, 1, 1]), "binary", ["neg", "pos"])
    assert ch["accuracy"] == pytest.approx(0.8) and ch["auroc"] == pytest.approx(0.5)
    assert ch["auprc"] == pytest.approx(0.8)  # constant scores: the prevalence
    ml = chance_metrics(
        np.array([[1, 0], [1, 1], [1, 0]]), np.array([[1, 0], [0, 1]]), "multilabel", ["x", "y"]
    )
    assert ml["accuracy"] == pytest.approx(0.5) and ml["auroc"] == pytest.approx(0.5)


def test_degenerate_prediction_flags_one_class_for_most_images():
    from midol_cli.eval.metrics import degenerate_prediction

    p = np.tile([0.1, 0.7, 0.2], (100, 1))
    p[:4] = [0.8, 0.1, 0.1]
    d = degenerate_prediction(p, "multiclass", ["a", "b", "c"])
    assert d == {"flag": True, "top": "b", "share": 0.96}
    p[:6] = [0.8, 0.1, 0.1]
    assert not degenerate_prediction(p, "multiclass", ["a", "b", "c"])["flag"]
    ml = degenerate_prediction(np.tile([0.2, 0.3], (20, 1)), "multilabel", ["x", "y"])
    assert ml["flag"] and ml["top"] == ""  # the empty label set for every image

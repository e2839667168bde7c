"""Every metric against values computed by hand (see the comments for the arithmetic)."""

import numpy as np
import pytest
import scipy.sparse as sp

from xmr import metrics as m

# query 0: two hits at ranks 1-2 and a -1 slot (fewer than k predictions); query 1: hit at rank 4;
# query 2: nothing predicted at ranks 3-4 and an EMPTY truth row.
PRED = np.array([[3, 1, 4, -1], [2, 7, 1, 8], [5, 6, -1, -1]], dtype=np.int64)
TRUTH = [[1, 3, 9], [8], []]
WEIGHTS = np.arange(1, 11, dtype=np.float64)  # inverse propensity of label l is l + 1
LOG3 = 1 / np.log2(3)


def test_precision_divides_by_k_and_counts_empty_rows():
    assert m.precision_at_k(PRED, TRUTH, 1) == pytest.approx(1 / 3)
    assert m.precision_at_k(PRED, TRUTH, 2) == pytest.approx(1 / 3)
    assert m.precision_at_k(PRED, TRUTH, 4) == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)


def test_recall_and_rprecision():
    assert m.recall_at_k(PRED, TRUTH, 4) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m.rprecision_at_k(PRED, TRUTH, 2) == pytest.approx((2 / 2 + 0 + 0) / 3)
    assert m.rprecision_at_k(PRED, TRUTH, 4) == pytest.approx((2 / 3 + 1 / 1 + 0) / 3)


def test_ndcg():
    assert m.ndcg_at_k(PRED, TRUTH, 2) == pytest.approx((1.0 + 0 + 0) / 3)
    q0 = (1 + LOG3) / (1 + LOG3 + 0.5)
    q1 = (1 / np.log2(5)) / 1.0
    assert m.ndcg_at_k(PRED, TRUTH, 4) == pytest.approx((q0 + q1) / 3)


def test_map_and_mrr():
    assert m.mean_average_precision(PRED, TRUTH) == pytest.approx(((1 + 1) / 3 + (1 / 4) / 1 + 0) / 3)
    assert m.mrr(PRED, TRUTH) == pytest.approx((1 + 1 / 4 + 0) / 3)
    assert m.mrr(PRED, TRUTH, 2) == pytest.approx(1 / 3)


def test_propensity_scored_metrics_are_normalised_by_the_best_ranking():
    # PSP@1: achieved 4 (label 3); best: query 0 -> label 9 (10), query 1 -> label 8 (9)
    assert m.psprecision_at_k(PRED, TRUTH, WEIGHTS, 1) == pytest.approx(4 / 19)
    assert m.psprecision_at_k(PRED, TRUTH, WEIGHTS, 2) == pytest.approx((4 + 2) / (10 + 4 + 9))
    idcg2 = 1 + LOG3
    achieved = (4 + 2 * LOG3) / idcg2
    best = (10 + 4 * LOG3) / idcg2 + 9 / 1
    assert m.psndcg_at_k(PRED, TRUTH, WEIGHTS, 2) == pytest.approx(achieved / best)
    perfect = np.array([[9, 3, 1], [8, -1, -1], [0, 1, 2]])
    assert m.psprecision_at_k(perfect, TRUTH, WEIGHTS, 3) == pytest.approx(1.0)
    assert m.psndcg_at_k(perfect, TRUTH, WEIGHTS, 3) == pytest.approx(1.0)


def test_inverse_propensity_follows_jain_et_al():
    # with A = 1 the formula 1/p = 1 + C e^{-A log(N_l + B)} reduces to 1 + C / (N_l + B), C = (log N - 1)(B + 1):
    # N = 4 training rows, label counts 3, 2 and 0, B = 1 -> C = 2 (log 4 - 1)
    train = [[0], [0], [1], [0, 1]]
    c = 2 * (np.log(4) - 1)
    np.testing.assert_allclose(m.inverse_propensity(train, 3, A=1.0, B=1.0), [1 + c / 4, 1 + c / 3, 1 + c])
    inverse = m.inverse_propensity(train, 3)
    assert inverse[2] > inverse[1] > inverse[0] > 1  # rarer labels weigh more


def test_a_label_seen_once_weighs_log_n_under_every_preset():
    # N_l = 1: C (1 + B)^{-A} = log N - 1, so 1/p = log N whatever A and B are
    train = [[0]] + [[1]] * 9
    for A, B in m.PROPENSITY_PRESETS.values():
        assert m.inverse_propensity(train, 2, A, B)[0] == pytest.approx(np.log(10))


def test_presets_discount_frequent_labels_differently():
    # 100 training rows: label 0 in 50 of them, label 1 once. A query whose true labels are both, ranked frequent
    # first: P@1 is 1, PSP@1 = w_0 / w_1 with w_0 = 1 + (log 100 - 1)((B + 1) / (50 + B))^A and w_1 = log 100
    train = [[0]] * 49 + [[0, 1]] + [[2]] * 50
    frequent_first, rare_first = np.array([[0, 1]]), np.array([[1, 0]])
    psp = {}
    for name, (A, B) in m.PROPENSITY_PRESETS.items():
        weights = m.inverse_propensity(train, 3, A, B)
        psp[name] = m.psprecision_at_k(frequent_first, [[0, 1]], weights, 1)
        assert psp[name] == pytest.approx((1 + (np.log(100) - 1) * ((B + 1) / (50 + B)) ** A) / np.log(100))
        assert m.psprecision_at_k(rare_first, [[0, 1]], weights, 1) == pytest.approx(1.0)
        assert m.precision_at_k(frequent_first, [[0, 1]], 1) == m.precision_at_k(rare_first, [[0, 1]], 1) == 1.0
    # Wikipedia's small B discounts a frequent label the most, Amazon's large B the least
    assert psp["wikipedia"] < psp["default"] < psp["amazon"] < 1


def test_coverage_and_deciles():
    assert m.coverage_at_k(PRED, TRUTH, 4) == pytest.approx(3 / 4)  # {1, 3, 8} of {1, 3, 8, 9}
    assert m.coverage_at_k(PRED, TRUTH, 1) == pytest.approx(1 / 4)
    contribution = m.precision_at_k_by_decile(PRED, TRUTH, 4, label_counts=np.arange(10))
    expected = np.zeros(10)
    expected[[1, 3, 8]] = 1 / 12
    np.testing.assert_allclose(contribution, expected)
    assert contribution.sum() == pytest.approx(m.precision_at_k(PRED, TRUTH, 4))


def test_sparse_truth_equals_lists():
    rows, cols = [0, 0, 0, 1], [1, 3, 9, 8]
    csr = sp.csr_matrix((np.ones(4), (rows, cols)), shape=(3, 10))
    for k in (1, 2, 4):
        assert m.precision_at_k(PRED, csr, k) == m.precision_at_k(PRED, TRUTH, k)
        assert m.ndcg_at_k(PRED, csr, k) == m.ndcg_at_k(PRED, TRUTH, k)
        assert m.psprecision_at_k(PRED, csr, WEIGHTS, k) == m.psprecision_at_k(PRED, TRUTH, WEIGHTS, k)


def test_set_metrics_micro_macro_example():
    result = m.set_metrics([[1, 3], [2], []], TRUTH)
    assert result["micro_precision"] == pytest.approx(2 / 3)
    assert result["micro_recall"] == pytest.approx(2 / 4)
    assert result["micro_f1"] == pytest.approx(4 / 7)
    # labels {1, 2, 3, 8, 9}: 1 and 3 perfect, 2, 8 and 9 zero
    assert result["macro_precision"] == pytest.approx(2 / 5)
    assert result["macro_f1"] == pytest.approx(2 / 5)
    assert result["example_precision"] == pytest.approx(1 / 3)
    assert result["example_recall"] == pytest.approx((2 / 3) / 3)
    assert result["example_f1"] == pytest.approx(0.8 / 3)


def test_ties_at_the_threshold_are_all_kept():
    ids = np.array([[1, 2, 3, -1]])
    scores = np.array([[0.9, 0.5, 0.5, -np.inf]])
    assert m.threshold_predictions(ids, scores, 0.5) == [[1, 2, 3]]


def test_tied_predictions_are_scored_in_the_order_given():
    # labels 4 and 5 tie in score; the index's order decides which counts at k=1
    assert m.precision_at_k(np.array([[4, 5]]), [[5]], 1) == 0.0
    assert m.precision_at_k(np.array([[5, 4]]), [[5]], 1) == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="outside 1..4"):
        m.precision_at_k(PRED, TRUTH, 5)
    with pytest.raises(ValueError, match="3 prediction rows but 1 ground-truth rows"):
        m.precision_at_k(PRED, [[1]], 1)

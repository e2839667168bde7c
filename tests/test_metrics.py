import numpy as np
import pytest
import scipy.sparse as sp

from xmr.metrics import precision_at_k, recall_at_k

PRED = np.array([[3, 1, 4, -1], [2, 7, 1, 8]], dtype=np.int64)
TRUTH = [[1, 3, 9], [8]]


def test_precision_at_k_by_hand():
    assert precision_at_k(PRED, TRUTH, 1) == pytest.approx((1 + 0) / 2)
    assert precision_at_k(PRED, TRUTH, 2) == pytest.approx((2 / 2 + 0) / 2)
    # P@4 divides by k even where fewer were predicted (query 0 has a -1 slot)
    assert precision_at_k(PRED, TRUTH, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_recall_at_k_by_hand():
    assert recall_at_k(PRED, TRUTH, 1) == pytest.approx((1 / 3 + 0) / 2)
    assert recall_at_k(PRED, TRUTH, 4) == pytest.approx((2 / 3 + 1) / 2)
    assert recall_at_k(PRED, [[1], []], 2) == pytest.approx((1 + 0) / 2)


def test_sparse_truth_equals_lists():
    rows = [0, 0, 0, 1]
    cols = [1, 3, 9, 8]
    csr = sp.csr_matrix((np.ones(4), (rows, cols)), shape=(2, 10))
    for k in (1, 2, 4):
        assert precision_at_k(PRED, csr, k) == precision_at_k(PRED, TRUTH, k)
        assert recall_at_k(PRED, csr, k) == recall_at_k(PRED, TRUTH, k)


def test_bad_inputs():
    with pytest.raises(ValueError, match="outside 1..4"):
        precision_at_k(PRED, TRUTH, 5)
    with pytest.raises(ValueError, match="2 prediction rows but 1 ground-truth rows"):
        precision_at_k(PRED, [[1]], 1)

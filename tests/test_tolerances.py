"""The cross-kernel comparisons accept what rounding may change and nothing else."""

import numpy as np
import pytest

from tolerances import SCORE_ATOL, assert_rankings_agree, assert_top_k_of


def test_top_k_accepts_a_tie_within_rounding_and_refuses_a_wrong_item():
    ref = np.array([[0.9, 0.5, 0.5 + SCORE_ATOL / 3, 0.1, -0.2]])
    assert_top_k_of(np.array([[0, 1, 2]]), ref)  # 1 and 2 tie within rounding: either order
    assert_top_k_of(np.array([[0, 2, 1]]), ref)
    with pytest.raises(AssertionError):
        assert_top_k_of(np.array([[0, 1, 3]]), ref)  # 3 is 0.4 below the third best
    with pytest.raises(AssertionError, match="repeated"):
        assert_top_k_of(np.array([[0, 0, 1]]), ref)


def test_rankings_agree_up_to_ties_only():
    ids = np.array([4, 7, 2, 9])
    scores = np.array([1.0, 0.6, 0.6 - SCORE_ATOL / 4, 0.2])
    assert_rankings_agree(ids, scores, np.array([4, 2, 7, 9]), scores)  # a swapped tie
    assert_rankings_agree(ids, scores, np.array([4, 7, 2, 5]), scores)  # the last rank: its next is unseen
    with pytest.raises(AssertionError, match="moved"):
        assert_rankings_agree(ids, scores, np.array([7, 4, 2, 9]), scores)  # the clear best moved
    with pytest.raises(AssertionError):
        assert_rankings_agree(ids, scores, ids, scores + 10 * SCORE_ATOL)  # scores differ beyond rounding
    padded = np.array([1.0, 0.5, -np.inf, -np.inf])
    assert_rankings_agree(np.array([3, 1, -1, -1]), padded, np.array([3, 1, -1, -1]), padded)
    with pytest.raises(AssertionError, match="length"):
        assert_rankings_agree(np.array([3, 1, -1, -1]), padded,
                              np.array([3, 1, 8, -1]), np.array([1.0, 0.5, 0.1, -np.inf]))

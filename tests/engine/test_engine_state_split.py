"""LSTMState.split: the inverse of concat, for batching streams of several callers."""

import numpy as np
import pytest

from charlstm.engine import ConfigError, LSTMState


def test_split_undoes_concat():
    rng = np.random.default_rng(0)
    parts = [LSTMState(rng.standard_normal((2, n, 3)), rng.standard_normal((2, n, 3))) for n in (1, 3, 2)]
    joined = LSTMState.concat(parts)
    back = joined.split([1, 3, 2])
    assert [s.batch_size for s in back] == [1, 3, 2]
    for a, b in zip(parts, back):
        np.testing.assert_array_equal(a.h, b.h)
        np.testing.assert_array_equal(a.c, b.c)


@pytest.mark.parametrize("sizes", [[1, 1], [4, 2], [3, 0, 2], [-1, 6]])
def test_split_sizes_must_add_up(sizes):
    state = LSTMState(np.zeros((1, 5, 2)), np.zeros((1, 5, 2)))
    with pytest.raises(ConfigError, match="add up to the batch size 5"):
        state.split(sizes)
